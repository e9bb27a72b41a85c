"""One self-contained HTML page per evaluation: tables, inline SVG figures, heat-map gallery.

The page needs nothing but itself: CSS is inline, figures are inline SVG (text drawn as paths, ids
scoped per figure, see :func:`can_tf.evaluation.figures.inline_svg`), gallery images are PNG
``data:`` URIs, and the one script is inline. It opens the same from a USB stick, an e-mail
attachment or an air-gapped review machine, and it fetches nothing, so reading a report leaks
nothing about it. All text from the inputs is HTML-escaped: a class called ``<b>`` shows as
``<b>``.

Sections, in order: title (with the bold "not a diagnostic model" warning for a phantom-trained
model), provenance, the per-class table with intervals and the published references' columns (as
:meth:`~can_tf.evaluation.report.EvaluationReport.to_markdown` lays it out), ROC and PR small
multiples, operating points, calibration, subgroups, heat-map gallery, notes, model card. A
section whose input is missing stays on the page and says why, so a reader sees what was not done
rather than wondering.

Self-check: the inline script runs on load and records on ``<body>`` whether every ``<svg>`` has a
non-zero bounding box and every ``<img>`` decoded (``data-figures-ok``, ``data-figure-count``,
``data-figures-bad``) and any script error (``data-errors``), so a headless browser can verify a
report without a person looking at it.

Example:
    >>> import numpy as np
    >>> from can_tf.evaluation.report import EvaluationReport
    >>> from can_tf.evaluation.html_report import render_html
    >>> rng = np.random.default_rng(0)
    >>> y = (rng.random((100, 2)) < 0.3).astype("float32")
    >>> p = np.clip(0.4 * y + 0.6 * rng.random((100, 2)), 0, 1)
    >>> page = render_html(EvaluationReport(y, p, None, ["Edema", "<b>"], n_boot=50).to_dict())
    >>> page.startswith("<!DOCTYPE html>"), "&lt;b&gt;" in page, "<b>" in page
    (True, True, False)
"""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from can_tf.evaluation.figures import inline_svg
from can_tf.evaluation.metrics import EvaluationError
from can_tf.files import atomic_write_text

PathLike = Union[str, os.PathLike]

FIGURE_KEYS = ("roc", "pr", "calibration", "forest")
_SUBGROUP_TEXT = (1, 8)  # the class and status columns of the subgroup tables
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Why a figure is missing when the caller did not say.
_ABSENT = {
    "roc": "ROC figure not made for this evaluation.",
    "pr": "precision-recall figure not made for this evaluation.",
    "calibration": "reliability figure not made for this evaluation.",
    "forest": "forest plot not made for this evaluation.",
}

_CSS = """
:root { --ink: #1b1f24; --muted: #5b6470; --line: #d6dbe1; --band: #f4f6f8; --warn: #9a1c1c; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; color: var(--ink); background: #ffffff;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; }
h1 { font-size: 24px; margin: 0 0 6px; }
h2 { font-size: 18px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
p { margin: 6px 0; }
.meta { color: var(--muted); }
.warning { margin: 14px 0; padding: 12px 16px; border: 2px solid var(--warn); border-radius: 6px;
  background: #fdecec; color: var(--warn); font-size: 16px; font-weight: 700; }
.absent { color: var(--muted); font-style: italic; padding: 8px 12px; background: var(--band);
  border-radius: 4px; }
nav { margin: 10px 0 0; font-size: 13px; }
nav a { color: #1f5f9e; margin-right: 12px; text-decoration: none; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px;
  font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: right;
  vertical-align: top; }
th { background: var(--band); font-weight: 600; }
th:first-child, td:first-child { text-align: left; }
td.text, th.text { text-align: left; }
tr.mean td { font-weight: 700; border-top: 2px solid var(--ink); }
tr.flag td { color: var(--muted); font-style: italic; }
.scroll { overflow-x: auto; }
figure { margin: 12px 0 20px; }
figure svg { display: block; max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 16px; }
.gallery figure { margin: 0; padding: 8px; border: 1px solid var(--line); border-radius: 6px; }
.gallery img { display: block; width: 100%; height: auto; image-rendering: auto; }
.gallery .title { font-weight: 600; margin-top: 6px; }
details { margin: 6px 0 12px; }
summary { cursor: pointer; color: #1f5f9e; }
pre { background: var(--band); padding: 10px; overflow-x: auto; font-size: 12px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 6px 0; }
dt { font-weight: 600; }
dd { margin: 0; }
"""

