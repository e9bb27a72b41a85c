"""Paired comparison of models scored on the same images: what the numbers allow one to conclude.

Two models evaluated on the same test images give correlated AUROCs, so comparing their two
independent intervals is wrong (too conservative) and comparing two point estimates decides
nothing. Each side here is a *group* of runs, one run or several that differ only in their training
seed; the quantity compared is the difference of the groups' mean AUROC over seeds, per class and
averaged over classes.

Two sources of uncertainty are measured separately, because they answer different questions:

- **The test images** (would another sample of patients give the same difference for these
  trained models?). A *paired patient bootstrap*: every replicate resamples patients once and
  scores every run of both groups on it (:func:`~can_tf.evaluation.bootstrap.replicate_metrics`,
  rare classes stratified so that no replicate is dropped), giving a percentile interval of the
  difference. Per class, also *DeLong's test* for correlated ROC curves with Obuchowski's patient
  clustering (:mod:`can_tf.evaluation.delong`), on the contrast ``mean(AUC_A) - mean(AUC_B)`` of all
  runs' AUROCs and their joint covariance; its p-values are corrected across the classes by Holm's
  method (family-wise error rate; Benjamini-Hochberg's FDR q-values are given too).
- **The training seed** (would training again give the same difference?). Only measurable with two
  or more seeds per side: the spread of the per-seed differences (paired by seed when both groups
  have the same seeds, else each group's own spread), with a Student-t interval over seeds.

The conclusion sentence claims a difference only when the test-image interval excludes zero *and*,
with seeds on both sides, the seed interval does too; with one run per side it says that the
difference is between two trained models and that the method and the seed cannot be told apart.

Example:
    >>> import numpy as np
    >>> from can_tf.evaluation.comparison import compare_groups
    >>> rng = np.random.default_rng(0)
    >>> y = (rng.random((400, 2)) < 0.3).astype("float32")
    >>> good = np.clip(0.4 * y + 0.6 * rng.random((400, 2)), 0, 1)
    >>> weak = np.clip(0.1 * y + 0.9 * rng.random((400, 2)), 0, 1)
    >>> c = compare_groups(y, {"A": [good], "B": [weak]}, np.arange(400) // 2, ["Mass", "Edema"],
    ...                    n_boot=200)
    >>> pair = c.pairs[0]
    >>> pair.mean.difference.low > 0, pair.conclusion.startswith("A's mean AUROC is higher")
    (True, True)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from typing import Mapping, Optional, Sequence

import numpy as np

from can_tf.evaluation.bootstrap import Interval, check_settings, percentile_interval, replicate_metrics
from can_tf.evaluation.delong import benjamini_hochberg, delong_covariance, holm
from can_tf.evaluation.metrics import EvaluationError, check_predictions

CORRECTIONS = ("holm", "bh", "none")
SMALL_PATIENTS = 50  # below this many patients a comparison says its intervals are rough


@dataclasses.dataclass(frozen=True)
class SeedSpread:
    """Seed-to-seed variation of a difference: per-seed values, mean, sd and a t interval."""

    values: tuple
    paired: bool  # per-seed differences (same seeds on both sides) or the groups' own spreads
    mean: Optional[float]
    sd: Optional[float]
    low: Optional[float]
    high: Optional[float]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Difference:
    """One class's (or the mean's) comparison of group A with group B."""

    name: str
    auroc_a: Optional[float]
    auroc_b: Optional[float]
    difference: Interval  # point = mean over A's seeds - mean over B's seeds; paired bootstrap interval
    z: Optional[float] = None  # DeLong (per class only)
    p_value: Optional[float] = None
    p_adjusted: Optional[float] = None  # Holm across the classes
    q_value: Optional[float] = None  # Benjamini-Hochberg across the classes
    seeds: Optional[SeedSpread] = None

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["difference"] = self.difference.to_dict()
        return out


@dataclasses.dataclass(frozen=True)
class PairComparison:
    """Group ``a`` against group ``b`` (``b`` is the reference)."""

    a: str
    b: str
    seeds_a: int
    seeds_b: int
    classes: tuple  # of Difference
    mean: Difference
    num_classes_averaged: int
    conclusion: str

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "seeds_a": self.seeds_a, "seeds_b": self.seeds_b,
                "classes": [d.to_dict() for d in self.classes], "mean": self.mean.to_dict(),
                "num_classes_averaged": self.num_classes_averaged, "conclusion": self.conclusion}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Every group against the reference group, on the same images and bootstrap replicates."""

    class_names: tuple
    groups: dict  # name -> number of runs (seeds)
    reference: str
    pairs: tuple  # of PairComparison
    num_images: int
    num_patients: int
    n_boot: int
    seed: int
    confidence: float
    alpha: float
    correction: str
    notes: tuple = ()

    def to_dict(self) -> dict:
        return {"class_names": list(self.class_names), "groups": dict(self.groups),
                "reference": self.reference, "pairs": [p.to_dict() for p in self.pairs],
                "num_images": self.num_images, "num_patients": self.num_patients,
                "n_boot": self.n_boot, "seed": self.seed, "confidence": self.confidence,
                "alpha": self.alpha, "correction": self.correction, "notes": list(self.notes),
                "method": METHOD}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False, default=_jsonable) + "\n"

    def to_markdown(self) -> str:
        return comparison_markdown(self)

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["a", "b", "class", "auroc_a", "auroc_b", "difference", "low", "high",
                         "z", "p_value", "p_holm", "q_bh", "seed_low", "seed_high", "seeds_a", "seeds_b"])
        for pair in self.pairs:
            for d in (*pair.classes, pair.mean):
                s = d.seeds
                writer.writerow([pair.a, pair.b, d.name, _num(d.auroc_a), _num(d.auroc_b),
                                 _num(d.difference.point), _num(d.difference.low),
                                 _num(d.difference.high), _num(d.z), _num(d.p_value),
                                 _num(d.p_adjusted), _num(d.q_value),
                                 _num(s.low if s else None), _num(s.high if s else None),
                                 pair.seeds_a, pair.seeds_b])
        return out.getvalue()


