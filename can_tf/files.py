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
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

PathLike = Union[str, os.PathLike]


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
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
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


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
