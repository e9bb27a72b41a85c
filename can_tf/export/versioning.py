"""TF Serving version folders and atomic publishing of export artefacts.

TF Serving watches ``<base>/<model_name>/`` and serves the highest integer-named folder in it; a
folder that appears half-written would be loaded half-written. Exports are therefore staged in a
hidden temporary folder beside their target (same file system, so the final ``os.rename`` is
atomic; TF Serving ignores names that are not integers) and renamed into place only once verified.
A published version is never replaced: asking for one that exists is an error.

Example:
    >>> import tempfile, pathlib
    >>> base = pathlib.Path(tempfile.mkdtemp())
    >>> next_version(base / "can")
    1
    >>> staging = staging_dir(base / "can", 1)
    >>> _ = (staging / "saved_model.pb").write_bytes(b"...")
    >>> publish_dir(staging, base / "can", 1).name
    '1'
    >>> next_version(base / "can")
    2
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

from can_tf.files import atomic_write, fsync_dir

PathLike = Union[str, os.PathLike]

STAGING_PREFIX = ".staging-"


class ExportError(RuntimeError):
    """An export could not be written or did not pass verification; the message says why."""


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


def staging_dir(model_dir: PathLike, version: int) -> Path:
    """A new, empty hidden folder beside ``<model_dir>/<version>`` to build an export in."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{version}-", dir=model_dir))


def publish_dir(staging: PathLike, model_dir: PathLike, version: int) -> Path:
    """Renames a verified ``staging`` folder to ``<model_dir>/<version>``; never replaces one.

    ``os.rename`` onto an existing *empty* folder would succeed on POSIX, so the target is
    checked first; the rename itself is atomic, so TF Serving sees either nothing or the whole
    version.
    """
    target = check_version_free(model_dir, version)
    os.rename(staging, target)
    fsync_dir(model_dir)
    return target


def discard(path: Optional[PathLike]) -> None:
    """Removes a staging folder or temporary file, if it is there."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


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
