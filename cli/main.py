"""Entry point of the ``can-tf`` command: a click group whose subcommands load on demand.

Nothing here imports the ``can_tf`` package (``import can_tf`` loads TensorFlow to register the
custom Keras classes), so ``can-tf --help`` and ``can-tf --version`` answer at once.

Errors reach the user as one line, not a traceback. A ``can_tf.errors.CanTfError`` (something the
user can fix) is its message, exit code 1; click's usage errors keep exit code 2; a full disk is
one line naming the file; anything else is a bug, reported with the traceback saved to a file::

    Error: train.epochs must be at least 1, got 0
    Error: no space left on device writing runs/small-1a2b3c4d/best.keras
    Error: internal error: KeyError: 'fused'
    The full traceback is in ~/.cache/can-tf/errors/20250101-120000-4242.txt; please report it.

``can-tf --debug ...`` (or ``CAN_TF_DEBUG=1``) shows the traceback instead. ``can-tf -v ...`` (or
``CAN_TF_VERBOSE=1``) lets TensorFlow's own log lines through; by default can_tf silences them
(see ``can_tf.logs``).
"""

from __future__ import annotations

import ast
import errno
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import click

DEBUG_ENV = "CAN_TF_DEBUG"
VERBOSE_ENV = "CAN_TF_VERBOSE"  # the same name as can_tf.logs.VERBOSE_ENV (not imported: see above)
MAX_MESSAGE_CHARS = 500  # TensorFlow's errors can run to pages; the traceback mode shows all of it