# Runs once the page has loaded (images decoded, layout done) and writes its findings on <body>.
_SCRIPT = """
(function () {
  var errors = [];
  window.onerror = function (message, source, line) {
    errors.push(String(message) + " (line " + line + ")");
    if (document.body) { document.body.setAttribute("data-errors", errors.join(" | ")); }
  };
  window.addEventListener("load", function () {
    var body = document.body, bad = [];
    var svgs = document.querySelectorAll("svg"), imgs = document.querySelectorAll("img");
    for (var i = 0; i < svgs.length; i++) {
      var box = svgs[i].getBoundingClientRect();
      if (!(box.width > 0 && box.height > 0)) { bad.push("svg " + i); }
    }
    for (var j = 0; j < imgs.length; j++) {
      if (!(imgs[j].complete && imgs[j].naturalWidth > 0)) { bad.push("img " + j); }
    }
    body.setAttribute("data-svg-count", String(svgs.length));
    body.setAttribute("data-img-count", String(imgs.length));
    body.setAttribute("data-figure-count", String(svgs.length + imgs.length));
    body.setAttribute("data-figures-bad", bad.join(" "));
    body.setAttribute("data-figures-ok", bad.length === 0 ? "true" : "false");
    body.setAttribute("data-errors", errors.join(" | "));
  });
})();
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def render_html(
    report: Mapping,
    *,
    figures: Mapping[str, str] = {},  # noqa: B006  (read only)
    calibration: Optional[Mapping] = None,
    subgroups: Optional[Mapping] = None,
    operating_points: Optional[Mapping] = None,
    gallery: Sequence[Mapping] = (),
    model_card: Optional[Mapping] = None,
    subgroups_markdown: Optional[str] = None,
) -> str:
    """The evaluation as one self-contained HTML page.

    Args:
        report: :meth:`EvaluationReport.to_dict() <can_tf.evaluation.report.EvaluationReport.to_dict>`.
        figures: section key (``"roc"``, ``"pr"``, ``"calibration"``, ``"forest"``) -> SVG text
            (:func:`~can_tf.evaluation.figures.figure_svg`). A value that is not SVG is taken as
            the reason the figure is absent and shown in its place.
        calibration: the calibration dict (ECE / Brier before and after, bins, temperatures).
        subgroups: the subgroup-analysis dict (attributes, overall, rows).
        operating_points: per-class threshold, confusion counts and sensitivity / specificity /
            PPV / NPV with intervals.
        gallery: heat-map images, each ``{"title", "caption", "png": bytes}``.
        model_card: a model card dict; its ``"model_details"`` and ``"considerations"`` are
            summarised.
        subgroups_markdown: the subgroup tables as Markdown, offered folded under the tables.

    Raises :class:`EvaluationError` naming the field at fault for a malformed input.
    """
    for key in ("classes", "mean", "class_names"):
        if key not in report:
            raise EvaluationError(f"report: missing key {key!r} (pass EvaluationReport.to_dict())")
    unknown = sorted(set(figures) - set(FIGURE_KEYS))
    if unknown:
        raise EvaluationError(f"figures: unknown key(s) {', '.join(map(repr, unknown))}; "
                              f"use {', '.join(FIGURE_KEYS)}")
    pct = f"{float((report.get('bootstrap') or {}).get('confidence', 0.95)) * 100:g}%"
    sections = [
        ("provenance", "Provenance", _provenance(report)),
        ("results", "Per-class results", _results(report, pct)),
        ("curves", "ROC and precision-recall curves",
         _figure(figures, "roc", "ROC curves, one panel per class, with pointwise "
                 "patient-bootstrap bands; the dot marks the operating threshold.")
         + _figure(figures, "pr", "Precision-recall curves; the dashed line is the prevalence "
                   "(a model ranking at random).")),
        ("operating-points", "Operating points", _operating_points(operating_points)),
        ("calibration", "Calibration", _calibration(calibration, figures)),
        ("subgroups", "Subgroups", _subgroups(subgroups, figures, subgroups_markdown)),
        ("gallery", "Heat-map gallery", _gallery(gallery)),
        ("notes", "Notes", _notes(report)),
        ("model-card", "Model card", _model_card(model_card)),
    ]
    title = f"Evaluation of {report.get('model', 'model')} on {report.get('split', '')}"
    nav = "".join(f'<a href="#{key}">{_e(name)}</a>' for key, name, _ in sections)
    body = [f"<header><h1>{_e(title)}</h1>", _warning(report), _summary(report, pct),
            f"<nav>{nav}</nav></header>"]
    for key, name, content in sections:
        body.append(f'<section id="{key}"><h2>{_e(name)}</h2>\n{content}\n</section>')
    return _page(title, body)


def _page(title: str, body: Sequence[str]) -> str:
    """The one page shell of every report: inline style, the figure-check script, ``body``."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n<script>{_SCRIPT}</script>\n</head>\n"
        "<body data-figures-ok=\"pending\" data-figure-count=\"0\" data-errors=\"\">\n<main>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )


