"""The errors can-tf raises for problems the user can fix, in one tree.

Every one of them is a :class:`CanTfError`: its message is one line that names the file, row,
field or option at fault, and the ``can-tf`` command shows it as ``Error: <message>`` (exit code
1) instead of a traceback. Anything else that escapes a command is a bug and is reported as an
internal error with the traceback saved to a file. Each class also keeps the built-in base it
always had (``ValueError``, ``RuntimeError``, ``OSError``), so ``except ValueError`` callers keep
working::

    CanTfError(Exception)
    ├── ConfigError(ValueError)       a config field, preset or --set override is invalid
    ├── DataError(ValueError)         input data is invalid (a label file, a CSV row, a split list)
    │   └── ImageError                one image file cannot be used (``path``, ``reason``)
    ├── ModelFileError(ValueError)    a model path is not something can-tf can load
    │   └── LiteRTUnavailable         LiteRT cannot stand in for a Keras model (predict runs Keras)
    ├── RunError(RuntimeError)        a run directory cannot be used as asked
    │   └── RunInUseError             another process holds the run directory's lock
    ├── ExportError(RuntimeError)     an export could not be written or failed its verification
    ├── EvaluationError(ValueError)   evaluation input is invalid (class, row or file named)
    └── DiskFullError(OSError)        no space left on the device writing ``filename`` (ENOSPC)

(``can_tf.export.verify.VerificationError`` stays outside the tree: that module also runs as a
child script that must not load can_tf.)

This module imports nothing heavy; note that importing it still runs ``can_tf/__init__.py``,
which loads TensorFlow.

Example:
    >>> from can_tf.errors import CanTfError, ImageError
    >>> try:
    ...     raise ImageError("scans/a.png", "truncated PNG file")
    ... except CanTfError as e:  # also a DataError and a ValueError
    ...     print(f"Error: {e}")
    Error: cannot read image scans/a.png: truncated PNG file
"""

from __future__ import annotations

import errno
import os

__all__ = ["CanTfError", "ConfigError", "DataError", "DiskFullError", "EvaluationError", "ExportError",
           "ImageError", "LiteRTUnavailable", "ModelFileError", "RunError", "RunInUseError"]


class CanTfError(Exception):
    """An error the user can fix; its message is one line naming the file/row/field/option at fault."""


class ConfigError(CanTfError, ValueError):
    """A configuration value is invalid; the message names the field at fault."""


class DataError(CanTfError, ValueError):
    """Input data is invalid; the message names the file, row or column at fault."""


class ImageError(DataError):
    """One image file cannot be used; ``path`` is the file and ``reason`` says why.

    Example:
        >>> str(ImageError("a.png", "not a PNG, JPEG or DICOM file"))
        'cannot read image a.png: not a PNG, JPEG or DICOM file'
    """

    def __init__(self, path, reason: str):
        self.path = os.fspath(path) if isinstance(path, os.PathLike) else path
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self):  # picklable (tf.data and multiprocessing workers send errors across)
        return type(self), (self.path, self.reason)


class ModelFileError(CanTfError, ValueError):
    """``MODEL`` is not something can-tf can load; the message names the path and what was expected."""


class LiteRTUnavailable(ModelFileError):
    """LiteRT cannot stand in for a Keras model (its conversion failed or differs from Keras)."""


class RunError(CanTfError, RuntimeError):
    """A run directory cannot be used as asked; the message names the folder or file and says why."""


class RunInUseError(RunError):
    """Another process holds the run directory's lock."""


class ExportError(CanTfError, RuntimeError):
    """An export could not be written or did not pass verification; the message says why."""


class EvaluationError(CanTfError, ValueError):
    """Evaluation input is invalid; the message names the class (column), row or file at fault."""


class DiskFullError(CanTfError, OSError):
    """No space was left on the device while writing ``filename`` (``errno`` is ``ENOSPC``).

    Example:
        >>> e = DiskFullError("runs/x/best.keras")
        >>> e.errno == errno.ENOSPC, e.filename
        (True, 'runs/x/best.keras')
    """

    def __init__(self, path):
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
