"""Run groups: one config trained with several seeds, and the spread of its results over seeds.

"Is CAN better than the baseline?" cannot be answered from one training run: two runs of the same
config that differ only in their seed differ in test AUROC too, often by as much as two models do.
Papers therefore report the mean over several seeds with an interval (EVA-X reports ChestX-ray14 as
the mean and 95% CI over 5 runs). A *run group* is that experiment on disk::

    <group>/
      group.json       seeds, member folders (relative names) and the base config
      seed-0/          an ordinary run directory (see can_tf.run), train.seed = 0
      seed-1/          ...
      eval/<split>/    seeds.md, seeds.json: the evaluate summary over the members

What differs between members. Each member is the base config with ``train.seed`` (weight
initialisation, the random ops of the model, and with ``data.seed`` the batch order and the
augmentations) and ``train.run_dir`` replaced; ``data.seed`` stays the same, so every member has
the *same* patient split and is scored on the same test images: the spread over seeds is then the
variation that training brings, not a mix of it with test-set sampling.

The interval. For ``n`` seed values ``x_1..x_n`` with mean ``m`` and sample standard deviation
``s`` (``ddof=1``), the ``confidence`` interval of the mean is Student's t interval with ``n - 1``
degrees of freedom::

    m ± t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)

It describes where the mean over (infinitely) many seeds would lie, on this test set; it does not
include test-set sampling, which the patient-bootstrap intervals of each member's report measure.
With 2 or 3 seeds ``t`` is large (12.7 and 4.3 at 95%): few seeds give wide intervals, as they
should. With one seed there is no interval (``low`` and ``high`` are None).

Example:
    >>> from can_tf.run_group import parse_seeds, seed_summary
    >>> parse_seeds("0-2"), parse_seeds("5,3")
    ([0, 1, 2], [5, 3])
    >>> s = seed_summary([0.60, 0.62, 0.64])
    >>> round(s.mean, 3), round(s.sd, 3), round(s.low, 4), round(s.high, 4)
    (0.62, 0.02, 0.5703, 0.6697)
    >>> s.text()
    '0.620 ± 0.020 [0.570, 0.670] over 3 seeds'
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from can_tf.errors import ConfigError, EvaluationError, RunError
from can_tf.files import read_json, write_json

GROUP_FILE = "group.json"
SEEDS_MARKDOWN = "seeds.md"
SEEDS_JSON = "seeds.json"
GROUP_FORMAT_VERSION = 1
# Fields members may differ in: each member sets its own (the base config's values mean nothing).
MEMBER_FIELDS = ("train.seed", "train.run_dir")
# What `fit --extend` may change (as for one run, can_tf.run.EXTENDABLE_FIELDS).
_EXTENDABLE = ("train.epochs", "train.early_stopping_patience")
_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


# ---- seeds and folders --------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    """Seeds from ``--seeds`` text: ``"0,1,2"``, a range ``"0-4"`` (both ends included), ``"3"``, or
    a mix (``"0-2,7"``), in the order given.

    Raises:
        ConfigError: one line naming ``--seeds``, for an empty list, a negative or non-integer seed,
            a descending range, or a seed given twice.

    Example:
        >>> parse_seeds("0-2,7")
        [0, 1, 2, 7]
    """
    text = "" if text is None else str(text)
    if not text.strip():
        raise ConfigError("--seeds is empty; give seeds like 0,1,2 or a range like 0-4")
    seeds = []
    for part in text.split(","):
        part = part.strip()
        match = _RANGE.match(part)
        if match:
            first, last = int(match[1]), int(match[2])
            if last < first:
                raise ConfigError(f"--seeds {text!r}: range {part!r} runs backwards; write {last}-{first}")
            seeds.extend(range(first, last + 1))
        elif re.fullmatch(r"\d+", part):
            seeds.append(int(part))
        elif re.fullmatch(r"-\d+(\s*-\s*-?\d+)?|\d+\s*-\s*-\d+", part):
            raise ConfigError(f"--seeds {text!r}: seeds must be >= 0, got {part!r}")
        else:
            raise ConfigError(f"--seeds {text!r}: {part!r} is not a non-negative integer or a range like 0-4")
    duplicates = sorted({s for s in seeds if seeds.count(s) > 1})
    if duplicates:
        raise ConfigError(f"--seeds {text!r}: seed(s) {', '.join(map(str, duplicates))} given more than once")
    return seeds


def member_dir(root, seed: int) -> Path:
    """The run directory of ``seed`` in the group at ``root``: ``root / "seed-<seed>"``."""
    return Path(root) / f"seed-{int(seed)}"


def is_group(path) -> bool:
    """True when ``path`` is a directory holding a ``group.json``."""
    path = Path(path)
    return path.is_dir() and (path / GROUP_FILE).is_file()


def group_root(config) -> Path:
    """Where :func:`fit_seeds` puts the group of ``config``: ``train.run_dir``, or the folder
    :func:`can_tf.run.default_run_dir` derives from the config when it is not set."""
    from can_tf.run import default_run_dir

    return Path(config.train.run_dir) if config.train.run_dir else default_run_dir(config)


@dataclass
class RunGroup:
    """A run group on disk: its folder, its seeds and their member run directories (absolute)."""

    root: Path
    seeds: list[int]
    members: list[Path]
    config: dict = field(default_factory=dict, repr=False)  # the base config, as in group.json

    @classmethod
    def load(cls, path) -> "RunGroup":
        """Reads ``<path>/group.json``.

        Raises:
            RunError: naming the file, when it is missing, not JSON or malformed; naming the folder,
                when a member it lists does not exist.
        """
        root = Path(path)
        file = root / GROUP_FILE
        values = read_json(file, "run group file", RunError)
        seeds, members = (values.get("seeds"), values.get("members")) if isinstance(values, dict) else (None, None)
        if (not isinstance(seeds, list) or not isinstance(members, list) or len(seeds) != len(members)
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
                or not all(isinstance(m, str) for m in members)):
            raise RunError(f"{file}: not a run group file (expected 'seeds' and 'members' lists of equal length)")
        config = values.get("config")
        if not isinstance(config, dict):
            raise RunError(f"{file}: 'config' (the group's base config) is missing")
        paths = [root / name for name in members]
        for path in paths:
            if not path.is_dir():
                raise RunError(f"run group {root}: member {path} listed in {GROUP_FILE} does not exist")
        return cls(root=root, seeds=list(seeds), members=paths, config=config)

    def finished_members(self) -> list[Path]:
        """The members whose run is finished (it has ``metrics.json``), in the group's seed order."""
        from can_tf.run import Run

        return [path for path in self.members if Run(path).finished]

    def seed_of(self, member: Path) -> int:
        return self.seeds[[Path(m) for m in self.members].index(Path(member))]


