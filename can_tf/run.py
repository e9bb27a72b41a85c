"""The run directory: can-tf's unit of work, and the one module that reads and writes it.

Layout::

    <run>/
      config.yaml        the resolved RunConfig (a resumed run must match it)
      provenance.json    data source, split counts, filters, preset, model, seeds, best epoch, versions
      splits/            train.txt, val.txt, test.txt (image names) and summary.json
      prevalence.json    class prevalence on the train split (used by the loss)
      history.csv        one row per finished epoch, rewritten whole from the checkpoint
      best.keras         best epoch by validation mean AUROC: the training graph (dict of logits)
      model.keras        the same weights as an inference model: ``model.predict(x)`` gives probabilities
      last_good.keras    only after the NaN guard stopped a run: the last finite weights
      checkpoint/        state.json + epoch-N.weights.h5 (weights and optimizer state) of the last epoch
      tensorboard/       TensorBoard logs
      thresholds.json    per-class operating thresholds chosen by ``can-tf evaluate``
      eval/<split>/      reports written by ``can-tf evaluate``
      metrics.json       written last: test AUROC of best.keras; its presence marks a finished run
      .lock              held (flock) by the process training here

Life cycle. :meth:`Run.training` creates or reopens the folder for ``fit`` under an exclusive OS
file lock, held until the process ends (the kernel drops it when the process dies, so a kill never
leaves a stale lock); a second process is refused at once. Every file is written through
:mod:`can_tf.files` (temporary name, fsync, rename). The end of an epoch is one commit: the
weights are written, the best model is staged, then ``checkpoint/state.json`` (epoch count and
history rows) is replaced — that rename is the commit point — and only then are the best model and
``history.csv`` published from it. A kill at any moment therefore leaves either the previous epoch
or the new one, never a mix; :meth:`Run.restore` finishes or discards what a kill interrupted, sets
aside an unreadable checkpoint with a one-line report, and resumes from the last valid state.

Reading. :func:`open_run` opens a run for evaluate, predict, explain and export: the one reader of
``config.yaml`` (:func:`read_config`), of ``thresholds.json`` (:meth:`Run.thresholds`) and of
``provenance.json``.

Example:
    >>> import tempfile
    >>> from can_tf.config import RunConfig
    >>> run = Run(tempfile.mkdtemp())
    >>> run.finished, run.history_rows()
    (False, [])
    >>> default_run_dir(RunConfig.from_preset("small"), root="runs").name.startswith("small-")
    True
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from can_tf.config import ConfigError
from can_tf.files import atomic_write, atomic_write_text, fsync_dir, write_json

# Fields that may differ between the first run and its resumption (they do not change the result).
RESUME_FREE_FIELDS = ("train.run_dir", "train.verbose")
# What `fit --extend` may change on a finished run.
EXTENDABLE_FIELDS = ("train.epochs", "train.early_stopping_patience")
STATE_VERSION = 1


from can_tf.errors import RunError, RunInUseError  # noqa: E402,F401  (defined there, re-exported)


# ---- reading files of a run ---------------------------------------------------------------------
def read_config(path):
    """A :class:`can_tf.config.RunConfig` from a saved ``config.yaml`` (exactly, no preset merge).

    The one reader of a run's or an export's ``config.yaml``.

    Raises:
        ConfigError: naming the file, when it cannot be read or holds an invalid config.
    """
    import yaml

    from can_tf.config import RunConfig

    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read run config {path}: {e}") from None
    return RunConfig.from_dict(values, where=str(path))


def read_history(path) -> list[dict]:
    """Rows of a ``history.csv`` as dicts of floats (``epoch`` an int); [] when absent.

    Raises:
        RunError: naming the file and line of a malformed row.
    """
    path = Path(path)
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"cannot read {path}: {e}") from None
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        return []
    if "epoch" not in reader.fieldnames:
        raise RunError(f"{path}, line 1: the header has no 'epoch' column ({','.join(reader.fieldnames)})")
    rows = []
    for row in reader:
        line = reader.line_num
        if None in row or any(v is None for v in row.values()):
            raise RunError(f"{path}, line {line}: expected {len(reader.fieldnames)} fields")
        parsed = {}
        for key, value in row.items():
            try:
                parsed[key] = float(value) if value != "" else float("nan")
            except ValueError:
                raise RunError(f"{path}, line {line}: {key}={value!r} is not a number") from None
        if not math.isfinite(parsed["epoch"]) or parsed["epoch"] != int(parsed["epoch"]):
            raise RunError(f"{path}, line {line}: epoch={row['epoch']!r} is not an epoch number")
        parsed["epoch"] = int(parsed["epoch"])
        rows.append(parsed)
    return rows


def history_csv(rows: Sequence[dict]) -> str:
    """``history.csv`` text: ``epoch`` first, then every other key sorted (as Keras's CSVLogger)."""
    keys = sorted({k for row in rows for k in row if k != "epoch"})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch", *keys])
    for row in rows:
        writer.writerow([int(row["epoch"])] + [_csv_value(row.get(k)) for k in keys])
    return out.getvalue()


def _csv_value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def best_row(rows: Sequence[dict], key: str = "val_mean_auroc") -> Optional[dict]:
    """The row with the highest finite ``key`` (the first of equals), or None."""
    best = None
    for row in rows:
        value = row.get(key)
        if isinstance(value, float) and math.isfinite(value) and (best is None or value > best[key]):
            best = row
    return best


# ---- choosing the folder ------------------------------------------------------------------------
def flatten(values: dict, prefix: str = "") -> dict:
    """``{"train": {"epochs": 2}}`` -> ``{"train.epochs": 2}``."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _comparable(config_dict: dict, ignore: Sequence[str] = ()) -> dict:
    return {k: v for k, v in flatten(config_dict).items() if k not in RESUME_FREE_FIELDS and k not in ignore}


def config_fingerprint(config) -> str:
    """Eight hex digits identifying the resolved config (run_dir and verbosity excluded)."""
    text = json.dumps(_comparable(config.to_dict()), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def config_differences(saved: dict, current: dict, ignore: Sequence[str] = ()) -> list[str]:
    """``field: saved -> current`` for each field that differs (resume-free fields ignored)."""
    a, b = _comparable(saved, ignore), _comparable(current, ignore)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def default_run_dir(config, root: str = "runs") -> Path:
    """``<root>/<preset>-<fingerprint>``, or the first unfinished ``-2``, ``-3``, ... after it."""
    base = Path(root) / f"{config.preset or 'custom'}-{config_fingerprint(config)}"
    candidate, n = base, 1
    while Run(candidate).finished:
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


# ---- the run ------------------------------------------------------------------------------------
class Run:
    """One run directory: its paths, its lock, its checkpoint, and readers of what it holds."""

    def __init__(self, root):
        self.root = Path(root)
        self._lock_fd = None

    config_path = property(lambda self: self.root / "config.yaml")
    provenance_path = property(lambda self: self.root / "provenance.json")
    splits = property(lambda self: self.root / "splits")
    prevalence = property(lambda self: self.root / "prevalence.json")
    history = property(lambda self: self.root / "history.csv")
    best_model = property(lambda self: self.root / "best.keras")
    inference_model = property(lambda self: self.root / "model.keras")
    last_good_model = property(lambda self: self.root / "last_good.keras")
    checkpoint = property(lambda self: self.root / "checkpoint")
    tensorboard = property(lambda self: self.root / "tensorboard")
    metrics = property(lambda self: self.root / "metrics.json")
    thresholds_path = property(lambda self: self.root / "thresholds.json")
    calibration_path = property(lambda self: self.root / "calibration.json")
    lock_file = property(lambda self: self.root / ".lock")
    state_file = property(lambda self: self.checkpoint / "state.json")

    def __repr__(self):
        return f"Run({str(self.root)!r})"

    # ---- what is there ----
    @property
    def finished(self) -> bool:
        return self.metrics.is_file()

    @property
    def started(self) -> bool:
        """True once an epoch has finished here (there is something to resume or use)."""
        return self.state_file.is_file() or self.best_model.is_file() or bool(self._history_lines())

    def _history_lines(self) -> int:
        try:
            return max(0, len(self.history.read_text(encoding="utf-8", errors="replace").splitlines()) - 1)
        except OSError:
            return 0

    def config(self):
        """The run's :class:`~can_tf.config.RunConfig` (see :func:`read_config`)."""
        return read_config(self.config_path)

    def provenance(self) -> Optional[dict]:
        """The run's provenance record, or None for a run made before provenance was recorded."""
        if not self.provenance_path.is_file():
            return None
        try:
            return json.loads(self.provenance_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RunError(f"cannot read {self.provenance_path}: {e}") from None

    def write_provenance(self, record: dict) -> Path:
        return write_json(self.provenance_path, record)

    def thresholds(self, class_names: Optional[Sequence[str]] = None):
        """The run's :class:`~can_tf.evaluation.thresholds.Thresholds`, or None when there are none."""
        return read_thresholds(self.thresholds_path, class_names) if self.thresholds_path.is_file() else None

    def temperatures(self, class_names: Optional[Sequence[str]] = None):
        """The temperatures ``can-tf evaluate`` fitted on the validation split
        (:class:`~can_tf.evaluation.calibration.Temperatures`), or None when there are none."""
        return read_temperatures(self.calibration_path, class_names) if self.calibration_path.is_file() else None

    def history_rows(self) -> list[dict]:
        return read_history(self.history)

    # ---- the lock ----
    def lock(self) -> None:
        """Takes the run's exclusive lock for the life of this process (or until :meth:`unlock`).

        Raises:
            RunInUseError: ``Run directory D is in use by process N``, at once (never waits).
        """
        if self._lock_fd is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise RunInUseError(f"run directory {self.root} is in use by process {holder}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    # ---- training life cycle ----
    @contextlib.contextmanager
    def training(self, config, *, extend: bool = False) -> Iterator["Run"]:
        """Opens the folder for ``fit``: lock, check, clean leftovers, write the config.

        A folder holding a finished run is refused unless ``extend`` (then only ``train.epochs``
        and ``train.early_stopping_patience`` may differ, the old ``metrics.json`` is kept as
        ``metrics-<epochs>-epochs.json``); a run of another config is refused. When the body fails
        before any epoch finished, everything this call wrote is removed again (the folder too if
        it made it), so a failed start leaves nothing behind.

        Raises:
            RunInUseError: another process trains here.
            ConfigError: the folder cannot take this run (the message says why).
        """
        created = not self.root.exists()
        self.lock()
        wrote_config = False
        try:
            self._check_can_train(config, extend)
            self.remove_leftovers()
            wrote_config = not self.config_path.is_file() or extend
            config.save(str(self.config_path))
            yield self
        except BaseException:
            if not self.started:
                self._undo_start(created, wrote_config)
            raise
        finally:
            self.unlock()

    def _check_can_train(self, config, extend: bool) -> None:
        where = f"train.run_dir {str(self.root)!r}"
        ignore = EXTENDABLE_FIELDS if extend and self.finished else ()
        if self.finished and not extend:
            raise ConfigError(f"{where} holds a finished run ({self.metrics.name} exists); choose another "
                              f"--run-dir (results are never overwritten), or add --extend with more --epochs "
                              f"to train it further")
        if self.config_path.is_file():
            diffs = config_differences(read_config(self.config_path).to_dict(), config.to_dict(), ignore)
            if diffs and not self.started:
                # Nothing was trained here (e.g. the data failed to load): start afresh with this config.
                shutil.rmtree(self.splits, ignore_errors=True)
                for path in (self.prevalence, self.provenance_path):
                    path.unlink(missing_ok=True)
                diffs = []
            if diffs:
                raise ConfigError(
                    f"{where} holds a run with a different config; resume it with the same settings or "
                    f"choose another --run-dir. Differences (saved -> now): " + "; ".join(diffs))
        elif any(p.name not in (".workers", ".lock") for p in self.root.iterdir()):
            raise ConfigError(f"{where} is not empty and holds no config.yaml; it is not a can-tf run directory")
        if extend and self.finished:
            done = len(self.history_rows())
            if config.train.epochs <= done:
                raise ConfigError(f"--extend: train.epochs={config.train.epochs} but the run in {self.root} "
                                  f"already has {done} epochs; ask for more")
            if not self.state_file.is_file():
                raise ConfigError(f"--extend: {self.root} has no checkpoint/ to continue from")
            kept = self.root / f"metrics-{done}-epochs.json"
            os.replace(self.metrics, kept)
            fsync_dir(self.root)
            state = _CheckpointFiles(self.checkpoint).read()
            if state is not None and state.get("stop_reason"):
                state["stop_reason"] = None
                write_json(self.state_file, state)
        elif extend:
            raise ConfigError(f"--extend applies to a finished run; {self.root} holds none (run without "
                              f"--extend to start or resume it)")

    def _undo_start(self, created: bool, wrote_config: bool) -> None:
        if created:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        paths = [self.prevalence, self.provenance_path, self.lock_file]
        if wrote_config:
            paths.append(self.config_path)
            shutil.rmtree(self.splits, ignore_errors=True)
        for path in paths:
            with contextlib.suppress(OSError):
                path.unlink()

    def remove_leftovers(self) -> list:
        """Removes temporary files and staging folders that killed processes left in the run."""
        from can_tf.files import remove_stale_temporaries

        removed = []
        for folder in (self.root, self.checkpoint, self.splits, self.root / "tflite"):
            if folder.is_dir():
                removed += remove_stale_temporaries(folder)
        return removed

    # ---- checkpoints ----
    def restore(self, model, checkpoint_dir: Optional[Path] = None, *, publish: bool = True) -> "Resumed":
        """Puts the last committed epoch back into ``model`` (weights and optimizer state).

        Finishes a publish that a kill interrupted, discards staged files of an uncommitted epoch,
        rewrites ``history.csv`` from the checkpoint, and sets aside an unreadable checkpoint
        (saying so in one line) to restart from epoch 0. ``checkpoint_dir`` lets a non-chief
        worker keep its state elsewhere; ``publish=False`` leaves best/history files alone.
        """
        checkpoint = Path(checkpoint_dir) if checkpoint_dir is not None else self.checkpoint
        files = _CheckpointFiles(checkpoint)
        state = files.read()
        # Weights of an epoch whose commit a kill interrupted: never committed, so never used.
        files.remove_old(keep=None if state is None else state["weights"])
        resumed = Resumed()
        if state is not None:
            weights = checkpoint / state["weights"]
            try:
                model.load_weights(str(weights))
            except Exception as e:  # h5py raises OSError, KeyError, ValueError... on a bad file
                set_aside(
                    weights, f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
                state = None
                print("Restarting from epoch 0", file=sys.stderr, flush=True)
            else:
                resumed = Resumed(epoch=int(state["epoch"]), rows=_rows_from_json(state["history"]),
                                  stop_reason=state.get("stop_reason"), callbacks=state.get("callbacks") or {})
        elif files.has_files():
            files.set_aside_all("not a checkpoint this version of can-tf can resume from")
        if publish:
            self._finish_publish(checkpoint, resumed)
        return resumed

    def _finish_publish(self, checkpoint: Path, resumed: "Resumed") -> None:
        best = best_row(resumed.rows)
        best_epoch = None if best is None else best["epoch"] + 1
        for staged in sorted(checkpoint.glob("best-epoch-*.keras")) + sorted(checkpoint.glob("model-epoch-*.keras")):
            epoch = int(staged.name.split("-")[-1].split(".")[0])
            if epoch == best_epoch:
                target = self.best_model if staged.name.startswith("best") else self.inference_model
                os.replace(staged, target)
                fsync_dir(self.root)
            else:
                staged.unlink()
        if resumed.rows or self.history.is_file():
            text = history_csv(resumed.rows)
            try:
                current = self.history.read_text(encoding="utf-8")
            except OSError:
                current = None
            if current != text:
                if current is not None and self.history.is_file() and not resumed.rows and current.strip():
                    set_aside(self.history, "ahead of any checkpoint")
                else:
                    atomic_write_text(self.history, text)

    def commit_epoch(self, epoch: int, row: dict, model, *, save_best: Optional[Callable] = None,
                     checkpoint_dir: Optional[Path] = None, publish: bool = True,
                     callback_state: Optional[dict] = None) -> None:
        """Commits finished epoch ``epoch`` (0-based) with its history ``row``; see the module docstring.

        ``save_best(best_path, inference_path)`` writes the two model files when this epoch is the
        best so far (None: not the best). ``callback_state`` (JSON values) is what callbacks such as
        early stopping need to continue after a resume; :meth:`restore` gives it back.
        """
        files = _CheckpointFiles(Path(checkpoint_dir) if checkpoint_dir is not None else self.checkpoint)
        state = files.read() or {"history": []}
        rows = [r for r in _rows_from_json(state.get("history", [])) if r["epoch"] < epoch]
        rows.append(dict(row, epoch=epoch))
        n = epoch + 1
        weights = files.folder / f"epoch-{n}.weights.h5"
        files.require_space(model, weights)
        staged = []
        try:
            atomic_write(weights, lambda tmp: model.save_weights(tmp), suffix=".weights.h5")
            if save_best is not None and publish:
                best_path = files.folder / f"best-epoch-{n}.keras"
                inference_path = files.folder / f"model-epoch-{n}.keras"
                staged = [best_path, inference_path]
                save_best(best_path, inference_path)
            write_json(files.state_file, {"format_version": STATE_VERSION, "epoch": n, "weights": weights.name,
                                          "history": rows, "stop_reason": None,
                                          "callbacks": callback_state or {}})  # the commit point
        except BaseException:
            for path in [weights, *staged]:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        if publish:
            self._finish_publish(files.folder, Resumed(epoch=n, rows=rows))
        files.remove_old(keep=weights.name)

    def committed_history(self, checkpoint_dir: Optional[Path] = None) -> list:
        """The history rows of the last committed epoch (what a resume would start from)."""
        state = _CheckpointFiles(Path(checkpoint_dir) if checkpoint_dir is not None else self.checkpoint).read()
        return [] if state is None else _rows_from_json(state["history"])

    def mark_stopped(self, reason: str, checkpoint_dir: Optional[Path] = None) -> None:
        """Records that training ended early (early stopping, NaN guard): a resume goes to evaluation."""
        files = _CheckpointFiles(Path(checkpoint_dir) if checkpoint_dir is not None else self.checkpoint)
        state = files.read()
        if state is not None:
            state["stop_reason"] = reason
            write_json(files.state_file, state)


class Resumed:
    """What :meth:`Run.restore` found: ``epoch`` (finished epochs), history ``rows``, ``stop_reason``
    and ``callbacks`` (the state callbacks committed with the epoch)."""

    def __init__(self, epoch: int = 0, rows: Optional[list] = None, stop_reason: Optional[str] = None,
                 callbacks: Optional[dict] = None):
        self.epoch = epoch
        self.rows = rows or []
        self.stop_reason = stop_reason
        self.callbacks = callbacks or {}


def set_aside(path: Path, why: str) -> Path:
    """Renames an unusable file to ``<name>.corrupt`` (never deleted: it may be evidence) and says so."""
    target = path.with_name(path.name + ".corrupt")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt{n}")
    os.replace(path, target)
    print(f"Checkpoint file {path} is {why}; set aside as {target.name}", file=sys.stderr, flush=True)
    return target


def _rows_from_json(rows) -> list:
    return [{k: (float("nan") if v is None else (int(v) if k == "epoch" else float(v))) for k, v in r.items()}
            for r in rows]


class _CheckpointFiles:
    """``state.json`` and ``epoch-N.weights.h5`` in one checkpoint folder."""

    # Headroom over the last checkpoint's size (and over the weights' bytes for the first one:
    # weights + Adam's two slots + the HDF5 layout), so that a full disk is found before writing.
    SPACE_FACTOR = 1.25

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.state_file = self.folder / "state.json"

    def read(self) -> Optional[dict]:
        try:
            state = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            set_aside(self.state_file, f"unreadable ({e})")
            return None
        if (not isinstance(state, dict) or state.get("format_version") != STATE_VERSION
                or not isinstance(state.get("history"), list) or "weights" not in state):
            set_aside(self.state_file, "not a checkpoint state this version of can-tf writes")
            return None
        return state

    def has_files(self) -> bool:
        """True when files other than set-aside ones are in the folder."""
        return self.folder.is_dir() and any(p.is_file() and ".corrupt" not in p.name for p in self.folder.iterdir())

    def set_aside_all(self, why: str) -> None:
        for path in sorted(self.folder.iterdir()):
            if path.is_file() and ".corrupt" not in path.name:
                set_aside(path, why)

    def require_space(self, model, target: Path) -> None:
        """Raises `OSError(ENOSPC)` before writing when the folder cannot take another checkpoint.

        h5py may crash the process on a full disk instead of raising; checking first turns that
        into the one-line error every full disk gets.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        previous = [p.stat().st_size for p in self.folder.glob("epoch-*.weights.h5")]
        if previous:
            needed = max(previous)
        else:
            # weights and, for Adam, two slots of the same size; HDF5's own layout adds little
            needed = 3 * sum(int(w.numpy().nbytes) for w in model.weights) + (64 << 10)
        needed = int(needed * self.SPACE_FACTOR)
        free = shutil.disk_usage(self.folder).free
        if free < needed:
            raise OSError(errno.ENOSPC, f"No space left on device: the checkpoint needs about "
                                        f"{needed / 2**20:.1f} MB, {free / 2**20:.1f} MB free", str(target))

    def remove_old(self, keep: Optional[str]) -> None:
        """Removes every ``epoch-N.weights.h5`` but ``keep``."""
        for path in self.folder.glob("epoch-*.weights.h5"):
            if path.name != keep:
                path.unlink()


# ---- opening a run for use ----------------------------------------------------------------------
def read_thresholds(path, class_names: Optional[Sequence[str]] = None):
    """:class:`~can_tf.evaluation.thresholds.Thresholds` from a ``thresholds.json`` (the one reader),
    checked against ``class_names`` when given."""
    from can_tf.evaluation.thresholds import Thresholds

    return Thresholds.from_json(path, class_names=class_names)


def read_temperatures(path, class_names: Optional[Sequence[str]] = None):
    """:class:`~can_tf.evaluation.calibration.Temperatures` from a ``calibration.json`` (the one
    reader), checked against ``class_names`` when given."""
    from can_tf.evaluation.calibration import Temperatures

    return Temperatures.from_json(path, class_names=class_names)


def is_run_dir(path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "config.yaml").is_file()


def open_run(path) -> Run:
    """Opens an existing run directory (or the run holding a ``.keras`` file) for reading.

    Raises:
        RunError: naming the path, when it is not a run directory or has no trained model yet.
    """
    path = Path(path)
    root = path.parent if path.is_file() else path
    run = Run(root)
    if not run.config_path.is_file():
        raise RunError(f"{root} is not a can-tf run directory (no config.yaml)")
    if not run.best_model.is_file():
        raise RunError(f"run directory {root} has no best.keras yet (has training finished an epoch?)")
    return run


def run_of_model(path) -> Optional[Run]:
    """The run a model path belongs to: the run directory itself, or the run holding a ``.keras`` file."""
    path = Path(path)
    if path.is_dir():
        return Run(path) if is_run_dir(path) else None
    if path.suffix == ".keras" and is_run_dir(path.parent):
        return Run(path.parent)
    return None
