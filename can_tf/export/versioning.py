"""TF Serving version folders and atomic publishing of export artefacts.

TF Serving watches ``<base>/<model_name>/`` and serves the highest integer-named folder in it; a
folder that appears half-written would be loaded half-written. Exports are therefore staged in a
hidden temporary folder beside their target (same file system, so the final ``os.rename`` is
atomic; TF Serving ignores names that are not integers) and renamed into place only once verified.
A published version is never replaced: asking for one that exists is an error.

Several exports may publish into one model folder at once. Choosing a version and renaming into
it happen under an exclusive lock on the model folder, so exports without ``--version`` each get
their own; where the file system cannot lock (some network mounts), a rename onto a version that
appeared meanwhile fails and the next free version is tried. Staging folders carry their process's
pid: those of killed exports are removed by the next export (`can_tf.files.remove_stale_temporaries`).

Example:
    >>> import tempfile, pathlib
    >>> base = pathlib.Path(tempfile.mkdtemp())
    >>> next_version(base / "can")
    1
    >>> staging = staging_dir(base / "can")
    >>> _ = (staging / "saved_model.pb").write_bytes(b"...")
    >>> publish_dir(staging, base / "can").name  # the next free version, chosen under the lock
    '1'
    >>> next_version(base / "can")
    2
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from can_tf.files import atomic_write, fsync_dir, is_disk_full, no_space_message, staging_folder

try:
    import fcntl
except ImportError:  # Windows: publishing relies on the rename check alone
    fcntl = None

PathLike = Union[str, os.PathLike]


from can_tf.errors import ExportError  # noqa: E402  (defined there, re-exported)


def existing_versions(model_dir: PathLike) -> list[int]:
    """The integer version folders under ``model_dir``, sorted (staging folders are not versions)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_dir: PathLike) -> int:
    """One more than the highest existing version, or 1 for a new model folder."""
    versions = existing_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def check_version_free(model_dir: PathLike, version: int) -> Path:
    """The target ``<model_dir>/<version>``; raises `ExportError` if it is taken or invalid."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ExportError(f"--version must be a positive integer (TF Serving's version folders), got {version!r}")
    target = Path(model_dir) / str(version)
    if target.exists():
        raise ExportError(
            f"version {version} already exists at {target}; a published version is never overwritten. "
            f"Omit --version to use the next free one ({next_version(model_dir)})."
        )
    return target


def staging_dir(model_dir: PathLike, version: Optional[int] = None) -> Path:
    """A new, empty hidden folder in ``model_dir`` to build an export in (``None``: version not chosen yet)."""
    model_dir = Path(model_dir)
    label = "next" if version is None else str(version)
    for attempt in range(3):
        try:
            return staging_folder(model_dir, label)
        except FileNotFoundError:
            # A failed export elsewhere removed the (then empty) model folder in between; make it again.
            if attempt == 2:
                raise


@contextlib.contextmanager
def model_lock(model_dir: PathLike) -> Iterator[None]:
    """Holds an exclusive lock on ``model_dir`` (the folder itself: no lock file for TF Serving to see).

    Where the file system cannot lock, this is a no-op and `publish_dir`'s rename check is the only
    guard.
    """
    try:
        fd = os.open(model_dir, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        locked = False
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                locked = True
            except OSError:
                pass  # e.g. NFS without lock support
        try:
            yield
        finally:
            if locked:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def publish_dir(staging: PathLike, model_dir: PathLike, version: Optional[int] = None) -> Path:
    """Renames a verified ``staging`` folder to ``<model_dir>/<version>``; never replaces one.

    Args:
        staging: the complete export (in ``model_dir``).
        model_dir: the model's folder.
        version: the version to publish as; taken is an `ExportError`. ``None``: the next free one,
            chosen under `model_lock`, so concurrent exports get different versions.

    Returns:
        ``<model_dir>/<version>``; its name is the version.

    ``os.rename`` onto an existing *empty* folder would succeed on POSIX, so the target is checked
    first, under the lock; the rename itself is atomic, so TF Serving sees either nothing or the
    whole version.
    """
    model_dir = Path(model_dir)
    with model_lock(model_dir):
        if version is not None:
            target = check_version_free(model_dir, version)
            if not _rename_if_free(staging, target):
                # Taken since the export started (the check names it), or not renamable at all.
                check_version_free(model_dir, version)
                raise ExportError(f"version {version} could not be published at {target}")
        else:
            candidate = next_version(model_dir)
            # Exports that do not take the lock (another file system, another tool) can still take
            # a version in between: then the next one is tried.
            while not _rename_if_free(staging, model_dir / str(candidate)):
                candidate = max(candidate + 1, next_version(model_dir))
            target = model_dir / str(candidate)
    fsync_dir(model_dir)
    return target


def _rename_if_free(staging: PathLike, target: Path) -> bool:
    if os.path.lexists(target):
        return False
    try:
        os.rename(staging, target)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            return False
        raise
    return True


def discard(path: Optional[PathLike]) -> None:
    """Removes a staging folder or temporary file, if it is there."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def disk_full_error(error: BaseException, path: PathLike, outcome: str) -> Optional[ExportError]:
    """The one-line `ExportError` for ``error`` when it means a full disk at ``path``, else None."""
    if not is_disk_full(error):
        return None
    return ExportError(no_space_message(path, outcome))


def publish_file(target: PathLike, write_fn: Callable[[str], Any], *, overwrite: bool = False) -> Path:
    """Writes ``target`` through ``write_fn(tmp_path)`` and `can_tf.files.atomic_write`.

    Without ``overwrite`` an existing target is an `ExportError` and is left untouched (the check
    and the move are one atomic step); the temporary file is removed whenever the write fails.
    """
    target = Path(target)
    try:
        return atomic_write(target, write_fn, suffix=".tmp", overwrite=overwrite)
    except FileExistsError as e:
        if e.filename != str(target):
            raise
        raise ExportError(f"{target} already exists; pass --overwrite to replace it") from None


def write_file_atomic(target: PathLike, data: Union[bytes, str], *, overwrite: bool = False) -> Path:
    """Writes ``data`` to ``target`` through a temporary file in the same folder.

    Without ``overwrite``, an existing file with exactly the same content is left alone (labels
    shared by several exports of one model), and one with other content is an error.
    """
    target = Path(target)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if target.exists() and not overwrite:
        if target.read_bytes() == payload:
            return target
        raise ExportError(f"{target} already exists with other content; pass --overwrite to replace it")
    return publish_file(target, lambda tmp: Path(tmp).write_bytes(payload), overwrite=overwrite)