METHOD = ("Difference = mean AUROC over group A's runs minus group B's, on the same images. "
          "Interval: paired patient bootstrap (every run of both groups scored on the same "
          "resampled patients; rare classes resampled within their own strata), percentile. "
          "p: DeLong's test for correlated ROC curves with patient clustering (Obuchowski 1997) "
          "on that contrast; p_holm: Holm-corrected across classes; q_bh: Benjamini-Hochberg. "
          "Seed interval: Student t over the per-seed differences.")


def compare_groups(
    y_true,
    groups: Mapping[str, Sequence],
    patient_ids,
    class_names: Sequence[str],
    *,
    reference: Optional[str] = None,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    alpha: float = 0.05,
    seeds: Optional[Mapping[str, Sequence[int]]] = None,
) -> Comparison:
    """Compares every group of runs with the reference group on the same images.

    Args:
        y_true: ``(N, C)`` labels, 1 / 0 / NaN.
        groups: group name -> a list of ``(N, C)`` probability arrays, one per run (seed), all
            on the same images in the same order.
        patient_ids: ``(N,)`` patient of each image (``None``: images independent).
        class_names: the ``C`` class names.
        reference: the group the others are compared with; default the *last* group (as in
            ``can-tf compare A B``: A against B).
        n_boot, seed, confidence: the paired bootstrap's settings.
        alpha: the level at which the conclusion calls a corrected p-value significant.
        seeds: group name -> the training seed of each run; groups with the same seeds are
            paired by seed for the seed spread.
    """
    class_names = tuple(class_names)
    if len(groups) < 2:
        raise EvaluationError("a comparison needs at least two models or groups of runs")
    check_settings(n_boot, confidence)
    if not 0.0 < alpha < 1.0:
        raise EvaluationError(f"alpha must be in (0, 1), got {alpha!r}")
    names = list(groups)
    reference = names[-1] if reference is None else reference
    if reference not in groups:
        raise EvaluationError(f"reference {reference!r} is not one of the groups {names}")
    runs, owner = [], []
    for name in names:
        members = list(groups[name])
        if not members:
            raise EvaluationError(f"group {name!r} has no runs")
        for probs in members:
            runs.append(check_predictions(y_true, probs, class_names)[1])
            owner.append(name)
    y_true = check_predictions(y_true, runs[0], class_names)[0]
    owner = np.array(owner)
    replicates = replicate_metrics(y_true, runs, patient_ids, class_names, metrics=("auroc",),
                                   n_boot=n_boot, seed=seed)
    points = np.array([[np.nan if r["auroc"][c] is None else r["auroc"][c] for c in class_names]
                       for r in replicates.points])  # (K, C)
    values = replicates.values["auroc"]  # (K, B, C)
    seeds = dict(seeds or {})

    pairs = []
    for name in names:
        if name == reference:
            continue
        pairs.append(_pair(name, reference, owner, points, values, y_true, runs, patient_ids,
                           class_names, confidence, alpha, seeds))
    notes = ()
    if replicates.num_patients < SMALL_PATIENTS:
        notes = (f"only {replicates.num_patients} patients: every interval and p-value here is rough "
                 f"(bootstrap and DeLong are large-sample methods); read it as a smoke test",)
    return Comparison(class_names=class_names, groups={n: int((owner == n).sum()) for n in names},
                      reference=reference, pairs=tuple(pairs), num_images=int(y_true.shape[0]),
                      num_patients=replicates.num_patients, n_boot=int(n_boot), seed=int(seed),
                      confidence=float(confidence), alpha=float(alpha), correction="holm", notes=notes)


