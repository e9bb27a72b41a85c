"""``can-tf compare``: runs and seed groups scored on the same images, then compared.

Each argument is a run directory (or a model file inside one) or a seed group made by
``can-tf fit --seeds`` (:mod:`can_tf.run_group`). The images are the first model's own data and
split unless ``data`` says otherwise; every model is run on exactly those images, and a model that
*trained* on any of them (its run's ``splits/train.txt`` or ``val.txt`` lists them) is refused, so a
comparison never mixes test and training images. The statistics are those of
:mod:`can_tf.evaluation.comparison`; the files written are ``comparison.md``, ``.csv``, ``.json``
and a self-contained ``comparison.html`` with a per-class difference plot.

Example:
    >>> result = compare_runs(["runs/can", "runs/baseline"], out_dir="runs/compare")
    >>> print(result.comparison.pairs[0].conclusion)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from can_tf.evaluation.comparison import Comparison, compare_groups
from can_tf.evaluation.metrics import EvaluationError

PathLike = os.PathLike | str


@dataclasses.dataclass
class ComparedModel:
    """One side of a comparison: a name and its runs (one, or a seed group's members)."""

    name: str
    runs: list  # run directories
    seeds: Optional[list] = None


@dataclasses.dataclass
class RunComparison:
    comparison: Comparison
    out_dir: Path
    files: dict  # kind -> path
    split: str
    data: str


def resolve_models(paths: Sequence[PathLike], names: Optional[Sequence[str]] = None) -> list:
    """:class:`ComparedModel` per argument: a seed group's finished members, or the one run."""
    from can_tf.run import Run, run_of_model
    from can_tf.run_group import RunGroup, is_group

    if len(paths) < 2:
        raise EvaluationError("compare needs at least two runs or seed groups (RUN_A RUN_B ...)")
    if names is not None and len(names) != len(paths):
        raise EvaluationError(f"--names gives {len(names)} name(s) for {len(paths)} model(s)")
    models, used = [], set()
    for i, path in enumerate(paths):
        path = Path(path)
        if not path.exists():
            raise EvaluationError(f"{path}: no such run or seed group")
        if is_group(path):
            group = RunGroup.load(path)
            members = group.finished_members()
            if not members:
                raise EvaluationError(f"{path}: no finished run in this seed group")
            seeds = [s for s, m in zip(group.seeds, group.members) if m in members]
            runs = list(members)
        else:
            run = run_of_model(path)
            if run is None or not run.inference_model.is_file():
                raise EvaluationError(f"{path}: not a finished run directory (no final model.keras) "
                                      f"or seed group")
            runs, seeds = [run.root], None
            try:
                seeds = [int(Run(run.root).config().train.seed)]
            except Exception:  # an old run without a readable config: unpaired
                seeds = None
        name = names[i] if names is not None else path.name
        if name in used:
            name = f"{name} ({i + 1})"
        used.add(name)
        models.append(ComparedModel(name=name, runs=runs, seeds=seeds))
    return models


def compare_runs(
    paths: Sequence[PathLike],
    *,
    data: Optional[str] = None,
    split: Optional[str] = None,
    out_dir: Optional[PathLike] = None,
    names: Optional[Sequence[str]] = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    batch_size: int = 32,
    on_model: Optional[Callable[[str, int, int], None]] = None,
) -> RunComparison:
    """Scores every run of every model on the same images and compares them with the last one.

    Args:
        paths: run directories / seed groups; the *last* one is the reference (``compare A B``
            tells how A differs from B).
        data: a data source (``data.source``); default the first run's own data.
        split: ``test`` (default on the runs' own data), ``val``, ``train`` or ``all`` (default on
            other data).
        out_dir: where the files go; default ``<first run>/compare/<names>-<split>``.
        names: display names; default the folder names.
        n_boot, seed, alpha: the paired bootstrap's replicates and seed, and the significance level.
        on_model: progress callback ``(run directory, index, total)`` before each run is scored.
    """
    from can_tf.evaluation.html_report import write_comparison_html
    from can_tf.evaluation.model_evaluation import predict_table
    from can_tf.files import atomic_write_text
    from can_tf.predictor import Predictor

    models = resolve_models(paths, names)
    evaluated, class_names, split, data_name = _images(models, data, split)
    all_runs = [run for m in models for run in m.runs]
    probs = {}
    for index, run_dir in enumerate(all_runs):
        if on_model is not None:
            on_model(str(run_dir), index, len(all_runs))
        predictor = Predictor.load(run_dir, use_thresholds=False, use_calibration=False)
        if list(predictor.class_names) != list(class_names):
            raise EvaluationError(f"{run_dir}: its classes {list(predictor.class_names)} differ from the "
                                  f"compared images' {list(class_names)}")
        labels, probs[run_dir] = predict_table(predictor, evaluated, class_names, batch_size=batch_size)
    groups = {m.name: [probs[r] for r in m.runs] for m in models}
    seeds = {m.name: m.seeds for m in models if m.seeds is not None}
    comparison = compare_groups(labels, groups, evaluated["patient_id"].astype(str).to_numpy(),
                                class_names, n_boot=n_boot, seed=seed, alpha=alpha, seeds=seeds)
    notes = list(comparison.notes)
    notes.append(f"images: {data_name}, {split} split, {len(evaluated)} images of "
                 f"{evaluated['patient_id'].nunique()} patients; every model scored on all of them")
    notes.append("probabilities as each model gives them (temperature scaling does not change AUROC)")
    comparison = dataclasses.replace(comparison, notes=tuple(notes))

    if out_dir is None:
        out_dir = Path(models[0].runs[0]).parent / "compare" / (
            "-vs-".join(m.name.replace(os.sep, "_") for m in models) + f"-{split}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "markdown": out_dir / "comparison.md",
        "csv": out_dir / "comparison.csv",
        "json": out_dir / "comparison.json",
        "html": out_dir / "comparison.html",
    }
    atomic_write_text(files["markdown"], comparison.to_markdown())
    atomic_write_text(files["csv"], comparison.to_csv())
    atomic_write_text(files["json"], comparison.to_json())
    write_comparison_html(files["html"], comparison.to_dict())
    return RunComparison(comparison=comparison, out_dir=out_dir, files=files, split=split, data=data_name)


def _images(models, data, split):
    """The compared images (one table), their classes, the split and a name for the data."""
    from can_tf.data.splits import make_splits, read_splits
    from can_tf.data.table import load_table
    from can_tf.run import Run

    first = Run(models[0].runs[0])
    config = first.config()
    own = data is None or (config.data.source is not None
                           and os.path.abspath(data) == os.path.abspath(config.data.source))
    if data is not None and not own:
        config.data.source, config.data.format, config.data.label_file = data, "auto", None
        config.data.sources, config.data.options, config.data.split_dir = [], {}, None
    split = split or ("test" if own else "all")
    if split not in ("test", "val", "train", "all"):
        raise EvaluationError(f"--split must be one of test, val, train, all; got {split!r}")
    df, class_names = load_table(config.data)
    if split == "all":
        evaluated = df
    elif own and (first.root / "splits").is_dir():
        evaluated = read_splits(first.root / "splits", df)[split]
    else:
        evaluated = make_splits(df, config.data, allow_empty=("test", "val", "train"))[split]
    if len(evaluated) == 0:
        raise EvaluationError(f"the {split} split is empty")
    names = set(evaluated["image_index"].astype(str))
    # No model may have trained (or chosen its best epoch) on a compared image.
    for model in models:
        for run_dir in model.runs:
            for part in ("train", "val"):
                listed = Path(run_dir) / "splits" / f"{part}.txt"
                if not listed.is_file():
                    continue
                from can_tf.data.splits import image_names

                overlap = names.intersection(image_names(listed))
                if overlap:
                    raise EvaluationError(
                        f"{run_dir} used {len(overlap)} of the compared images for {part}ing "
                        f"({listed}); compare on images none of the models trained on "
                        f"(runs trained on the same data with the same data.seed share their test split)")
    data_name = str(config.data.source) if config.data.source else "built-in phantom data"
    return evaluated.reset_index(drop=True), list(class_names), split, data_name
