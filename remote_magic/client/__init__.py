"""The kernel side without IPython: prepare tasks, reach hosts, follow tasks, load results.

`core.Client` is the one entry point; the notebook's magics, `RemoteExecutor` and the
`remote-magic` command line are all thin layers over it.
"""
