"""Pure tensor functions the modules are built from, each tested on its own.

Nothing is imported here; import the submodule you need.
"""
