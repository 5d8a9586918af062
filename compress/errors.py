"""Every failure a user can cause is a :class:`CompressError` whose message names the problem and the fix.

The CLI prints ``error: <message>`` on one line and exits with :attr:`CompressError.exit_code`; library users
catch the subclasses. Programming errors inside the package stay ordinary exceptions, so a traceback means a
bug in ``compress``, not in the user's input.
"""

from __future__ import annotations


class CompressError(Exception):
    """Base class of user-facing errors. The message must say what to do about it."""

    exit_code = 1


class ConfigError(CompressError, ValueError):
    """An option or configuration value is out of range or inconsistent."""

    exit_code = 2


class ModelLoadError(CompressError):
    """A model file is missing, corrupt, of an unknown format, or unsafe to load."""

    exit_code = 3


class UnsafePickleError(ModelLoadError):
    """Loading the file would unpickle arbitrary objects, which runs code from the file."""


class DataError(CompressError, ValueError):
    """Calibration / evaluation data is missing, empty, non-finite, or does not fit the model."""

    exit_code = 4


class ExportError(CompressError):
    """The model cannot be written in the requested format (the message names the op and node)."""

    exit_code = 5


class VerificationError(CompressError):
    """An exported artifact disagrees with the torch simulation beyond the numerics contract."""

    exit_code = 6


class MissingDependencyError(CompressError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""

    exit_code = 7


class QualityError(CompressError):
    """The int8 result is unusable (accuracy or agreement with fp32 collapsed); the CLI accepts it with
    ``--accept-degraded``."""

    exit_code = 9


class ResourceError(CompressError):
    """The machine cannot do what was asked: not enough memory for the input shape, or no disk space."""

    exit_code = 10


def require(module: str, extra: str):
    """Import an optional dependency, or raise :class:`MissingDependencyError` naming the extra to install.

    >>> np = require("numpy", "core")
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed; install it with `pip install 'edge-compress[{extra}]'`"
        ) from exc


class CaptureError(ModelLoadError):
    """``torch.export`` cannot capture the model (data-dependent control flow); names the user's source line."""
