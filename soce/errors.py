"""soce's errors for bad input: one base, a few kinds a Python caller can catch apart.

Each message names the file, model, argument or key at fault; the CLI prints it as one
`error:` line and exits 1.
"""

from contextlib import contextmanager


class SoceError(Exception):
    """A user-facing error: its message names the file, model or key at fault."""


class ConfigError(SoceError, ValueError):
    """A setting or argument that cannot work: a value out of range, options that conflict."""


class CheckpointError(SoceError):
    """A model directory or weights file that cannot be read, or models that cannot be souped together."""


class DataError(SoceError):
    """A score table, results store or run-directory file that is missing, malformed or made for another question."""


class EvaluationError(SoceError):
    """An evaluator that cannot run or whose results cannot be read (tasks, metrics, tokenizers)."""


@contextmanager
def config_group(group: str):
    """A library's ConfigError names its argument ('k=0'); for the command line, say its group too."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(f"{group}: {err}") from None
