"""Entry point of the ``can-tf`` command: a click group whose subcommands load on demand.

Nothing here imports the ``can_tf`` package (``import can_tf`` loads TensorFlow to register the
custom Keras classes), so ``can-tf --help`` and ``can-tf --version`` answer at once.

An error no subcommand anticipated reaches the user as one line, not a traceback::

    Error: no space left on device writing runs/small-1a2b3c4d/best.keras
    Error: ValueError: <message>
    Rerun with CAN_TF_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import ast
import errno
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

import click

DEBUG_ENV = "CAN_TF_DEBUG"
MAX_MESSAGE_CHARS = 500  # TensorFlow's errors can run to pages; the traceback mode shows all of it

# command name -> (module below can_tf_cli, attribute, one-line help shown by `can-tf --help`)
COMMANDS = {
    "fit": ("fit", "fit", "Train a CAN or baseline model (default: small preset on phantom data)."),
    "evaluate": ("evaluate", "evaluate", "Per-class AUROC/AUPRC with bootstrap CIs on a split or data set."),
    "predict": ("predict", "predict", "Predict findings for images, folders or a CSV."),
    "explain": ("explain", "explain", "Grad-CAM / Grad-CAM++ / Score-CAM heat maps and localisation scores."),
    "export": ("export", "export", "Export to SavedModel (TF Serving) or TFLite (LiteRT)."),
    "data": ("data", "data", "Check a data set, or write the built-in phantom data set."),
}

# Click's own control flow: usage and command errors, --help/--version exits, aborts (and EOF on a
# prompt, which click turns into an abort). KeyboardInterrupt is no Exception and passes untouched.
_CLICK_FLOW = (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, EOFError)


def package_version() -> str:
    """``can_tf.__version__``, read from the package's source without executing it.

    The source is the truth an editable install sees; the installed metadata is the fallback (it
    goes stale when the version changes without a reinstall).

    Example:
        >>> package_version()  # doctest: +SKIP
        '0.1.0'
    """
    spec = importlib.util.find_spec("can_tf")  # a top-level name: found, not imported
    if spec is not None and spec.origin:
        try:
            tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            tree = None
        for node in tree.body if tree else ():
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                    and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)):
                return str(node.value.value)
    try:
        return importlib.metadata.version("can-tf")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def describe_failure(error: BaseException) -> str:
    """The one-line message (plus, for an unexpected error, a hint line) shown instead of a traceback.

    Example:
        >>> describe_failure(OSError(errno.ENOSPC, "No space left on device", "runs/x/best.keras"))
        'no space left on device writing runs/x/best.keras'
        >>> describe_failure(ValueError("bad\\nvalue")).splitlines()[0]
        'ValueError: bad value'
    """
    full = _no_space_left(error)
    if full is not None:
        return "no space left on device" + (f" writing {full}" if full else "")
    message = " ".join(str(error).split())
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + " ..."
    head = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return f"{head}\nRerun with {DEBUG_ENV}=1 to see the traceback."


def _no_space_left(error: BaseException):
    """None unless ``error``, or an error it was raised from, means a full disk; else the file name or ''.

    The same test as ``can_tf.files.is_disk_full`` (not imported: this module stays free of can_tf).
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if getattr(error, "errno", None) == errno.ENOSPC:
            filename = getattr(error, "filename", None)
            return os.fsdecode(filename) if filename is not None else ""
        # TensorFlow's and h5py's write errors carry the errno only in their text.
        if os.strerror(errno.ENOSPC) in str(error):
            return ""
        error = error.__cause__ or error.__context__
    return None


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand is used.

    It also turns any exception a subcommand did not handle into ``Error: ...`` and exit status 1
    (``CAN_TF_DEBUG=1`` lets the traceback through); click's own exceptions behave as usual.
    """

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        # Set before the module loads: importing can_tf starts TensorFlow, which logs at import.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        module_name, attr, _ = COMMANDS[name]
        module = importlib.import_module(f"{__package__}.{module_name}")
        return getattr(module, attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, short) for name, (_, _, short) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _CLICK_FLOW:
            raise
        except Exception as error:
            broken_pipe = isinstance(error, OSError) and error.errno == errno.EPIPE  # click handles it
            if broken_pipe or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            raise click.ClickException(describe_failure(error)) from error


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_version(), "--version", "-V", prog_name="can-tf")
def main():
    """can-tf: Cross-Attention Networks for multi-label chest X-ray classification.

    \b
    Quick start (trains the small preset on built-in phantom data):
      can-tf fit
    On ChestX-ray14:
      can-tf data check /data/ChestX-ray14
      can-tf fit --data /data/ChestX-ray14 --preset paper
    """


if __name__ == "__main__":
    sys.exit(main())