# command name -> (module below can_tf_cli, attribute, one-line help shown by `can-tf --help`)
COMMANDS = {
    "fit": ("fit", "fit", "Train a CAN or baseline model (default: small preset on phantom data)."),
    "evaluate": ("evaluate", "evaluate", "Per-class AUROC/AUPRC with bootstrap CIs on a split or data set."),
    "predict": ("predict", "predict", "Predict findings for images, folders or a CSV."),
    "explain": ("explain", "explain", "Grad-CAM / Grad-CAM++ / Score-CAM heat maps and localisation scores."),
    "export": ("export", "export", "Export to SavedModel (TF Serving) or TFLite (LiteRT)."),
    "compare": ("compare", "compare", "Compare models or seed groups on the same images: paired tests, what can be concluded."),
    "ablate": ("ablate", "ablate", "Train and compare the paper's ablations (CAN vs baseline, losses, lambda) over seeds."),
    "weights": ("weights", "weights", "Import PyTorch (torchxrayvision, CheXNet) weights into can-tf backbones."),
    "data": ("data", "data", "Check a data set, write the built-in phantom data set, or pack one into TFRecord shards."),
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


def is_user_error(error: BaseException) -> bool:
    """True for a ``can_tf.errors.CanTfError``: an error the user can fix, shown as its message.

    Checked without importing can_tf (that loads TensorFlow): a CanTfError can only exist once
    ``can_tf.errors`` is loaded.
    """
    errors = sys.modules.get("can_tf.errors")
    return errors is not None and isinstance(error, errors.CanTfError)


def describe_failure(error: BaseException, save_traceback=None) -> str:
    """The message shown instead of a traceback (after ``Error: ``).

    A ``CanTfError`` is its own message on one line; a full disk is ``no space left on device
    writing X``; anything else is an internal error: its type and message, then a line saying where
    ``save_traceback(error)`` (default `save_traceback`) wrote the traceback.

    Example:
        >>> describe_failure(OSError(errno.ENOSPC, "No space left on device", "runs/x/best.keras"))
        'no space left on device writing runs/x/best.keras'
        >>> describe_failure(ValueError("bad\\nvalue"), lambda e: "/tmp/tb.txt")
        'internal error: ValueError: bad value\\nThe full traceback is in /tmp/tb.txt; please report it.'
    """
    disk_full_error = type(error).__name__ == "DiskFullError"  # its own text is errno's; say it our way
    if is_user_error(error) and not disk_full_error:
        return _one_line(error)
    full = _no_space_left(error)
    if full is not None:
        return "no space left on device" + (f" writing {full}" if full else "")
    message = _one_line(error)
    head = f"internal error: {type(error).__name__}: {message}" if message else \
        f"internal error: {type(error).__name__}"
    try:
        path = (save_traceback or globals()["save_traceback"])(error)
    except Exception as e:  # noqa: BLE001 - the report must come out whatever went wrong here
        where = f"The traceback could not be saved ({type(e).__name__}: {_one_line(e)}); rerun with " \
                f"--debug to see it, and please report it."
    else:
        where = f"The full traceback is in {path}; please report it."
    return f"{head}\n{where}"


def _one_line(error: BaseException) -> str:
    message = " ".join(str(error).split())
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + " ..."
    return message


def traceback_dirs() -> list:
    """Where `save_traceback` tries to write, in order: the user's cache, then the temp folder."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [Path(cache) / "can-tf" / "errors", Path(tempfile.gettempdir())]


def save_traceback(error: BaseException) -> Path:
    """Writes ``error``'s traceback (and the command line) to a new file; returns its path.

    The file is ``<timestamp>-<pid>.txt`` in the first of `traceback_dirs` that can take it
    (``can-tf-error-<timestamp>-<pid>.txt`` in the temp folder); the last failure is raised.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = (f"can-tf {package_version()}: {' '.join(sys.argv)}\n"
            f"Python {sys.version.split()[0]} on {sys.platform}\n\n"
            + "".join(traceback.format_exception(type(error), error, error.__traceback__)))
    failure = None
    for folder in traceback_dirs():
        name = f"{stamp}-{os.getpid()}.txt" if folder.name == "errors" else f"can-tf-error-{stamp}-{os.getpid()}.txt"
        path = folder / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return path
        except OSError as e:
            failure = e
    raise failure


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


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Python warnings as a user reads them: ``warning: <message>``, without the source line (-v keeps
    Python's own format, file and line included).

    Example:
        >>> one_line_warning(UserWarning("class prevalence clamped"), UserWarning, "x.py", 3)
        'warning: class prevalence clamped\\n'
    """
    return f"warning: {message}\n"


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand is used.

    It also turns any exception a subcommand did not handle into ``Error: ...`` and exit status 1
    (see `describe_failure`; ``--debug`` or ``CAN_TF_DEBUG=1`` lets the traceback through); click's
    own exceptions behave as usual.
    """

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        # Before the module loads: importing can_tf starts TensorFlow, and can_tf/__init__.py quiets
        # its log lines first (can_tf.logs) unless CAN_TF_VERBOSE says otherwise.
        if ctx is not None and ctx.params.get("verbose"):
            os.environ[VERBOSE_ENV] = "1"
        else:
            warnings.formatwarning = one_line_warning
        module_name, attr, _ = COMMANDS[name]
        module = importlib.import_module(f"{__package__}.{module_name}")
        return getattr(module, attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, short) for name, (_, _, short) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        debug = ctx.params.get("debug") or os.environ.get(DEBUG_ENV, "") not in ("", "0")
        try:
            return super().invoke(ctx)
        except _CLICK_FLOW:
            raise
        except Exception as error:
            broken_pipe = isinstance(error, OSError) and error.errno == errno.EPIPE  # click handles it
            if broken_pipe or debug:
                raise
            raise click.ClickException(describe_failure(error)) from error


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_version(), "--version", "-V", prog_name="can-tf")
@click.option("--debug", is_flag=True, help=f"Show the traceback of an error (also {DEBUG_ENV}=1).")
@click.option("-v", "--verbose", is_flag=True,
              help=f"Let TensorFlow's own log lines through (also {VERBOSE_ENV}=1).")
def main(debug, verbose):
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