def write_html(path: PathLike, report: Mapping, **kwargs) -> Path:
    """Writes :func:`render_html` ``(report, **kwargs)`` to ``path`` atomically; returns the path."""
    return atomic_write_text(path, render_html(report, **kwargs))


# ------------------------------------------------------------------------------------------------
# Header, provenance, results
# ------------------------------------------------------------------------------------------------
def _warning(report) -> str:
    from can_tf.provenance import phantom_warning

    warning = phantom_warning(report.get("provenance"))
    if not warning:
        return ""
    return f'<p class="warning" role="alert">{_e(warning.strip("*"))}</p>'


def _summary(report, pct) -> str:
    boot = report.get("bootstrap") or {}
    resampled = boot.get("resampled", "patients")
    split = _e(report.get("split"))
    if report.get("split_description"):
        split += f" ({_e(report['split_description'])})"
    units = "patients" if resampled == "patients" else "independent images"
    unit = "patient" if resampled == "patients" else "image"
    text = (f"Split: {split}. {_e(report.get('num_images'))} images, "
            f"{_e(report.get('num_patients'))} {units}. {_e(pct)} CIs: "
            f"{_e(boot.get('interval', 'percentile'))} intervals from {_e(boot.get('n_boot'))} "
            f"{unit}-level bootstrap replicates (seed {_e(boot.get('seed'))}).")
    out = f'<p class="meta">{text}</p>'
    if report.get("external"):
        out += f"<p><strong>External evaluation</strong>: {_e(report['external'])}</p>"
    return out


def _provenance(report) -> str:
    from can_tf.provenance import summary_lines

    lines = summary_lines(report.get("provenance"))
    if not lines:
        return _absent("no provenance record came with this model: its data and training are unknown.")
    items = "".join(f"<li>{_e(line[2:] if line.startswith('- ') else line)}</li>" for line in lines)
    return f"<ul>{items}</ul>"


def _interval(point, low, high, *, undefined="undefined") -> str:
    if point is None:
        return undefined
    text = f"{point:.3f}"
    if low is None or high is None:
        return f"{text} [CI n/a]"
    return f"{text} [{low:.3f}, {high:.3f}]"


def _reference_format(ref: Mapping):
    decimals = ref.get("decimals")
    if decimals is None:
        from can_tf.evaluation.reference_results import get_reference

        try:
            decimals = get_reference(ref["name"]).decimals
        except (KeyError, TypeError):
            decimals = 3
    return lambda value: f"{value:.{int(decimals)}f}"


