"""The one place that keeps TensorFlow's own log lines out of can-tf's output (quiet by default).

TensorFlow, absl, CUDA and the TFLite converter write to stderr on their own: at ``import
tensorflow`` (``WARNING: All log messages before absl::InitializeLog() is called are written to
STDERR``, the oneDNN notice, ``Could not find cuda drivers``, ``This TensorFlow binary is
optimized ...``), when devices are first listed (``E0000 ... cuda_platform.cc ... failed call to
cuInit``) and while converting to TFLite (``fully_quantize: 0, inference_type: 6, ...``,
``W0000 ... tf_tfl_flatbuffer_helpers.cc ...``). Some are written by C++ straight to file
descriptor 2 before absl's logging is set up, so no environment variable silences them.

- :func:`quiet_native_logs`: call before TensorFlow is first imported (``can_tf/__init__.py``
  does). Sets ``TF_CPP_MIN_LOG_LEVEL``, ``ABSL_MIN_LOG_LEVEL`` and ``GRPC_VERBOSITY`` (unless the
  user set them; ``TF_ENABLE_ONEDNN_OPTS`` is left alone: it changes numerics, not logging),
  imports TensorFlow with fd 2 captured, and quiets the ``tensorflow`` / ``absl`` Python loggers
  and known harmless warnings.
- :func:`native_logs_captured`: a context manager that sends fd 2 to a temporary file around a
  noisy call and writes what was captured back to stderr when the call fails (a converter error's
  details are not lost) or in verbose mode.

Verbose mode (``CAN_TF_VERBOSE=1``, or ``can-tf -v ...``) turns all of this off.

Example:
    >>> from can_tf.logs import native_logs_captured
    >>> import os
    >>> with native_logs_captured():
    ...     _ = os.write(2, b"I0000 00:00:0.0 noisy.cc:1] not shown\\n")
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings

VERBOSE_ENV = "CAN_TF_VERBOSE"

# Set unless already set: 3 hides C++ INFO, WARNING and ERROR lines (real failures still raise).
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "ABSL_MIN_LOG_LEVEL": "3",
    "GRPC_VERBOSITY": "ERROR",
}
# Python warnings that are noise to a can-tf user: (message regex, category, module regex). With
# TensorFlow 2.21 / Keras 3 no command showed one (checked with -v); add entries here when one does.
_HARMLESS_WARNINGS = (
    (r"Protobuf gencode version .* is (exactly one major version older|older) than the runtime", UserWarning,
     r"google\.protobuf.*"),
)
_PYTHON_LOGGERS = ("tensorflow", "absl", "h5py._conv")
_quieted = False


def is_verbose() -> bool:
    """True when ``CAN_TF_VERBOSE`` is set to anything but ``""`` or ``0``."""
    return os.environ.get(VERBOSE_ENV, "").strip() not in ("", "0")


def quiet_native_logs() -> None:
    """Silences TensorFlow's log lines for this process, unless verbose; call before TF is imported.

    Idempotent. Imports TensorFlow (with fd 2 captured) when it is not loaded yet, since that is
    when most of the lines are written.
    """
    global _quieted
    if _quieted or is_verbose():
        return
    _quieted = True
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for message, category, module in _HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    if "tensorflow" not in sys.modules:
        with native_logs_captured():
            import tensorflow  # noqa: F401
    for name in _PYTHON_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging
    except ImportError:  # absl-py comes with TensorFlow; without it there is nothing to quiet
        return
    absl_logging.set_verbosity(absl_logging.ERROR)
    absl_logging.set_stderrthreshold("error")


@contextlib.contextmanager
def native_logs_captured(replay: bool = False):
    """Sends file descriptor 2 (what C++ code writes to) to a temporary file inside the block.

    What was captured is written back to ``sys.stderr`` when the block raises, when ``replay`` is
    true, or in verbose mode (then nothing is captured at all). Python's own ``sys.stderr`` writes
    in the block are captured too when ``sys.stderr`` is fd 2. fd 2 is process-wide: other threads'
    stderr output in the meantime is captured with it.
    """
    if is_verbose():
        yield
        return
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (a daemon, a closed stderr): nothing would be shown anyway
        yield
        return
    capture = tempfile.TemporaryFile()
    failed = False
    try:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            try:
                sys.stderr.flush()
            except (AttributeError, OSError, ValueError):
                pass
            os.dup2(saved, 2)
    finally:
        os.close(saved)
        try:
            if failed or replay:
                capture.seek(0)
                text = capture.read().decode("utf-8", errors="replace")
                if text:
                    sys.stderr.write(text if text.endswith("\n") else text + "\n")
                    sys.stderr.flush()
        finally:
            capture.close()
