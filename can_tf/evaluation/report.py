"""Evaluation report: per-class AUROC/AUPRC with patient-bootstrap CIs, as Markdown, CSV, JSON, PNG.

The table is laid out like the paper's: one row per class, then a Mean row. Undefined classes
(no positives or no negatives in the evaluated set) are shown as ``undefined`` with the reason and
left out of the mean; the Mean row says how many classes it averages. Published numbers from
:mod:`can_tf.evaluation.reference_results` can be put beside ours, each column labelled with its
split, with a note that random-split and official-split numbers are not comparable.

Files are written atomically (temporary file + rename). The single-file writers
(:meth:`EvaluationReport.to_csv`, :meth:`~EvaluationReport.to_json`,
:meth:`~EvaluationReport.to_markdown_file`, :meth:`~EvaluationReport.plot_roc`) replace an existing
file at the path they are given, as the caller named it. :meth:`EvaluationReport.save` writes the
whole set into a folder and refuses to replace an existing report unless ``overwrite=True``, which
is what a command re-evaluating into a run's own ``eval/<split>/`` folder passes.

Example:
    >>> import numpy as np
    >>> from can_tf.evaluation.report import EvaluationReport
    >>> rng = np.random.default_rng(0)
    >>> y = (rng.random((200, 2)) < 0.3).astype("float32")
    >>> p = np.clip(0.4 * y + 0.6 * rng.random((200, 2)), 0, 1)
    >>> report = EvaluationReport(y, p, np.arange(200) // 2, ["Edema", "Mass"], n_boot=100,
    ...                           references=["CheXNet 2017"])
    >>> print(report.to_markdown().splitlines()[4])  # doctest: +NORMALIZE_WHITESPACE
    | Class | AUROC [95% CI] | AUPRC [95% CI] | Positives | Negatives |
      CheXNet 2017 (random 70/10/20 patient split) |
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from can_tf.evaluation.bootstrap import bootstrap_metrics
from can_tf.evaluation.metrics import EvaluationError, check_predictions, compute_metrics
from can_tf.evaluation.reference_results import (
    NOT_COMPARABLE_NOTE,
    REFERENCES,
    ReferenceResult,
    get_reference,
)
from can_tf.files import atomic_write_bytes, atomic_write_text

PathLike = Union[str, os.PathLike]

REPORT_FILES = {
    "markdown": "report.md",
    "csv": "report.csv",
    "json": "report.json",
    "roc": "roc.png",
}

CSV_COLUMNS = (
    "class",
    "auroc",
    "auroc_low",
    "auroc_high",
    "auroc_n_used",
    "auprc",
    "auprc_low",
    "auprc_high",
    "auprc_n_used",
    "positives",
    "negatives",
    "unknown",
    "status",
)

MEAN_ROW = "Mean"
_FORMAT_VERSION = 1


class EvaluationReport:
    """Per-class AUROC and AUPRC with bootstrap CIs resampled by patient, ready to write.

    Args:
        y_true: ``(N, C)`` labels, 1 / 0 / NaN (unknown).
        y_prob: ``(N, C)`` predicted probabilities.
        patient_ids: ``(N,)`` patient of each image (the bootstrap resamples patients); ``None``
            treats every image as its own patient, which the report then states.
        class_names: the ``C`` class names, in column order.
        split: name of the evaluated split or data set (``"test"``, ``"val"``, a folder name).
        model_name: shown in titles and files.
        split_description: how that split was made (e.g. ``"official split"``), shown in the
            header so readers can match it to the references' splits.
        n_boot, seed, confidence: bootstrap settings (see :func:`bootstrap_metrics`).
        references: published results to show beside ours: ``"all"``, or names / objects from
            :mod:`can_tf.evaluation.reference_results`.
        provenance: the model's :mod:`can_tf.provenance` record (data, splits, preset, epoch,
            versions), shown under the table; a phantom-trained model gets a bold warning on top.
    """

    def __init__(
        self,
        y_true,
        y_prob,
        patient_ids,
        class_names: Sequence[str],
        *,
        split: str = "test",
        model_name: str = "model",
        split_description: Optional[str] = None,
        n_boot: int = 1000,
        seed: int = 0,
        confidence: float = 0.95,
        references=(),
        provenance: Optional[dict] = None,
        external: Optional[str] = None,
    ):
        self.external = external  # what an external evaluation compared, shown under the split line
        self.class_names = tuple(class_names)
        self.y_true, self.y_prob = check_predictions(y_true, y_prob, self.class_names)
        self.split = str(split)
        self.model_name = str(model_name)
        self.split_description = split_description
        self.metrics = compute_metrics(self.y_true, self.y_prob, self.class_names)
        self.intervals = bootstrap_metrics(
            self.y_true,
            self.y_prob,
            patient_ids,
            self.class_names,
            n_boot=n_boot,
            seed=seed,
            confidence=confidence,
        )
        self.patient_ids = None if patient_ids is None else np.asarray(patient_ids)
        self.num_images = int(self.y_true.shape[0])
        self.num_patients = self.intervals["auroc"].num_patients
        self.by_patient = patient_ids is not None
        self.n_boot, self.seed, self.confidence = int(n_boot), int(seed), float(confidence)
        self.references = _resolve_references(references)
        self.provenance = provenance

    # ----------------------------------------------------------------------------------------
    # Rows: the one table every output format is written from.
    # ----------------------------------------------------------------------------------------
    def rows(self) -> list:
        """One dict per class then the Mean row, with the keys of :data:`CSV_COLUMNS`."""
        rows = []
        for name in self.class_names:
            row = {"class": name}
            for metric in ("auroc", "auprc"):
                row.update(_interval_fields(metric, self.intervals[metric].per_class[name]))
            row["positives"] = self.metrics.positives[name]
            row["negatives"] = self.metrics.negatives[name]
            row["unknown"] = self.metrics.unknown[name]
            reason = self.metrics.undefined.get(name)
            row["status"] = f"undefined: {reason}" if reason else "ok"
            rows.append(row)
        mean = {"class": MEAN_ROW}
        for metric in ("auroc", "auprc"):
            mean.update(_interval_fields(metric, self.intervals[metric].mean))
        mean.update(positives=None, negatives=None, unknown=None)
        n, total = self.metrics.num_classes_averaged, len(self.class_names)
        mean["status"] = f"mean over {n} of {total} classes" if n else "undefined: no class defined"
        rows.append(mean)
        return rows

    def notes(self) -> list:
        """Plain-language caveats that belong beside the numbers."""
        notes = []
        for name, reason in self.metrics.undefined.items():
            notes.append(f"{name}: AUROC and AUPRC undefined ({reason}); left out of the mean.")
        n, total = self.metrics.num_classes_averaged, len(self.class_names)
        if n < total:
            notes.append(
                f"The Mean row averages the {n} defined classes, not all {total}; published "
                f"means average all 14 classes, so they are not directly comparable."
            )
        for name in self.class_names:
            used = self.intervals["auroc"].per_class[name].n_used
            if name not in self.metrics.undefined and used < self.n_boot:
                notes.append(
                    f"{name}: CI from {used} of {self.n_boot} bootstrap replicates (the others "
                    f"drew no positive or no negative patients)."
                )
        strata = self.intervals["auroc"].num_strata
        if strata > 1:
            notes.append(
                f"Patients were resampled within {strata} strata: each class with fewer than 20 "
                f"patients on either side keeps them in a stratum of its own, so every replicate "
                f"scores it (see can_tf/evaluation/bootstrap.py)."
            )
        mean_used = self.intervals["auroc"].mean.n_used
        if n and mean_used < self.n_boot:
            notes.append(
                f"Mean CI from the {mean_used} of {self.n_boot} replicates in which every "
                f"averaged class was defined."
            )
        if not self.by_patient:
            notes.append(
                "No patient ids were given: images were resampled as if independent, which "
                "understates the uncertainty when patients have several images."
            )
        if self.references:
            notes.append(NOT_COMPARABLE_NOTE)
        return notes

    # ----------------------------------------------------------------------------------------
    # Markdown
    # ----------------------------------------------------------------------------------------
    def to_markdown(self) -> str:
        """The report as Markdown: header, the class table with a Mean row, notes, sources."""
        pct = f"{self.confidence * 100:g}%"
        per_class_refs = [r for r in self.references if r.per_class is not None]
        mean_refs = [r for r in self.references if r.per_class is None]
        from can_tf.provenance import phantom_warning, summary_lines

        lines = [f"# Evaluation of {self.model_name} on {self.split}", ""]
        if phantom_warning(self.provenance):
            lines += [phantom_warning(self.provenance), ""]
        split_text = f" ({self.split_description})" if self.split_description else ""
        resampled = "patient" if self.by_patient else "image"
        lines += [
            f"Split: {self.split}{split_text}. {self.num_images} images, "
            f"{self.num_patients} {'patients' if self.by_patient else 'independent images'}. "
            f"{pct} CIs: percentile intervals from {self.n_boot} {resampled}-level bootstrap "
            f"replicates (seed {self.seed}).",
            "",
        ]
        if self.external:
            lines += [f"**External evaluation**: {self.external}", ""]
        header = [
            "Class",
            f"AUROC [{pct} CI]",
            f"AUPRC [{pct} CI]",
            "Positives",
            "Negatives",
        ]
        show_unknown = any(self.metrics.unknown.values())
        if show_unknown:
            header.append("Unknown")
        header += [ref.label for ref in per_class_refs]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        for row in self.rows():
            is_mean = row["class"] == MEAN_ROW
            if is_mean:
                n = self.metrics.num_classes_averaged
                cells = [f"**{MEAN_ROW}** ({n} of {len(self.class_names)} classes)"]
            else:
                cells = [row["class"]]
            for metric in ("auroc", "auprc"):
                cells.append(_format_interval(row, metric, bold=is_mean))
            if is_mean:
                cells += [""] * (3 if show_unknown else 2)
            else:
                cells += [str(row["positives"]), str(row["negatives"])]
                if show_unknown:
                    cells.append(str(row["unknown"]))
            for ref in per_class_refs:
                value = ref.mean if is_mean else ref.per_class.get(row["class"])
                if value is None:
                    cells.append("")
                else:
                    # Published means carry 3 decimals everywhere; per-class values their own.
                    cells.append(f"{value:.3f}" if is_mean else ref.format(value))
            lines.append("| " + " | ".join(cells) + " |")
        if mean_refs:
            lines += ["", "Published mean AUROC (no per-class values):", ""]
            lines.append("| Result | Mean AUROC | Split | Source |")
            lines.append("|---|---:|---|---|")
            for ref in mean_refs:
                lines.append(f"| {ref.name} | {ref.mean:.3f} | {ref.split} | {ref.source} |")
        notes = self.notes()
        if notes:
            lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
        if self.references:
            lines += ["", "Sources:", ""]
            for ref in self.references:
                check = "verified against it" if ref.verified else "not verified"
                lines.append(f"- {ref.name}: {ref.source}, {check}; split: {ref.split}.")
        if self.provenance:
            lines += ["", "Model provenance:", ""] + summary_lines(self.provenance)
        return "\n".join(lines) + "\n"

    def to_markdown_file(self, path: PathLike) -> Path:
        """Writes :meth:`to_markdown` to ``path`` (atomically, replacing an existing file)."""
        return atomic_write_text(path, self.to_markdown())

    # ----------------------------------------------------------------------------------------
    # CSV and JSON
    # ----------------------------------------------------------------------------------------
    def to_csv(self, path: PathLike) -> Path:
        """Writes the class rows and the Mean row as CSV (full precision; empty = undefined)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({k: "" if row[k] is None else _csv_value(row[k]) for k in CSV_COLUMNS})
        return atomic_write_text(path, buffer.getvalue())

    def to_dict(self) -> dict:
        """Everything in the report as a JSON-ready dict (``None`` for undefined values)."""
        from can_tf import __version__

        rows = self.rows()
        return {
            "format_version": _FORMAT_VERSION,
            "can_tf_version": __version__,
            "model": self.model_name,
            "split": self.split,
            "split_description": self.split_description,
            "external": self.external,
            "num_images": self.num_images,
            "num_patients": self.num_patients,
            "class_names": list(self.class_names),
            "bootstrap": {
                "n_boot": self.n_boot,
                "seed": self.seed,
                "confidence": self.confidence,
                "resampled": "patients" if self.by_patient else "images",
                "interval": "percentile",
            },
            "provenance": self.provenance,
            "classes": rows[:-1],
            "mean": rows[-1] | {"num_classes_averaged": self.metrics.num_classes_averaged},
            "references": [
                {
                    "name": ref.name,
                    "split": ref.split,
                    "source": ref.source,
                    "verified": ref.verified,
                    "mean": ref.mean,
                    "per_class": None if ref.per_class is None else dict(ref.per_class),
                }
                for ref in self.references
            ],
            "notes": self.notes(),
        }

    def to_json(self, path: PathLike) -> Path:
        """Writes :meth:`to_dict` as JSON (atomically, replacing an existing file)."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        return atomic_write_text(path, text + "\n")

    # ----------------------------------------------------------------------------------------
    # ROC figure
    # ----------------------------------------------------------------------------------------
    def plot_roc(self, path: PathLike, dpi: int = 120) -> Path:
        """Draws every defined class's ROC curve on one figure and writes it as PNG."""
        # The object-oriented API with the Agg canvas: no pyplot, no global backend switch, so
        # this works headless and does not disturb a caller's own plotting.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from sklearn.metrics import roc_curve

        fig = Figure(figsize=(7.5, 7.0), dpi=dpi)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        colors = _class_colors(len(self.class_names))
        for c, name in enumerate(self.class_names):
            auroc = self.metrics.auroc[name]
            if auroc is None:
                # Listed in the legend so a missing curve is explained, not silently absent.
                ax.plot([], [], color="none", label=f"{name}: undefined")
                continue
            known = ~np.isnan(self.y_true[:, c])
            fpr, tpr, _ = roc_curve(self.y_true[known, c], self.y_prob[known, c])
            ax.plot(fpr, tpr, color=colors[c], linewidth=1.4, label=f"{name} ({auroc:.3f})")
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1.0, label="chance")
        # A small margin keeps curves running along an edge (TPR = 1) visible.
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("False positive rate (1 - specificity)")
        ax.set_ylabel("True positive rate (sensitivity)")
        mean, n = self.metrics.mean_auroc, self.metrics.num_classes_averaged
        mean_text = f"mean AUROC {mean:.3f} over {n} classes" if mean is not None else "no class"
        ax.set_title(f"ROC: {self.model_name} on {self.split} ({mean_text})", fontsize=10)
        ax.grid(True, linewidth=0.4, alpha=0.5)
        ax.legend(loc="lower right", fontsize=7, title="Class (AUROC)", title_fontsize=7)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return atomic_write_bytes(path, buffer.getvalue())

    # ----------------------------------------------------------------------------------------
    # All files
    # ----------------------------------------------------------------------------------------
    def save(self, directory: PathLike, *, overwrite: bool = False, plot: bool = True,
             extra_files: Optional[dict] = None) -> dict:
        """Writes report.md, report.csv, report.json and roc.png into ``directory``.

        ``extra_files`` (``{kind: (relative path, str or bytes)}``: the HTML report, figures, the
        model card...) are written with them, in the same staging folder, so the new report's files
        appear together or not at all. Refuses (``FileExistsError`` naming the file) to replace an
        existing report unless ``overwrite=True``. Returns ``{kind: path}`` of the files written.
        """
        directory = Path(directory)
        targets = {kind: directory / name for kind, name in REPORT_FILES.items()}
        if not plot:
            targets.pop("roc")
        extra_files = dict(extra_files or {})
        for kind, (name, _) in extra_files.items():
            targets[kind] = directory / name
        if not overwrite:
            for path in targets.values():
                if path.exists():
                    raise FileExistsError(
                        f"{path} already exists; pass overwrite=True to replace the report in "
                        f"{directory}"
                    )
        # All four are written into a staging folder first: a full disk or a failed plot leaves the
        # previous report as it was, never half of a new one.
        from can_tf.files import (fsync_dir, is_disk_full, make_folders, no_space_message, remove_empty_folders,
                                  remove_stale_temporaries, staging_folder)

        created = make_folders(directory)
        remove_stale_temporaries(directory)  # what a killed evaluation left
        staging = staging_folder(directory, "report")
        try:
            writers = {"markdown": self.to_markdown_file, "csv": self.to_csv, "json": self.to_json,
                       "roc": self.plot_roc}
            for kind, target in targets.items():
                staged = staging / target.relative_to(directory)
                if kind in extra_files:
                    content = extra_files[kind][1]
                    (atomic_write_bytes if isinstance(content, bytes) else atomic_write_text)(staged, content)
                else:
                    writers[kind](staged)
            for target in targets.values():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / target.relative_to(directory), target)
            fsync_dir(directory)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            remove_empty_folders(created)
            if isinstance(error, Exception) and is_disk_full(error):
                raise EvaluationError(no_space_message(
                    target, "no part of the new report was written; an earlier report there is unchanged")) from error
            raise
        shutil.rmtree(staging, ignore_errors=True)
        return targets