def _pair(a, b, owner, points, values, y_true, runs, patient_ids, class_names, confidence, alpha,
          seeds):
    in_a, in_b = owner == a, owner == b
    lo_q, hi_q = 100.0 * (1.0 - confidence) / 2.0, 100.0 * (1.0 + confidence) / 2.0
    # Per replicate: mean over A's runs minus mean over B's runs (NaN where a class is undefined).
    rep_diff = values[in_a].mean(axis=0) - values[in_b].mean(axis=0)  # (B, C)
    point_a, point_b = points[in_a].mean(axis=0), points[in_b].mean(axis=0)
    defined = ~np.isnan(point_a) & ~np.isnan(point_b)
    spread_classes = _seed_spreads(points, in_a, in_b, seeds.get(a), seeds.get(b), confidence)

    rows, p_values = [], []
    for c, name in enumerate(class_names):
        if not defined[c]:
            rows.append(Difference(name, None, None, Interval(None, None, None, 0)))
            p_values.append(np.nan)
            continue
        z, p = delong_contrast(y_true[:, c], np.stack([r[:, c] for r in runs], axis=1), in_a, in_b,
                               patient_ids)
        interval = percentile_interval(float(point_a[c] - point_b[c]), rep_diff[:, c], lo_q, hi_q)
        rows.append(Difference(name, float(point_a[c]), float(point_b[c]), interval, z=z, p_value=p,
                               seeds=spread_classes[c]))
        p_values.append(np.nan if p is None else p)
    adjusted, q_values = holm(np.array(p_values)), benjamini_hochberg(np.array(p_values))
    rows = [dataclasses.replace(r, p_adjusted=_opt(adjusted[i]), q_value=_opt(q_values[i]))
            if r.p_value is not None else r for i, r in enumerate(rows)]

    cols = np.flatnonzero(defined)
    if cols.size:
        mean_a, mean_b = float(point_a[cols].mean()), float(point_b[cols].mean())
        mean_interval = percentile_interval(mean_a - mean_b, rep_diff[:, cols].mean(axis=1), lo_q, hi_q)
        mean_spread = _seed_spread(points[in_a][:, cols].mean(axis=1), points[in_b][:, cols].mean(axis=1),
                                   seeds.get(a), seeds.get(b), confidence)
    else:
        mean_a = mean_b = None
        mean_interval, mean_spread = Interval(None, None, None, 0), None
    mean = Difference("Mean", mean_a, mean_b, mean_interval, seeds=mean_spread)
    pair = PairComparison(a=a, b=b, seeds_a=int(in_a.sum()), seeds_b=int(in_b.sum()),
                          classes=tuple(rows), mean=mean, num_classes_averaged=int(cols.size),
                          conclusion="")
    return dataclasses.replace(pair, conclusion=conclusion(pair, confidence, alpha))


