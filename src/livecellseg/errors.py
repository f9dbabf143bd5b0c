"""Errors a user can act on. Their message is one line naming the file/key and the fix."""


class LivecellsegError(Exception):
    """Base class: stages print the message alone (no traceback) and exit 1."""


class ConfigError(LivecellsegError):
    """params.yaml has an unknown key or a bad value."""


class DataError(LivecellsegError):
    """An input file (image, COCO JSON, archive) is missing, corrupt or inconsistent."""