def _results(report, pct) -> str:
    classes, mean = report["classes"], report["mean"]
    references = list(report.get("references") or [])
    per_class_refs = [r for r in references if r.get("per_class") is not None]
    mean_refs = [r for r in references if r.get("per_class") is None]
    show_unknown = any(row.get("unknown") for row in classes)
    header = ["Class", f"AUROC [{pct} CI]", f"AUPRC [{pct} CI]", "Positives", "Negatives"]
    if show_unknown:
        header.append("Unknown")
    header += [f"{r.get('name')} ({r.get('split')})" for r in per_class_refs]
    rows = []
    for row in classes:
        status = str(row.get("status", ""))
        reason = status[len("undefined: "):] if status.startswith("undefined: ") else ""
        cells = [
            _e(row.get("class")),
            _e(_interval(row.get("auroc"), row.get("auroc_low"), row.get("auroc_high"),
                         undefined=f"undefined ({reason})" if reason else "undefined")),
            _e(_interval(row.get("auprc"), row.get("auprc_low"), row.get("auprc_high"))),
            _e(row.get("positives")), _e(row.get("negatives")),
        ]
        if show_unknown:
            cells.append(_e(row.get("unknown")))
        for ref in per_class_refs:
            value = (ref.get("per_class") or {}).get(row.get("class"))
            cells.append("" if value is None else _e(_reference_format(ref)(value)))
        rows.append(_tr(cells, "flag" if reason else ""))
    n = mean.get("num_classes_averaged")
    mean_cells = [f"Mean ({_e(n)} of {len(classes)} classes)",
                  _e(_interval(mean.get("auroc"), mean.get("auroc_low"), mean.get("auroc_high"))),
                  _e(_interval(mean.get("auprc"), mean.get("auprc_low"), mean.get("auprc_high"))),
                  "", ""] + ([""] if show_unknown else [])
    mean_cells += ["" if r.get("mean") is None else _e(f"{r['mean']:.3f}") for r in per_class_refs]
    rows.append(_tr(mean_cells, "mean"))
    out = _table(header, rows)
    if mean_refs:
        out += "<h3>Published mean AUROC (no per-class values)</h3>"
        out += _table(["Result", "Mean AUROC", "Split", "Source"], text=(2, 3), rows=[
            _tr([_e(r.get("name")), _e(f"{r['mean']:.3f}" if r.get("mean") is not None else ""),
                 _e(r.get("split")), _e(r.get("source"))], text=(2, 3)) for r in mean_refs])
    if references:
        items = "".join(
            f"<li>{_e(r.get('name'))}: {_e(r.get('source'))}, "
            f"{'verified against it' if r.get('verified') else 'not verified'}; split: {_e(r.get('split'))}.</li>"
            for r in references)
        out += f"<p class=\"meta\">Sources:</p><ul class=\"meta\">{items}</ul>"
    return out


# ------------------------------------------------------------------------------------------------
# Figures, operating points, calibration, subgroups
# ------------------------------------------------------------------------------------------------
def _figure(figures, key, caption, absent: Optional[str] = None) -> str:
    value = figures.get(key)
    if value is None or not re.match(r"\s*(<\?xml|<!DOCTYPE|<svg)", value, re.IGNORECASE):
        return _absent(value or absent or _ABSENT[key])
    try:
        svg = inline_svg(value, f"{key}-")
    except EvaluationError as error:
        raise EvaluationError(f"figures[{key!r}]: {error}") from None
    return f'<figure id="figure-{key}">{svg}<figcaption>{_e(caption)}</figcaption></figure>'


def _operating_points(points) -> str:
    if not points:
        return _absent("no operating thresholds were applied: sensitivity and specificity not computed.")
    classes = points.get("classes")
    if not isinstance(classes, Mapping):
        raise EvaluationError("operating_points: missing key 'classes' (class name -> counts)")
    pct = f"{float(points.get('confidence', 0.95)) * 100:g}%"
    unit = "patient" if points.get("by_patient", True) else "image"
    header = ["Class", "Threshold", "TP", "FP", "TN", "FN", f"Sensitivity [{pct} CI]",
              f"Specificity [{pct} CI]", f"PPV [{pct} CI]", f"NPV [{pct} CI]"]
    rows = []
    for name, entry in classes.items():
        cells = [_e(name), _e(_number(entry.get("threshold")))]
        cells += [_e(entry.get(k)) for k in ("tp", "fp", "tn", "fn")]
        for metric in ("sensitivity", "specificity", "ppv", "npv"):
            value = entry.get(metric) or {}
            cells.append(_e(_interval(value.get("point"), value.get("low"), value.get("high"),
                                      undefined="n/a")))
        rows.append(_tr(cells))
    note = (f"A finding is called when the probability is at or above the class's threshold. "
            f"{pct} intervals from {_e(points.get('n_boot'))} {unit}-level bootstrap replicates "
            f"(seed {_e(points.get('seed'))}); n/a: no image to compute the rate from.")
    return f'<p class="meta">{note}</p>' + _table(header, rows)


