"""The one exception type for bad input: the CLI prints its message as one line and exits 1."""


class SoceError(Exception):
    """A user-facing error: its message names the file, model or key at fault."""
