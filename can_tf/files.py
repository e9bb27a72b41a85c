"""Atomic file writes: a reader (or a crashed run) never sees half a file.

Every writer here goes through `atomic_write`: the content is written to a hidden temporary file in
the target's folder (``os.replace`` and ``os.link`` are atomic only within one file system), the
file is fsynced, moved onto the target, and the folder is fsynced so that the rename itself survives
a power loss. The target is therefore either absent, the old version, or the complete new one; when
the write fails, the temporary file is removed and an existing target is left untouched. Results get
the permissions a plain ``open()`` would give them (not the 0600 of a temporary file).

With ``overwrite=False`` an existing target is never replaced: the move is a hard link, which fails
atomically when the name is taken, and `FileExistsError` is raised.

Example:
    >>> import json, tempfile, pathlib
    >>> from can_tf.files import atomic_write, atomic_write_text, write_json
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_text(folder / "note.txt", "hello").read_text()
    'hello'
    >>> json.loads(write_json(folder / "m.json", {"auroc": float("nan")}).read_text())
    {'auroc': None}
    >>> _ = atomic_write(folder / "raw.bin", lambda tmp: pathlib.Path(tmp).write_bytes(b"\\x00"))
    >>> try:
    ...     atomic_write_text(folder / "note.txt", "again", overwrite=False)
    ... except FileExistsError as e:
    ...     print(pathlib.Path(e.filename).name, "kept:", (folder / "note.txt").read_text())
    note.txt kept: hello
    >>> sorted(p.name for p in folder.iterdir())  # no temporary files left behind
    ['m.json', 'note.txt', 'raw.bin']

Temporary files and staging folders carry the pid of the process that made them
(``.note.txt.tmp-<pid>-<random>.txt``, ``.staging-<label>-<pid>-<random>``), so that whatever a
killed process left behind can be told apart from the work of a live one and removed later by
`remove_stale_temporaries`. A full disk surfaces as `DiskFullError` naming the target, and
`no_space_message` turns it into the one line a user should see.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

PathLike = Union[str, os.PathLike]

STAGING_PREFIX = ".staging-"
# Names made here: the pid of the writing process comes right after a fixed marker. A random part
# from `tempfile` (letters, digits, "_") follows it, and a file's suffix after that.
_TEMPORARY_FILE = re.compile(r"\..+\.tmp-(?P<pid>\d+)-[a-z0-9_]+")
_STAGING_FOLDER = re.compile(re.escape(STAGING_PREFIX) + r"[^-]+-(?P<pid>\d+)-[a-z0-9_]+")
_NO_SPACE = os.strerror(errno.ENOSPC)


from can_tf.errors import DiskFullError  # noqa: E402  (defined there, re-exported)


def is_disk_full(error: BaseException) -> bool:
    """True when ``error``, or an error it was raised from, means that the disk is full.

    That is an ``OSError`` with ``errno == ENOSPC`` anywhere in the chain, or a message carrying the
    system's text for it: TensorFlow's file writers raise ``ResourceExhaustedError`` ("...; No space
    left on device"), and h5py and zipfile wrap the ``OSError`` in errors of their own. Running out
    of memory (also a ``ResourceExhaustedError``) is not a full disk.
    """
    return any(getattr(e, "errno", None) == errno.ENOSPC or _NO_SPACE in str(e) for e in error_chain(error))


def error_chain(error: Optional[BaseException]):
    """``error``, then the errors it was raised from (``__cause__``, else ``__context__``), once each."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def no_space_message(path: PathLike, outcome: str) -> str:
    """The one line shown for a full disk: the path, the space left there, what became of the write.

    Example:
        >>> no_space_message("/tmp/out", "nothing was written there")  # doctest: +ELLIPSIS
        'no space left on device writing /tmp/out (... MB free there); nothing was written there. Free ...'
    """
    free = _free_bytes(path)
    where = f" ({free / 1e6:.1f} MB free there)" if free is not None else ""
    return (f"no space left on device writing {path}{where}; {outcome}. "
            f"Free some space and run the command again.")


def _free_bytes(path: PathLike) -> Optional[int]:
    path = Path(os.path.abspath(path))
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


def fsync_dir(path: PathLike) -> None:
    """Makes a rename inside folder ``path`` durable (a no-op where the folder cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every file system allows fsync on a folder
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write_fn: Callable[[str], Any], *, suffix: Optional[str] = None,
                 overwrite: bool = True) -> Path:
    """Calls ``write_fn(tmp_path)`` on a hidden temporary file beside ``path``, then moves it there.

    Args:
        path: the target; its folder is created if needed.
        write_fn: writes the complete content to the path (a str) it is given, e.g.
            ``lambda tmp: model.save(tmp)``. The file already exists (empty) when it is called.
        suffix: the temporary file's suffix (default: the target's), for writers that need a
            particular one (Keras saving requires ``.keras``).
        overwrite: replace an existing target; when False, an existing target raises
            `FileExistsError` (with the target as its ``filename``) and is left untouched.

    Returns:
        ``path`` as a `Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", suffix=suffix, dir=path.parent)
    try:
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result should look like any other file
        write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(errno.EEXIST, "already exists", str(path)) from None
            os.unlink(tmp)
        fsync_dir(path.parent)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        # The writer's own error names the temporary file at best (TensorFlow, h5py and zipfile
        # often name nothing); the target is what the caller can act on.
        if isinstance(e, Exception) and not isinstance(e, DiskFullError) and is_disk_full(e):
            raise DiskFullError(path) from e
        raise
    return path


def staging_folder(parent: PathLike, label: str) -> Path:
    """A new, empty hidden folder ``.staging-<label>-<pid>-<random>`` in ``parent`` (created).

    Something is built in it and then renamed into place; if the process dies first,
    `remove_stale_temporaries` recognises the folder by its pid.
    """
    if not label or "-" in label:
        raise ValueError(f"a staging label must be non-empty and without '-', got {label!r}")
    Path(parent).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{label}-{os.getpid()}-", dir=parent))


def remove_stale_temporaries(folder: PathLike) -> list[str]:
    """Removes what killed processes left in ``folder``: `atomic_write` temporaries and staging folders.

    Only names made by this module are considered (``.<name>.tmp-<pid>-...`` files,
    ``.staging-<label>-<pid>-...`` folders), and only those whose process is gone: the temporaries
    of a live process, this one included, are its work in progress. Subfolders are not searched.
    Where a dead process's pid has been reused, its leftovers wait for the next call after that
    process ends: nothing is removed on a guess.

    Returns:
        The removed paths (as str, sorted); [] when ``folder`` does not exist.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> mine = staging_folder(folder, "1")  # this process is alive: kept
        >>> remove_stale_temporaries(folder)
        []
    """
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        if entry.is_file(follow_symlinks=False):
            match = _TEMPORARY_FILE.match(entry.name)
        elif entry.is_dir(follow_symlinks=False):
            match = _STAGING_FOLDER.fullmatch(entry.name)
        else:
            match = None
        if match is None or _process_alive(int(match["pid"])):
            continue
        if entry.is_dir(follow_symlinks=False):
            # Another process may be removing the same leftovers; what is gone is gone.
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
        if not os.path.lexists(entry.path):
            removed.append(entry.path)
    return sorted(removed)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    except (OverflowError, ValueError):
        return False  # no process can have that number
    return True


def make_folders(path: PathLike) -> list[Path]:
    """Creates ``path`` and its missing parents; returns the folders it created, deepest first.

    A failed write hands them to `remove_empty_folders`, so that it leaves no empty folders behind.
    """
    path = Path(path)
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    path.mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty_folders(folders) -> None:
    """Removes each folder of ``folders`` (deepest first) that is empty; keeps any that is not."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return  # not empty (another process writes there) or gone: its parents stay too


def _umask() -> int:
    # The umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    """Writes ``data`` to ``path`` atomically; returns the path (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), suffix=".tmp", overwrite=overwrite)


def atomic_write_text(path: PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically; returns the path (see `atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def write_json(path: PathLike, values: Any) -> Path:
    """Writes ``values`` as indented JSON atomically, NaN as null so that any JSON reader can parse it."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(_nan_to_none(values), f, indent=2)

    return atomic_write(path, write)


def sha256_of(path: PathLike) -> str:
    """The hex SHA-256 of a local file, read in 1 MiB blocks (packed data hashes through
    ``tf.io.gfile`` instead, for URLs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: PathLike, what: str, error: Callable[[str], Exception] = ValueError) -> Any:
    """The JSON value in ``path``; ``error`` with one line naming the file when it is missing, not
    JSON or unreadable (``what`` names the kind of file, e.g. ``"thresholds file"``)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot read {what} ({err})") from None


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(x) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(x) for x in value]
    return value


def save_model_atomically(model, path: PathLike) -> Path:
    """``model.save(path)`` without ever leaving a partial ``.keras`` file at ``path``."""
    return atomic_write(path, lambda tmp: model.save(tmp), suffix=".keras")