def _calibration(calibration, figures) -> str:
    if calibration is None:
        reason = figures.get("calibration")
        if reason is None or reason.lstrip().startswith("<"):
            reason = "no validation split: calibration not fitted."
        return _absent(reason)
    classes = calibration.get("classes")
    if not isinstance(classes, Mapping):
        raise EvaluationError("calibration: missing key 'classes' (class name -> bins)")
    temperatures = calibration.get("temperatures")
    fitted = (temperatures or {}).get("temperatures") or {}
    after = temperatures is not None
    header = ["Class", "ECE before", "Brier before"]
    if after:
        header += ["ECE after", "Brier after", "Temperature"]
    rows = []
    for name, entry in classes.items():
        cells = [_e(name), _e(_number(entry.get("ece_before"))), _e(_number(entry.get("brier_before")))]
        if after:
            cells += [_e(_number(entry.get("ece_after"))), _e(_number(entry.get("brier_after"))),
                      _e(_number(fitted.get(name), 2))]
        rows.append(_tr(cells, "flag" if entry.get("ece_before") is None else ""))
    mean = calibration.get("mean") or {}
    mean_cells = [f"Mean ({_e(mean.get('num_classes'))} classes)", _e(_number(mean.get("ece_before"))), ""]
    if after:
        mean_cells += [_e(_number(mean.get("ece_after"))), "", ""]
    rows.append(_tr(mean_cells, "mean"))
    if after:
        scope = temperatures.get("scope", "")
        how = (f"Temperature scaling fitted on the validation split ({_e(scope)} scope), "
               f"applied to this split.")
    else:
        how = "No temperature was fitted: the probabilities are shown as the model gives them."
    intro = (f'<p class="meta">Expected calibration error (ECE) over {_e(calibration.get("n_bins"))} '
             f'{_e(calibration.get("binning", ""))} bins and Brier score; n/a: class undefined. {how}</p>')
    figure = _figure(figures, "calibration", "Reliability diagrams: fraction positive against mean "
                     "predicted probability per bin; grey bars are the images per bin (scaled).")
    return intro + _table(header, rows) + figure


def _subgroups(subgroups, figures, markdown) -> str:
    if subgroups is None:
        return _absent(figures.get("forest") if figures.get("forest") and not
                       figures["forest"].lstrip().startswith("<") else
                       "no subgroup metadata (sex, age, view): subgroup analysis not run.")
    rows = subgroups.get("rows")
    if not isinstance(rows, list):
        raise EvaluationError("subgroups: missing key 'rows' (a list of group rows)")
    pct = f"{float(subgroups.get('confidence', 0.95)) * 100:g}%"
    out = [f'<p class="meta">AUROC per group with {pct} patient-bootstrap intervals '
           f'({_e(subgroups.get("n_boot"))} replicates, seed {_e(subgroups.get("seed"))}); gap = group '
           f'minus overall. Groups with fewer than {_e(subgroups.get("min_positives"))} positives or '
           f'{_e(subgroups.get("min_negatives"))} negatives are flagged "too small" and must not be '
           f'read as findings; they are listed, never dropped.</p>']
    out.append(_figure(figures, "forest", "Subgroup AUROC (Mean over classes); hollow markers: "
                       "too small; crosses: undefined."))
    attributes = list(subgroups.get("attributes") or [])
    attributes += [a for a in dict.fromkeys(r.get("attribute") for r in rows) if a not in attributes]
    header = ["Group", "Class", "Images", "Patients", "Positives", "Negatives",
              f"AUROC [{pct} CI]", "Gap", "Status"]
    for attribute in attributes:
        mine = [r for r in rows if r.get("attribute") == attribute]
        if not mine:
            continue
        summary = [r for r in mine if r.get("class") == "Mean"] or mine
        rest = [r for r in mine if r not in summary]
        out.append(f"<h3>{_e(attribute)}</h3>"
                   + _table(header, [_subgroup_row(r) for r in summary], text=_SUBGROUP_TEXT))
        if rest:
            out.append(f"<details><summary>{len(rest)} per-class rows for {_e(attribute)}</summary>"
                       + _table(header, [_subgroup_row(r) for r in rest], text=_SUBGROUP_TEXT) + "</details>")
    if markdown:
        out.append(f"<details><summary>The same tables as Markdown</summary><pre>{_e(markdown)}</pre></details>")
    return "\n".join(out)


