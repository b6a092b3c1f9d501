"""What runs on a host: the resident agent, the runner of each task, and the schedulers.

Everything in here (with `wire` and `errors`) is shipped to a host in the runtime zip and runs
under whatever Python the host has, so it imports the standard library and cloudpickle only;
tests/host/test_host_side.py holds it to that.
"""
