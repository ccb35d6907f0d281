"""User-facing errors.

Every error a user can cause with bad input (an unknown dataset, a missing
file, a malformed parameter, a label that is not one token, ...) is raised as a
subclass of :class:`DsaError` with a message that names the thing and says what
to do.  Errors from deep inside pandas or torch are a bug in ``dsalib``.
"""


class DsaError(ValueError):
    """Base for user-facing errors with an actionable message."""


class DataFileNotFound(DsaError, FileNotFoundError):
    """A survey file the user must download from an archive is missing."""


class SpecError(DsaError):
    """A dataset spec (``params/datasets/*.yaml``) is malformed or unknown."""


class ParameterError(DsaError):
    """A run parameter has an unknown or malformed value."""
