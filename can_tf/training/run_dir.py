"""The run directory: where a training run keeps everything it needs to be reproduced and resumed.

Layout::

    <run_dir>/
      config.yaml        the resolved RunConfig (a resumed run must match it)
      splits/            train.txt, val.txt, test.txt (image names)
      prevalence.json    class prevalence on the train split (used by the loss)
      history.csv        one row per finished epoch (appended on resume)
      best.keras         best model by validation mean AUROC: inference-ready, no optimizer state
      last_good.keras    only after the NaN guard stopped a run: the last finite weights
      checkpoint/        BackupAndRestore state (removed when the run finishes)
      tensorboard/       TensorBoard logs
      metrics.json       written last: test AUROC of best.keras; its presence marks a finished run

When no run directory is given, the run goes to ``runs/<preset>-<fingerprint>`` where the
fingerprint hashes the resolved config: the same command finds the same folder again and resumes
there after an interruption. If that folder holds a finished run, the next of ``-2``, ``-3``, ...
that has not finished is used, so a finished run is never overwritten.

Example:
    >>> from can_tf.config import RunConfig
    >>> cfg = RunConfig.from_preset("small")
    >>> default_run_dir(cfg, root="runs").name.startswith("small-")
    True
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path
from typing import Optional

import yaml

from can_tf.config import ConfigError
from can_tf.files import atomic_write

# Fields that may differ between the first run and its resumption (they do not change the result).
RESUME_FREE_FIELDS = ("train.run_dir", "train.verbose")


class RunDir:
    """Paths inside one run directory."""

    def __init__(self, root):
        self.root = Path(root)

    config = property(lambda self: self.root / "config.yaml")
    splits = property(lambda self: self.root / "splits")
    prevalence = property(lambda self: self.root / "prevalence.json")
    history = property(lambda self: self.root / "history.csv")
    best_model = property(lambda self: self.root / "best.keras")
    last_good_model = property(lambda self: self.root / "last_good.keras")
    checkpoint = property(lambda self: self.root / "checkpoint")
    tensorboard = property(lambda self: self.root / "tensorboard")
    metrics = property(lambda self: self.root / "metrics.json")
    thresholds = property(lambda self: self.root / "thresholds.json")

    @property
    def finished(self) -> bool:
        return self.metrics.is_file()

    @property
    def started(self) -> bool:
        """True once an epoch has finished here (there is something to resume)."""
        has_rows = self.history.is_file() and len(self.history.read_text().splitlines()) > 1
        return has_rows or self.checkpoint.exists() or self.best_model.exists()

    def __repr__(self):
        return f"RunDir({str(self.root)!r})"


def resume_epoch(backup_dir) -> int:
    """The epoch a resumed run starts at (0 for a fresh run), from BackupAndRestore's metadata.

    Falls back to the previous state (``.bkp``) when a kill left the current one unreadable, as
    BackupAndRestore itself does with ``double_checkpoint=True``.
    """
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        try:
            return int(json.loads((Path(backup_dir) / name).read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return 0


# ---- choosing and checking the folder -----------------------------------------------------------
def _comparable(config_dict: dict) -> dict:
    flat = flatten(config_dict)
    return {k: v for k, v in flat.items() if k not in RESUME_FREE_FIELDS}


def flatten(values: dict, prefix: str = "") -> dict:
    """``{"train": {"epochs": 2}}`` -> ``{"train.epochs": 2}``."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_fingerprint(config) -> str:
    """Eight hex digits identifying the resolved config (run_dir and verbosity excluded)."""
    text = json.dumps(_comparable(config.to_dict()), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def config_differences(saved: dict, current: dict) -> list[str]:
    """``field: saved -> current`` for each field that differs (resume-free fields ignored)."""
    a, b = _comparable(saved), _comparable(current)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def default_run_dir(config, root: str = "runs") -> Path:
    """``<root>/<preset>-<fingerprint>``, or the first unfinished ``-2``, ``-3``, ... after it."""
    base = Path(root) / f"{config.preset or 'custom'}-{config_fingerprint(config)}"
    candidate, n = base, 1
    while RunDir(candidate).finished:
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def prepare_run_dir(config, run_dir, *, write: bool = True) -> RunDir:
    """Checks that ``run_dir`` can take this run and writes the resolved config into it.

    A folder holding a finished run, or a run of a different config, is refused with a
    `ConfigError` that says why; a folder with the same config is resumed.
    """
    rd = RunDir(run_dir)
    if rd.finished:
        raise ConfigError(
            f"train.run_dir {str(rd.root)!r} holds a finished run ({rd.metrics.name} exists); "
            f"choose another --run-dir (results are never overwritten)"
        )
    if rd.config.is_file():
        try:
            saved = yaml.safe_load(rd.config.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot read {rd.config}: {e}") from None
        diffs = config_differences(saved, config.to_dict())
        if diffs and not rd.started:
            # Nothing was trained here (e.g. the data failed to load): start afresh with this config.
            shutil.rmtree(rd.splits, ignore_errors=True)
            rd.prevalence.unlink(missing_ok=True)
            diffs = []
        if diffs:
            raise ConfigError(
                f"train.run_dir {str(rd.root)!r} holds a run with a different config; resume it with "
                f"the same settings or choose another --run-dir. Differences (saved -> now): "
                + "; ".join(diffs)
            )
    elif rd.root.is_dir() and any(p.name not in (".workers",) for p in rd.root.iterdir()):
        raise ConfigError(
            f"train.run_dir {str(rd.root)!r} is not empty and holds no config.yaml; "
            f"it is not a can-tf run directory"
        )
    if write:
        rd.root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(rd.root)
        config.save(str(rd.config))
    return rd


def remove_stale_temporaries(folder) -> list:
    """Deletes temporary files that `can_tf.files.atomic_write` left behind when a process was killed mid-write."""
    removed = []
    for path in Path(folder).glob(".*.*"):
        if path.is_file() and path.suffix in (".keras", ".json", ".csv", ".yaml"):
            path.unlink()
            removed.append(path.name)
    return removed


# ---- history ------------------------------------------------------------------------------------
def read_history(path) -> list[dict]:
    """Rows of ``history.csv`` as dicts of floats (``epoch`` as int); [] when absent."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = []
        for row in csv.DictReader(f):
            parsed = {}
            for k, v in row.items():
                try:
                    parsed[k] = float(v) if v not in ("", None) else float("nan")
                except ValueError:
                    parsed[k] = v
            parsed["epoch"] = int(parsed["epoch"])
            rows.append(parsed)
    return rows


def trim_history(path, start_epoch: int) -> list[dict]:
    """Drops rows of epochs >= ``start_epoch`` (written after the last checkpoint before a kill).

    A resumed run restarts at the checkpoint's epoch; without this, an epoch whose row was written
    but whose checkpoint was not would appear twice. Returns the rows kept.
    """
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines:
        return []
    header, body = lines[0], [ln for ln in lines[1:] if ln.strip()]
    epoch_col = header.split(",").index("epoch")
    kept = [ln for ln in body if int(float(ln.split(",")[epoch_col])) < start_epoch]
    if len(kept) != len(body):
        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("\n".join([header] + kept) + "\n")

        atomic_write(path, write)
    return read_history(path)


def best_so_far(rows: list[dict], key: str = "val_mean_auroc") -> Optional[float]:
    """The highest finite ``key`` in ``rows`` (None when there is none)."""
    values = [r[key] for r in rows if isinstance(r.get(key), float) and r[key] == r[key]]
    return max(values) if values else None