def _write_group(root: Path, seeds: Sequence[int], config_dict: dict) -> Path:
    return write_json(root / GROUP_FILE, {
        "format_version": GROUP_FORMAT_VERSION,
        "seeds": [int(s) for s in seeds],
        "members": [member_dir(".", s).name for s in seeds],
        "config": config_dict,
    })


# ---- training -----------------------------------------------------------------------------------
def fit_seeds(config, seeds: Sequence[int], *, extend: bool = False,
              on_member: Optional[Callable[[int, int, int], None]] = None,
              on_result: Optional[Callable[[int, object], None]] = None) -> list:
    """Trains ``config`` once per seed into the members of a run group; see the module docstring.

    The group's folder is ``config.train.run_dir`` (or the one :func:`group_root` derives). It gets
    ``group.json`` first (seeds, members, the base config), then each seed is trained by
    :func:`can_tf.training.train` with a deep copy of ``config`` whose ``train.seed`` is the seed and
    whose ``train.run_dir`` is :func:`member_dir`. ``data.seed`` is left as it is, so all members
    share one patient split and one test set.

    Running the same call again resumes the group: a finished member is not trained again (its
    result is read from its ``metrics.json``), an interrupted one resumes from its last epoch.
    Seeds not yet in the group are added to it (its members are kept). With ``extend``, finished
    members whose saved ``train.epochs`` is below ``config.train.epochs`` are trained further (as
    ``fit --extend``); unfinished members start or resume.

    Args:
        config: a resolved :class:`can_tf.config.RunConfig` (the base config).
        seeds: the seeds to train (see :func:`parse_seeds`).
        extend: train finished members further, up to ``config.train.epochs``.
        on_member: called as ``on_member(seed, index, total)`` before each member, ``index``
            counting from 1 to ``total = len(seeds)``.
        on_result: called as ``on_result(seed, result)`` after each member (trained or read).

    Returns:
        One :class:`can_tf.training.trainer.RunResult` per seed, in the order of ``seeds``.

    Raises:
        ConfigError: the seeds are invalid, the folder holds something other than a group, or the
            group was made with another base config (the differences are listed).
        can_tf.run.RunInUseError: another process works on the group.
    """
    from can_tf.run import Run, config_differences

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("--seeds is empty; give seeds like 0,1,2 or a range like 0-4")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"--seeds {seeds}: seeds must be distinct and >= 0")
    config = copy.deepcopy(config)
    root = group_root(config)
    config.train.run_dir = str(root)
    base = config.to_dict()
    where = f"train.run_dir {str(root)!r}"

    created = not root.exists()
    lock = Run(root)  # the group's own lock: one process changes group.json at a time
    lock.lock()
    try:
        if (root / "config.yaml").is_file():
            raise ConfigError(f"{where} holds a single run (config.yaml), not a run group; choose another "
                              f"--run-dir for --seeds")
        all_seeds = list(seeds)
        if is_group(root):
            group = RunGroup.load(root)
            ignore = MEMBER_FIELDS + (_EXTENDABLE if extend else ())
            diffs = config_differences(group.config, base, ignore)
            if diffs and any(Run(m).started or Run(m).finished for m in group.members):
                raise ConfigError(f"{where} holds a run group of another config; rerun it with the same "
                                  f"settings or choose another --run-dir. Differences (group -> now): "
                                  + "; ".join(diffs))
            all_seeds = group.seeds + [s for s in seeds if s not in group.seeds]
        elif any(p.name != ".lock" for p in root.iterdir()):
            raise ConfigError(f"{where} is not empty and holds no {GROUP_FILE}; it is not a run group")
        _write_group(root, all_seeds, base)

        results = []
        for index, seed in enumerate(seeds, start=1):
            if on_member is not None:
                on_member(seed, index, len(seeds))
            results.append(_fit_member(config, root, seed, extend))
            if on_result is not None:
                on_result(seed, results[-1])
        return results
    except BaseException:
        if created and not any(member_dir(root, s).exists() for s in seeds):
            shutil.rmtree(root, ignore_errors=True)  # a failed start leaves nothing behind
        raise
    finally:
        lock.unlock()


