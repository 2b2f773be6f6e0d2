"""The ``pdplan`` command line: one module per command, composed in ``app``."""
