"""One exception hierarchy for every user-facing failure.

CLIs catch `OscarError` and print its message as one line (exit code 2); anything else is a bug.
"""

__all__ = [
    "OscarError",
    "ConfigError",
    "UnknownCodecError",
    "ModelNotFoundError",
    "IntegrityError",
    "ArtifactError",
    "FingerprintMismatchError",
    "CalibrationDataError",
]


class OscarError(Exception):
    """Base class: a failure the user can act on; the message names the problem and the fix."""


class ConfigError(OscarError, ValueError):
    """An option or configuration value is invalid."""


class UnknownCodecError(ConfigError, KeyError):
    """A codec name is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class ModelNotFoundError(OscarError, FileNotFoundError):
    """A model is neither installed nor a readable path."""


class IntegrityError(OscarError):
    """A file's checksum or structure does not match what was expected."""


class ArtifactError(OscarError):
    """An artifact directory is missing, truncated, tampered with or of an unsupported version."""


class FingerprintMismatchError(ArtifactError):
    """An artifact was calibrated for a different model."""


class CalibrationDataError(OscarError):
    """Calibration text is missing, unreadable or too short."""