def _fit_member(base_config, root: Path, seed: int, extend: bool):
    from can_tf.run import Run
    from can_tf.training import trainer

    member = copy.deepcopy(base_config)
    member.train.seed = seed
    member.train.run_dir = str(member_dir(root, seed))
    run = Run(member.train.run_dir)
    if run.finished:
        if not extend or run.config().train.epochs >= member.train.epochs:
            return result_from_run(run.root)
        return trainer.train(member, extend=True)
    return trainer.train(member)


def result_from_run(path):
    """A :class:`can_tf.training.trainer.RunResult` of a finished run, read from its files
    (``metrics.json`` and ``history.csv``), as :func:`can_tf.training.train` returned it."""
    from can_tf.run import Run
    from can_tf.training.trainer import RunResult

    run = Run(path)
    metrics = read_json(run.metrics, "metrics file", RunError)
    mean = metrics.get("test_mean_auroc")
    return RunResult(
        run_dir=str(run.root), history=run.history_rows(), initial_epoch=int(metrics.get("resumed_from_epoch") or 0),
        epochs_run=int(metrics.get("epochs_run") or 0), best_epoch=metrics.get("best_epoch"),
        best_val_mean_auroc=metrics.get("best_val_mean_auroc"), test_auroc=dict(metrics.get("test_auroc") or {}),
        test_mean_auroc=float("nan") if mean is None else float(mean),
        stop_reason=metrics.get("stop_reason") or "completed", is_chief=True, metrics=metrics)