def _subgroup_row(row) -> str:
    auroc = row.get("auroc") or {}
    status = str(row.get("status", ""))
    gap = row.get("gap")
    cells = [_e(row.get("group")), _e(row.get("class")), _e(row.get("images")), _e(row.get("patients")),
             _e(row.get("positives")), _e(row.get("negatives")),
             _e(_interval(auroc.get("point"), auroc.get("low"), auroc.get("high"))),
             "" if gap is None else _e(f"{gap:+.3f}"), _e(status)]
    flagged = not (status == "ok" or status.startswith("mean over"))
    return _tr(cells, "flag" if flagged else "", text=_SUBGROUP_TEXT)


# ------------------------------------------------------------------------------------------------
# Gallery, notes, model card
# ------------------------------------------------------------------------------------------------
def _gallery(gallery) -> str:
    if not gallery:
        return _absent("no heat maps were made for this evaluation.")
    cards = []
    for i, item in enumerate(gallery):
        png = item.get("png") if isinstance(item, Mapping) else None
        if not isinstance(png, (bytes, bytearray)) or not bytes(png[:8]) == _PNG_MAGIC:
            raise EvaluationError(f"gallery[{i}]: 'png' must be the bytes of a PNG image")
        data = base64.b64encode(bytes(png)).decode("ascii")
        title, caption = item.get("title", ""), item.get("caption", "")
        cards.append(f'<figure><img src="data:image/png;base64,{data}" alt="{_e(title)}">'
                     f'<div class="title">{_e(title)}</div><figcaption>{_e(caption)}</figcaption></figure>')
    return f'<div class="gallery">{"".join(cards)}</div>'


def _notes(report) -> str:
    notes = report.get("notes") or []
    if not notes:
        return '<p class="meta">No caveats.</p>'
    return "<ul>" + "".join(f"<li>{_e(note)}</li>" for note in notes) + "</ul>"


def _model_card(card) -> str:
    if not card:
        return _absent("no model card was given.")
    out = []
    for key, title in (("model_details", "Model details"), ("considerations", "Considerations")):
        section = card.get(key)
        if not section:
            continue
        out.append(f"<h3>{_e(title)}</h3>")
        if isinstance(section, Mapping):
            items = "".join(f"<dt>{_e(_humanise(k))}</dt><dd>{_card_value(v)}</dd>"
                            for k, v in section.items() if v not in (None, "", [], {}))
            out.append(f"<dl>{items}</dl>")
        else:
            out.append(f"<p>{_card_value(section)}</p>")
    return "\n".join(out) or _absent("the model card has no model details or considerations.")


def _humanise(key) -> str:
    text = str(key).replace("_", " ")
    return text[:1].upper() + text[1:]


def _card_value(value) -> str:
    if isinstance(value, Mapping):
        # Model-card entries such as {"description": ...} or {"name": ..., "contact": ...}.
        for field in ("description", "name", "value"):
            if field in value and len(value) == 1:
                return _e(value[field])
        return "; ".join(f"{_e(_humanise(k))}: {_card_value(v)}" for k, v in value.items()
                         if v not in (None, "", [], {}))
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return _card_value(value[0])
        return "<ul>" + "".join(f"<li>{_card_value(v)}</li>" for v in value) + "</ul>"
    if isinstance(value, str) and "\n" in value:  # a Markdown list (the card's documentation)
        lines = [line.strip().removeprefix("- ") for line in value.splitlines() if line.strip()]
        return "<ul>" + "".join(f"<li>{_e(line)}</li>" for line in lines) + "</ul>"
    return _e(value)


# ------------------------------------------------------------------------------------------------
# Small pieces
# ------------------------------------------------------------------------------------------------
def _absent(reason: str) -> str:
    return f'<p class="absent">{_e(reason)}</p>'


def _number(value, decimals: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{decimals}f}"


def _tr(cells, css: str = "", text: Sequence[int] = ()) -> str:
    # Cells are already escaped; the ``text`` columns hold words, not numbers, and align left.
    tds = "".join(f'<td class="text">{c}</td>' if i in text else f"<td>{c}</td>"
                  for i, c in enumerate(cells))
    return f'<tr class="{css}">{tds}</tr>' if css else f"<tr>{tds}</tr>"