def _resolve_references(references) -> tuple:
    if references is None:
        return ()
    if isinstance(references, str):
        if references == "all":
            return tuple(REFERENCES)
        references = [references]
    resolved = []
    for ref in references:
        if isinstance(ref, ReferenceResult):
            resolved.append(ref)
            continue
        try:
            resolved.append(get_reference(ref))
        except KeyError as err:
            raise EvaluationError(f"references: {err.args[0]}") from None
    return tuple(resolved)


def _interval_fields(metric: str, interval) -> dict:
    return {
        metric: interval.point,
        f"{metric}_low": interval.low,
        f"{metric}_high": interval.high,
        f"{metric}_n_used": interval.n_used,
    }


def _format_interval(row: dict, metric: str, bold: bool = False) -> str:
    point = row[metric]
    if point is None:
        status = row["status"]
        return "undefined" + (f" ({status[len('undefined: '):]})" if metric == "auroc" else "")
    text = f"{point:.3f}"
    if bold:
        text = f"**{text}**"
    if row[f"{metric}_low"] is None:
        return f"{text} [CI n/a]"
    return f"{text} [{row[f'{metric}_low']:.3f}, {row[f'{metric}_high']:.3f}]"


def _csv_value(value):
    # repr keeps every digit, so the CSV parses back to exactly the reported floats.
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return value


def _class_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    # Even indices of tab20 are its 10 strong colours; the odd (pale) ones follow for >10 classes.
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return [cmap(order[i % 20]) for i in range(n)]
