"""The notebook's face: the magics, their arguments, the live view, and status tables.

Only this package imports IPython and ipywidgets; it parses, calls the client, and renders.
"""