def _table(header, rows, text: Sequence[int] = ()) -> str:
    head = "".join(f'<th class="text">{_e(h)}</th>' if i in text else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(header))
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def render_comparison_html(comparison: Mapping, figures: Mapping[str, str] = {}) -> str:  # noqa: B006
    """A comparison (:meth:`Comparison.to_dict() <can_tf.evaluation.comparison.Comparison.to_dict>`)
    as one self-contained HTML page: per pair its conclusion, a difference plot and the table.

    ``figures`` maps ``"pair-<i>"`` to SVG text (or to the reason it is absent); a missing one is
    drawn here with :func:`~can_tf.evaluation.figures.difference_plot`.
    """
    from can_tf.evaluation.figures import difference_plot, figure_svg

    for key in ("pairs", "groups", "reference"):
        if key not in comparison:
            raise EvaluationError(f"comparison: missing key {key!r} (pass Comparison.to_dict())")
    confidence = float(comparison.get("confidence", 0.95))
    alpha = float(comparison.get("alpha", 0.05))
    pct = f"{confidence * 100:g}%"
    groups = ", ".join(f"{_e(n)} ({int(k)} run{'s' if int(k) != 1 else ''})"
                       for n, k in comparison["groups"].items())
    title = "Comparison: " + " vs ".join(comparison["groups"])
    body = [f"<header><h1>{_e(title)}</h1>",
            f'<p class="meta">{int(comparison.get("num_images", 0)):,} images of '
            f'{int(comparison.get("num_patients", 0)):,} patients; groups: {groups}; reference: '
            f'{_e(comparison["reference"])}; {int(comparison.get("n_boot", 0))} paired bootstrap '
            f"replicates.</p></header>"]
    for i, pair in enumerate(comparison["pairs"]):
        key = f"pair-{i}"
        svg = figures.get(key)
        if svg is None:
            svg = figure_svg(difference_plot(pair, confidence, alpha), id_prefix=f"{key}-")
        figure = (f'<figure id="figure-{key}">{inline_svg(svg, f"{key}-")}<figcaption>Per-class '
                  f"AUROC differences with {pct} paired patient-bootstrap intervals.</figcaption></figure>"
                  if re.match(r"\s*(<\?xml|<!DOCTYPE|<svg)", svg) else _absent(svg))
        rows = []
        for d in (*pair["classes"], pair["mean"]):
            is_mean = d is pair["mean"]
            diff = d.get("difference") or {}
            seeds = d.get("seeds") or {}
            seed_text = ("—" if seeds.get("low") is None else
                         f"{seeds['mean']:+.3f} [{seeds['low']:+.3f}, {seeds['high']:+.3f}]")
            cells = [_e(f"Mean ({pair['num_classes_averaged']} classes)" if is_mean else d["name"]),
                     _number(d.get("auroc_a")), _number(d.get("auroc_b")),
                     _e(_signed_interval(diff)), _p_text(d.get("p_value")),
                     _p_text(d.get("p_adjusted")), _p_text(d.get("q_value")), _e(seed_text)]
            rows.append(_tr(cells, "mean" if is_mean else ""))
        table = _table(["class", pair["a"], pair["b"], f"difference [{pct} CI]", "DeLong p",
                        "Holm p", "BH q", "seed interval"], rows)
        body.append(f'<section id="{key}"><h2>{_e(pair["a"])} vs {_e(pair["b"])}</h2>\n'
                    f'<p class="conclusion"><strong>{_e(pair["conclusion"])}</strong></p>\n'
                    f"{figure}\n{table}\n</section>")
    notes = [comparison.get("method", "")] + list(comparison.get("notes") or [])
    body.append('<section id="notes"><h2>Method and notes</h2><ul>'
                + "".join(f"<li>{_e(n)}</li>" for n in notes if n) + "</ul></section>")
    return _page(title, body)


def write_comparison_html(path: PathLike, comparison: Mapping, **kwargs) -> Path:
    """Writes :func:`render_comparison_html` to ``path`` atomically."""
    path = Path(path)
    atomic_write_text(path, render_comparison_html(comparison, **kwargs))
    return path


def _signed_interval(d: Mapping) -> str:
    from can_tf.evaluation.comparison import signed_interval_text

    return signed_interval_text(d.get("point"), d.get("low"), d.get("high"))


def _p_text(value) -> str:
    from can_tf.evaluation.comparison import p_text

    return _e(p_text(value))
