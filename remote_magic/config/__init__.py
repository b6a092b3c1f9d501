"""The hosts file: where it is found, its strict YAML, and the checks of every value in it."""
