"""User-facing errors.

Every mistake a user can make (unknown dataset, missing file, bad column, impossible split, ...)
raises :class:`FedmolError` with a message that says what was wrong and what to do. The CLI turns
it into one red line and exit code 2, never a traceback.
"""


class FedmolError(Exception):
    """An error caused by user input, shown to the user without a traceback."""


class DataError(FedmolError):
    """A dataset, CSV or split file is missing, corrupt or unusable."""


class ChecksumError(DataError):
    """A file's sha256 differs from the registry's."""