# ---- the spread over seeds ----------------------------------------------------------------------
@dataclass
class SeedSummary:
    """One metric over seeds: its mean, sample SD and Student t interval of the mean.

    ``mean`` is None for no values; ``sd``, ``low`` and ``high`` are None for fewer than two.
    """

    n: int
    mean: Optional[float]
    sd: Optional[float]
    low: Optional[float]
    high: Optional[float]
    values: list[float]
    confidence: float = 0.95

    @property
    def minimum(self) -> Optional[float]:
        return min(self.values) if self.values else None

    @property
    def maximum(self) -> Optional[float]:
        return max(self.values) if self.values else None

    def to_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "sd": self.sd, "low": self.low, "high": self.high,
                "min": self.minimum, "max": self.maximum, "confidence": self.confidence,
                "interval": "student-t over seeds", "values": list(self.values)}

    def text(self, digits: int = 3) -> str:
        """``"0.612 ± 0.031 [0.535, 0.689] over 3 seeds"``; ``"0.612 over 1 seed"``; ``"n/a"``."""
        if self.mean is None:
            return "n/a"
        f = f"{{:.{digits}f}}"
        if self.n < 2:
            return f"{f.format(self.mean)} over 1 seed"
        return (f"{f.format(self.mean)} ± {f.format(self.sd)} [{f.format(self.low)}, {f.format(self.high)}] "
                f"over {self.n} seeds")

    def spread_text(self, digits: int = 3) -> str:
        """``"0.598..0.641"``: the lowest and highest seed value; ``"n/a"`` for none."""
        if not self.values:
            return "n/a"
        return f"{self.minimum:.{digits}f}..{self.maximum:.{digits}f}"


def seed_summary(values: Sequence[float], confidence: float = 0.95) -> SeedSummary:
    """Mean, sample SD (``ddof=1``) and the Student t interval of the mean (``n - 1`` degrees of
    freedom) of one metric's values over seeds; see the module docstring.

    Raises:
        EvaluationError: a value is not a finite number, or ``confidence`` is not in (0, 1).

    Example:
        >>> seed_summary([0.7]).text(), seed_summary([]).n
        ('0.700 over 1 seed', 0)
    """
    if not 0.0 < confidence < 1.0:
        raise EvaluationError(f"confidence must be in (0, 1), got {confidence}")
    x = np.asarray(list(values), dtype=float)
    if x.size and not np.all(np.isfinite(x)):
        raise EvaluationError(f"seed values must be finite numbers, got {list(values)}")
    n = int(x.size)
    if n == 0:
        return SeedSummary(0, None, None, None, None, [], confidence)
    mean = float(np.mean(x))
    if n < 2:
        return SeedSummary(1, mean, None, None, None, x.tolist(), confidence)
    from scipy.stats import t

    sd = float(np.std(x, ddof=1))
    half = float(t.ppf((1.0 + confidence) / 2.0, n - 1)) * sd / math.sqrt(n)
    return SeedSummary(n, mean, sd, mean - half, mean + half, x.tolist(), confidence)


def _summaries_by_seed(by_seed: Mapping[int, Optional[float]], confidence: float) -> dict:
    """``seed_summary`` of the defined values, with the values by seed (None where undefined)."""
    defined = [v for v in by_seed.values() if v is not None and math.isfinite(v)]
    summary = seed_summary(defined, confidence).to_dict()
    summary["by_seed"] = {str(s): (None if v is None or not math.isfinite(v) else float(v)) for s, v in by_seed.items()}
    return summary


def group_metrics(group, confidence: float = 0.95) -> dict:
    """Test AUROC of each finished member (from its ``metrics.json``), per class and the mean, and
    their :func:`seed_summary` over the members.

    Args:
        group: a :class:`RunGroup` or its folder.

    Returns:
        ``{"root", "seeds" (finished), "unfinished" (member folders), "class_names",
        "per_class": {class: summary}, "mean": summary}``, each summary being
        :meth:`SeedSummary.to_dict` plus ``by_seed`` (``{seed: value or None}``). A class undefined
        in a member (no positive test image) is left out of that class's summary only.
    """
    group = group if isinstance(group, RunGroup) else RunGroup.load(group)
    finished = group.finished_members()
    seeds = [group.seed_of(m) for m in finished]
    metrics = {seed: read_json(m / "metrics.json", "metrics file", RunError) for seed, m in zip(seeds, finished)}
    class_names = []
    for values in metrics.values():
        class_names += [c for c in (values.get("test_auroc") or {}) if c not in class_names]

    def number(value):
        return None if value is None else float(value)

    return {
        "root": str(group.root),
        "seeds": seeds,
        "unfinished": [str(m) for m in group.members if m not in finished],
        "class_names": class_names,
        "per_class": {c: _summaries_by_seed({s: number((metrics[s].get("test_auroc") or {}).get(c)) for s in seeds},
                                            confidence) for c in class_names},
        "mean": _summaries_by_seed({s: number(metrics[s].get("test_mean_auroc")) for s in seeds}, confidence),
    }


