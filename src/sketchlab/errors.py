"""User-facing errors.

Every problem a user can cause (a bad file, an unknown category, a checkpoint of another model)
raises a subclass of `SketchlabError` whose message names the file, the field and the fix. The
command line prints such messages without a traceback; anything else is a bug and keeps its
traceback.
"""


class SketchlabError(Exception):
    """An error caused by input or configuration, explained in its message."""


class DataError(SketchlabError):
    """A data file or sketch is missing, malformed, hostile or out of range."""


class ConfigError(SketchlabError):
    """A hyperparameter, category list or command-line option is invalid."""


class CheckpointError(SketchlabError):
    """A run directory or checkpoint cannot be used (missing, torn, other model or version)."""


class OutputError(SketchlabError, OSError):
    """A file cannot be written where asked (a folder in the way, the disk full, no permission).

    Also an OSError, so code that handles failed writes as OSErrors keeps doing so."""