def delong_contrast(labels, scores, in_a, in_b, patient_ids=None) -> tuple:
    """DeLong's ``(z, p)`` for ``mean(AUC of A's runs) - mean(AUC of B's runs)`` on one class.

    ``scores`` is ``(N, K)``, one column per run; ``in_a`` / ``in_b`` select the columns of each
    group. The AUROCs' joint covariance (patient-clustered when ``patient_ids`` is given) gives
    the variance of the contrast ``w`` (``+1/|A|`` on A's runs, ``-1/|B|`` on B's): ``w' S w``. With
    one run per side this is DeLong's test of two correlated ROC curves. ``(None, None)`` when the
    class has too few positives or negatives for the variance.
    """
    from scipy.stats import norm

    weights = in_a / in_a.sum() - in_b / in_b.sum()
    try:
        aucs, cov = delong_covariance(labels, scores, clusters=patient_ids)
    except EvaluationError:
        return None, None
    difference = float(weights @ aucs)
    variance = max(float(weights @ cov @ weights), 0.0)
    if variance == 0.0:
        return (0.0, 1.0) if difference == 0.0 else (float(np.sign(difference) * np.inf), 0.0)
    z = difference / np.sqrt(variance)
    return float(z), float(2.0 * norm.sf(abs(z)))


def _seed_spreads(points, in_a, in_b, seeds_a, seeds_b, confidence):
    return [_seed_spread(points[in_a][:, c], points[in_b][:, c], seeds_a, seeds_b, confidence)
            if not (np.isnan(points[in_a][:, c]).any() or np.isnan(points[in_b][:, c]).any()) else None
            for c in range(points.shape[1])]


def _seed_spread(values_a, values_b, seeds_a, seeds_b, confidence) -> Optional[SeedSpread]:
    """Per-seed differences when both groups ran the same seeds; else None unless both have >= 2
    runs, then the difference of means with a Welch t interval."""
    from scipy import stats

    values_a, values_b = np.asarray(values_a, float), np.asarray(values_b, float)
    if values_a.size < 2 and values_b.size < 2:
        return None
    paired = (seeds_a is not None and seeds_b is not None and list(seeds_a) == list(seeds_b)
              and values_a.size == values_b.size)
    if paired:
        diffs = values_a - values_b
        n = diffs.size
        mean, sd = float(diffs.mean()), float(diffs.std(ddof=1))
        half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / np.sqrt(n)
        return SeedSpread(tuple(float(v) for v in diffs), True, mean, sd, mean - half, mean + half)
    if values_a.size < 2 or values_b.size < 2:
        return None
    va, vb = values_a.var(ddof=1) / values_a.size, values_b.var(ddof=1) / values_b.size
    mean = float(values_a.mean() - values_b.mean())
    se = float(np.sqrt(va + vb))
    if se == 0:
        return SeedSpread((), False, mean, 0.0, mean, mean)
    df = (va + vb) ** 2 / (va**2 / (values_a.size - 1) + vb**2 / (values_b.size - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, df)) * se
    return SeedSpread((), False, mean, se, mean - half, mean + half)