def format_seed_table(summaries: Mapping[str, Mapping], mean: Mapping, title: str) -> str:
    """A plain-text table of summaries (as in :func:`group_metrics`): one row per class, then Mean,
    with the mean ± sd and t interval over seeds and the seed-to-seed spread (min..max)."""
    rows = [(name, s) for name, s in summaries.items()] + [("Mean", mean)]
    width = max(len(name) for name, _ in rows)
    cells = [(name, _summary_text(s), _spread_text(s)) for name, s in rows]
    main = max(len("mean ± sd [95% CI over seeds]"), *(len(c[1]) for c in cells))
    header = f"{'Finding':<{width}}  {'mean ± sd [95% CI over seeds]':<{main}}  min..max"
    rule = "-" * len(header)
    lines = [title, header, rule]
    for i, (name, text, spread) in enumerate(cells):
        if i == len(cells) - 1:
            lines.append(rule)
        lines.append(f"{name:<{width}}  {text:<{main}}  {spread}")
    return "\n".join(lines)


def _as_summary(values: Mapping) -> SeedSummary:
    return SeedSummary(values["n"], values["mean"], values["sd"], values["low"], values["high"],
                       list(values["values"]), values.get("confidence", 0.95))


def _summary_text(values: Mapping) -> str:
    return _as_summary(values).text()


def _spread_text(values: Mapping) -> str:
    return _as_summary(values).spread_text()


# ---- evaluation of every member -----------------------------------------------------------------
@dataclass
class GroupEvaluation:
    """What :func:`evaluate_group` produced."""

    group: RunGroup
    evaluations: dict  # seed -> can_tf.evaluation.model_evaluation.ModelEvaluation
    unfinished: list  # member folders left out (not finished)
    summary: dict  # see evaluation_summary
    files: dict  # "markdown", "json" -> path

    @property
    def split(self) -> str:
        return self.summary["split"]


def evaluate_group(path, *, out_dir=None, on_member: Optional[Callable[[int, int, int], None]] = None,
                   **options) -> GroupEvaluation:
    """Evaluates every finished member of the group at ``path`` with the same ``options`` (those
    of :func:`can_tf.evaluation.model_evaluation.evaluate_model`), each writing its own report as a
    single run would, then writes ``seeds.md`` and ``seeds.json`` (:func:`evaluation_summary`) to
    ``out_dir`` (default ``<group>/eval/<split>``). With ``out_dir`` given, member ``seed-N``
    writes its report to ``out_dir/seed-N``. Unfinished members are left out and listed.

    Raises:
        RunError: the group has no finished member (or cannot be read).
    """
    from can_tf.evaluation.model_evaluation import evaluate_model

    group = RunGroup.load(path)
    finished = group.finished_members()
    if not finished:
        raise RunError(f"run group {group.root} has no finished member yet (none has metrics.json)")
    evaluations = {}
    for index, member in enumerate(finished, start=1):
        seed = group.seed_of(member)
        if on_member is not None:
            on_member(seed, index, len(finished))
        member_out = None if out_dir is None else Path(out_dir) / member.name
        evaluations[seed] = evaluate_model(member, out_dir=member_out, **options)
    summary = evaluation_summary({s: e.report.to_dict() for s, e in evaluations.items()})
    summary["group"] = str(group.root)
    summary["reports"] = {str(s): str(e.files.get("json", "")) for s, e in evaluations.items()}
    folder = Path(out_dir) if out_dir is not None else group.root / "eval" / summary["split"]
    files = write_seed_summary(folder, summary)
    return GroupEvaluation(group=group, evaluations=evaluations,
                           unfinished=[m for m in group.members if m not in finished], summary=summary, files=files)


