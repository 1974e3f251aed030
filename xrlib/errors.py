"""The project's one exception family: every message says what to fix."""


class XRLibError(Exception):
    """Base of every error xrlib raises on purpose."""


class DataError(XRLibError):
    """An input file or folder is missing, corrupt or not what the stage needs."""


class ChecksumError(DataError):
    """A file's SHA-256 differs from the one recorded for it."""


class ConfigError(XRLibError):
    """A parameter in params.yaml (or passed to a function) is out of range or inconsistent."""


class CheckpointError(XRLibError):
    """A checkpoint is missing, tampered with, or belongs to another architecture."""


class GeometryError(XRLibError):
    """A projection or placement geometry cannot be realised (nodule does not fit, absurd spacing)."""


class DegenerateDataWarning(UserWarning):
    """A statistic is undefined (NaN) for these data; the message says why and what would define it."""