def conclusion(pair: PairComparison, confidence: float = 0.95, alpha: float = 0.05) -> str:
    """A plain sentence of what the comparison allows one to conclude, and what it does not."""
    pct = f"{confidence * 100:g}%"
    d = pair.mean.difference
    if d.point is None:
        return f"No class is defined on these images for both {pair.a} and {pair.b}: nothing can be compared."
    direction = "higher" if d.point > 0 else "lower"
    text = (f"{pair.a}'s mean AUROC is {direction} than {pair.b}'s by {abs(d.point):.3f} "
            f"({pct} paired patient-bootstrap interval of the difference {d.low:+.3f} to {d.high:+.3f}, "
            f"{pair.num_classes_averaged} classes averaged).")
    images_exclude = d.low is not None and (d.low > 0 or d.high < 0)
    seeds = pair.mean.seeds
    if pair.seeds_a < 2 or pair.seeds_b < 2:
        if images_exclude:
            text += (f" On these images the difference between these two trained models is unlikely "
                     f"to be sampling noise, but with {'one run' if min(pair.seeds_a, pair.seeds_b) == 1 else 'few runs'} "
                     f"per side it cannot be told whether the method or the training seed made it: "
                     f"train each with several seeds (--seeds) and compare the groups.")
        else:
            text += (" The interval includes 0: these images cannot tell the two models apart, and "
                     "with one run per side the training seed's share is unknown.")
    else:
        seed_exclude = seeds is not None and seeds.low is not None and (seeds.low > 0 or seeds.high < 0)
        seed_text = (f"over seeds the difference is {seeds.mean:+.3f} ({pct} t interval "
                     f"{seeds.low:+.3f} to {seeds.high:+.3f}, {pair.seeds_a} vs {pair.seeds_b} runs)"
                     if seeds is not None and seeds.low is not None else "the seed spread is unknown")
        if images_exclude and seed_exclude:
            text += f" Both the test images and the training seeds support it: {seed_text}."
        elif images_exclude:
            text += (f" The test images support it, but the training seeds do not: {seed_text}; "
                     f"more seeds are needed before calling {pair.a} {'better' if d.point > 0 else 'worse'}.")
        else:
            text += f" The interval includes 0, so no difference can be concluded; {seed_text}."
    significant = [r for r in pair.classes if r.p_adjusted is not None and r.p_adjusted < alpha]
    tested = [r for r in pair.classes if r.p_adjusted is not None]
    if tested:
        if significant:
            text += (f" Per class, DeLong's test (Holm-corrected over {len(tested)} classes, alpha "
                     f"{alpha:g}) finds a difference on these images for "
                     f"{', '.join(r.name for r in significant)} only")
            with_seeds = [r for r in significant if r.seeds is not None and r.seeds.low is not None]
            unsupported = [r.name for r in with_seeds if r.seeds.low <= 0 <= r.seeds.high]
            if unsupported:
                text += (f"; the seeds' interval includes 0 for {', '.join(unsupported)}, so the "
                         f"training seed may explain {'it' if len(unsupported) == 1 else 'them'}")
            text += "."
        else:
            smallest = min(r.p_adjusted for r in tested)
            text += (f" Per class, no difference survives Holm's correction over {len(tested)} classes "
                     f"(smallest corrected p = {smallest:.3g}).")
    return text


def comparison_markdown(comparison: Comparison) -> str:
    """The comparison as Markdown: one table per pair, its conclusion first."""
    pct = f"{comparison.confidence * 100:g}%"
    lines = [f"# Comparison on {comparison.num_images} images ({comparison.num_patients} patients)", ""]
    lines.append("Groups: " + ", ".join(f"{n} ({k} run{'s' if k != 1 else ''})"
                                         for n, k in comparison.groups.items())
                 + f"; reference: {comparison.reference}.")
    lines += ["", METHOD, ""]
    for pair in comparison.pairs:
        lines += [f"## {pair.a} vs {pair.b}", "", pair.conclusion, ""]
        lines.append(f"| class | {pair.a} | {pair.b} | difference [{pct} CI] | DeLong p | Holm p | "
                     f"BH q | seed interval |")
        lines.append("|---|---:|---:|---|---:|---:|---:|---|")
        for d in (*pair.classes, pair.mean):
            name = f"**Mean ({pair.num_classes_averaged} classes)**" if d is pair.mean else d.name
            lines.append(f"| {name} | {_fmt(d.auroc_a)} | {_fmt(d.auroc_b)} | {_interval(d.difference)} | "
                         f"{_p(d.p_value)} | {_p(d.p_adjusted)} | {_p(d.q_value)} | {_seed_text(d.seeds)} |")
        lines.append("")
    for note in comparison.notes:
        lines.append(f"- {note}")
    return "\n".join(lines).rstrip() + "\n"


def signed_interval_text(point, low=None, high=None) -> str:
    """A difference with its interval, signed: ``+0.012 [-0.003, +0.027]`` (``undefined``)."""
    if point is None:
        return "undefined"
    if low is None:
        return f"{point:+.3f}"
    return f"{point:+.3f} [{low:+.3f}, {high:+.3f}]"


def p_text(value) -> str:
    """A p-value as the tables show it: three decimals, ``<0.001`` below that, ``—`` if absent."""
    if value is None:
        return "—"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _interval(i: Interval) -> str:
    return signed_interval_text(i.point, i.low, i.high)


def _seed_text(s: Optional[SeedSpread]) -> str:
    if s is None or s.low is None:
        return "—"
    return f"{s.mean:+.3f} [{s.low:+.3f}, {s.high:+.3f}]" + (" paired" if s.paired else "")


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def _p(value) -> str:
    return p_text(value)


def _num(value) -> str:
    return "" if value is None else f"{value:.6g}"


def _opt(value) -> Optional[float]:
    return None if value is None or np.isnan(value) else float(value)


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
