"""The ``bodyage`` command line: thin wrappers over core functions, one module per command."""