def evaluation_summary(reports: Mapping[int, dict], confidence: float = 0.95) -> dict:
    """Per class and mean AUROC and AUPRC over seeds, from each member's report
    (:meth:`can_tf.evaluation.report.EvaluationReport.to_dict`, keyed by seed).

    Returns:
        ``{"split", "seeds", "class_names", "confidence", "classes": [{"class", "auroc": summary,
        "auprc": summary}], "mean": {"auroc", "auprc", "num_classes_averaged": {seed: k}}}``, each
        summary being :meth:`SeedSummary.to_dict` plus ``by_seed``.

    Raises:
        EvaluationError: the reports are of different splits or classes.
    """
    seeds = list(reports)
    if not seeds:
        raise EvaluationError("no member reports to summarise")
    first = reports[seeds[0]]
    for seed in seeds[1:]:
        if reports[seed]["split"] != first["split"] or reports[seed]["class_names"] != first["class_names"]:
            raise EvaluationError(f"the report of seed {seed} is of another split or class list than seed {seeds[0]}'s")
    rows = {s: {row["class"]: row for row in reports[s]["classes"]} for s in seeds}
    classes = []
    for name in first["class_names"]:
        entry = {"class": name}
        for metric in ("auroc", "auprc"):
            entry[metric] = _summaries_by_seed({s: rows[s][name].get(metric) for s in seeds}, confidence)
        classes.append(entry)
    mean = {metric: _summaries_by_seed({s: reports[s]["mean"].get(metric) for s in seeds}, confidence)
            for metric in ("auroc", "auprc")}
    mean["num_classes_averaged"] = {str(s): reports[s]["mean"].get("num_classes_averaged") for s in seeds}
    return {"split": first["split"], "split_description": first.get("split_description"), "seeds": seeds,
            "class_names": list(first["class_names"]), "confidence": confidence, "classes": classes, "mean": mean}


def summary_markdown(summary: Mapping) -> str:
    """``seeds.md``: the table of :func:`evaluation_summary` (one row per class, then Mean)."""
    seeds = summary["seeds"]
    percent = f"{round(100 * summary['confidence'])}%"
    averaged = sorted({k for k in summary["mean"]["num_classes_averaged"].values() if k is not None})
    lines = [f"# Seed summary: {summary.get('group', 'run group')}", "",
             f"{summary['split']} split ({summary.get('split_description') or 'the same images for every member'}); "
             f"{len(seeds)} seed(s): {', '.join(map(str, seeds))}.", "",
             f"| Class | AUROC mean ± sd [{percent} CI over seeds] | AUROC min..max "
             f"| AUPRC mean ± sd [{percent} CI over seeds] | AUPRC min..max |",
             "|---|---|---|---|---|"]
    for entry in [*summary["classes"], {"class": "**Mean**", **summary["mean"]}]:
        lines.append(f"| {entry['class']} | {_summary_text(entry['auroc'])} | {_spread_text(entry['auroc'])} "
                     f"| {_summary_text(entry['auprc'])} | {_spread_text(entry['auprc'])} |")
    lines += ["", f"Intervals: Student t interval of the mean over seeds (n - 1 degrees of freedom): the "
                  f"variation training seeds bring on this one test set. Each member's report.md gives the "
                  f"patient-bootstrap intervals of its test-set sampling.",
              f"Mean row: each member's mean over its defined classes "
              f"({' or '.join(map(str, averaged)) or 'none'} of {len(summary['class_names'])} averaged)."]
    undefined = [e["class"] for e in summary["classes"] if e["auroc"]["n"] < len(seeds)]
    if undefined:
        lines.append(f"Undefined in some or all members (no positive or no negative image; summarised over "
                     f"the others): {', '.join(undefined)}.")
    return "\n".join(lines) + "\n"


def write_seed_summary(folder, summary: Mapping) -> dict:
    """Writes ``seeds.md`` and ``seeds.json`` (atomically) into ``folder``; returns their paths."""
    from can_tf.files import atomic_write_text

    folder = Path(folder)
    return {"markdown": atomic_write_text(folder / SEEDS_MARKDOWN, summary_markdown(summary)),
            "json": atomic_write_text(folder / SEEDS_JSON, json.dumps(summary, indent=2, allow_nan=False) + "\n")}
