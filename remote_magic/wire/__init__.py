"""What the kernel and a host agree on: task directory files, message frames, serialization.

Both sides import these modules, so a change here is a change of the protocol between a kernel
and the agents it starts. Standard library and cloudpickle only.
"""
