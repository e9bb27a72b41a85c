"""The self-contained HTML report: structure, escaping, nothing external, and a real browser's view."""

from __future__ import annotations

import html
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from browser_support import find_chromium, parse_console, render_in_browser, require_chromium
from can_tf.evaluation.figures import figure_svg, forest_plot, pr_grid, reliability_grid, roc_grid
from can_tf.evaluation.html_report import render_html, write_html
from can_tf.evaluation.metrics import EvaluationError
from can_tf.evaluation.report import EvaluationReport
from can_tf.provenance import PHANTOM_WARNING
from test_figures import synthetic_calibration, synthetic_evaluation, synthetic_subgroups

SVG_NAMESPACE = "http://www.w3.org/2000/svg"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}
SECTIONS = ["provenance", "results", "curves", "operating-points", "calibration", "subgroups",
            "gallery", "notes", "model-card"]


def phantom_provenance(phantom=True) -> dict:
    """A provenance record with the keys can_tf.provenance reads."""
    return {
        "format_version": 1,
        "data": {"source": None, "description": "built-in phantom data (synthetic images)",
                 "phantom": phantom, "split_counts": {"test": {"images": 900, "patients": 300}},
                 "filters": {"views": None, "one_per_patient": False}},
        "preset": "small",
        "model": {"kind": "can", "backbones": ["densenet121", "resnet50"], "weights": None,
                  "image_size": 64},
        "loss": "bce",
        "seeds": {"data": 0, "train": 1},
        "deterministic": True,
        "best_epoch": 3,
        "epochs_run": 5,
        "versions": {"can_tf": "0.1", "python": "3.11"},
    }


def operating_points_for(names) -> dict:
    classes = {}
    for i, name in enumerate(names):
        def rate(point):
            return {"point": point, "low": point - 0.05, "high": min(1.0, point + 0.04), "n_used": 200}

        classes[name] = {"threshold": 0.3 + 0.01 * i, "tp": 40 + i, "fp": 120, "tn": 700, "fn": 12,
                         "sensitivity": rate(0.77), "specificity": rate(0.85),
                         "ppv": rate(0.25), "npv": {"point": None, "low": None, "high": None, "n_used": 0}}
    return {"n_boot": 200, "seed": 0, "confidence": 0.95, "by_patient": True, "classes": classes}


def heat_map_png(seed: int, size: int = 96) -> bytes:
    """A small chest-film-like image with a heat map over it, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    film = 0.6 - 0.4 * ((xx - 0.5) ** 2 * 3 + (yy - 0.45) ** 2) + 0.05 * rng.random((size, size))
    cy, cx = rng.uniform(0.3, 0.7, size=2)
    heat = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / 0.01))
    fig = Figure(figsize=(2, 2), dpi=64)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(film, cmap="gray")
    ax.imshow(heat, cmap="jet", alpha=0.4 * heat)
    ax.set_axis_off()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


MODEL_CARD = {
    "model_details": {"name": "CAN-TF small", "overview": "Cross-attention network over two backbones.",
                      "version": {"name": "3"}, "owners": [{"name": "Imaging team", "contact": "none"}]},
    "considerations": {"use_cases": [{"description": "Research on multi-label chest X-ray classification."}],
                       "limitations": [{"description": "Trained on synthetic images; not for diagnosis."}]},
    "quantitative_analysis": {"ignored": True},
}


def build_inputs(num_classes=3, num_patients=150, n_boot=30, weird_name=True, figures=True):
    y, p, patients, names = synthetic_evaluation(num_patients=num_patients, num_classes=num_classes, seed=4)
    if weird_name:
        names = list(names)
        names[1] = "<b>Bold & \"quoted\"</b>"
    report = EvaluationReport(y, p, patients, names, n_boot=n_boot, model_name="can-small",
                              split_description="official split", references=["CheXNet 2017"],
                              provenance=phantom_provenance())
    calibration = synthetic_calibration(y, p, names)
    subgroups = synthetic_subgroups()
    svgs = {}
    if figures:
        svgs = {
            "roc": figure_svg(roc_grid(y, p, patients, names, thresholds=[0.3] * num_classes, n_boot=n_boot)),
            "pr": figure_svg(pr_grid(y, p, patients, names, thresholds=[0.3] * num_classes, n_boot=n_boot)),
            "calibration": figure_svg(reliability_grid(calibration)),
            "forest": figure_svg(forest_plot(subgroups)),
        }
    gallery = [{"title": f"Image {i} <{names[i % num_classes]}>", "caption": f"Grad-CAM, p = 0.{70 + i}",
                "png": heat_map_png(i)} for i in range(3)]
    return dict(report=report.to_dict(), figures=svgs, calibration=calibration, subgroups=subgroups,
                operating_points=operating_points_for(names), gallery=gallery, model_card=MODEL_CARD,
                subgroups_markdown="| Group | AUROC |\n|---|---|\n| F | 0.79 |")


class _Checker(HTMLParser):
    """Records tags, attributes and text, and checks that every opened element is closed."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.tags, self.errors, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def check_page(page: str) -> _Checker:
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert not checker.errors, checker.errors[:5]
    assert not checker.stack, checker.stack
    assert page.startswith("<!DOCTYPE html>")
    return checker


def assert_self_contained(page: str, checker: _Checker):
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls <= {SVG_NAMESPACE}, urls
    for tag, attrs in checker.tags:
        assert tag not in ("link", "iframe", "object", "embed", "base"), tag
        if tag == "script":
            assert "src" not in attrs
        for name, value in attrs.items():
            if name in ("src", "href") and value is not None:
                assert value.startswith("data:") or value.startswith("#"), (tag, name, value[:40])
    assert "@import" not in page and "url(http" not in page and "@font-face" not in page


@pytest.fixture(scope="module")
def full_inputs():
    return build_inputs()


def test_full_page_is_valid_self_contained_and_ordered(full_inputs):
    page = render_html(**full_inputs)
    checker = check_page(page)
    assert_self_contained(page, checker)
    ids = [attrs["id"] for tag, attrs in checker.tags if tag == "section"]
    assert ids == SECTIONS
    svgs = [attrs for tag, attrs in checker.tags if tag == "svg"]
    imgs = [attrs for tag, attrs in checker.tags if tag == "img"]
    assert len(svgs) == 4 and len(imgs) == 3
    assert all(img["src"].startswith("data:image/png;base64,") for img in imgs)
    # Element ids stay unique across the four inlined figures.
    all_ids = [attrs["id"] for _, attrs in checker.tags if "id" in attrs]
    assert len(all_ids) == len(set(all_ids))
    text = "".join(checker.text)
    # Per-class table: interval, reference column, Mean row.
    report = full_inputs["report"]
    row = report["classes"][0]
    assert f"{row['auroc']:.3f} [{row['auroc_low']:.3f}, {row['auroc_high']:.3f}]" in text
    assert "CheXNet 2017 (random 70/10/20 patient split)" in text
    assert f"Mean ({report['mean']['num_classes_averaged']} of 3 classes)" in text
    # Operating points, calibration, subgroups, gallery, notes, model card.
    assert "0.770 [0.720, 0.810]" in text and "n/a" in text
    atelectasis = full_inputs["calibration"]["classes"]["Atelectasis"]
    assert f"{atelectasis['ece_before']:.3f}" in text
    assert "too small: 3 positives, 39 negatives (needs 5 of each)" in text
    assert "| Group | AUROC |" in text  # the Markdown, folded
    assert "Grad-CAM, p = 0.71" in text
    for note in report["notes"]:
        assert note in text
    assert "CAN-TF small" in text and "Trained on synthetic images; not for diagnosis." in text
    assert "Quantitative analysis" not in text
    assert "Split: test (official split). " in text


def test_phantom_warning_is_on_top_and_escaping_holds(full_inputs):
    page = render_html(**full_inputs)
    warning = html.escape(PHANTOM_WARNING.strip("*"))
    assert page.count(warning) == 1
    assert page.index(warning) < page.index('<section id="provenance"')
    assert 'class="warning" role="alert"' in page
    # A class name with markup shows literally and never becomes a tag.
    assert "&lt;b&gt;Bold &amp; &quot;quoted&quot;&lt;/b&gt;" in page
    checker = check_page(page)
    assert "b" not in {tag for tag, _ in checker.tags}
    assert "<b>Bold & \"quoted\"</b>" in "".join(checker.text)

    real = build_inputs(figures=False)
    real["report"]["provenance"] = phantom_provenance(phantom=False)
    assert warning not in render_html(**real)


def test_missing_sections_say_why():
    inputs = build_inputs(figures=False)
    page = render_html(inputs["report"])
    text = "".join(check_page(page).text)
    assert "no validation split: calibration not fitted." in text
    assert "no subgroup metadata (sex, age, view): subgroup analysis not run." in text
    assert "no operating thresholds were applied" in text
    assert "no heat maps were made for this evaluation." in text
    assert "ROC figure not made for this evaluation." in text
    assert "no model card was given." in text
    ids = [attrs["id"] for tag, attrs in check_page(page).tags if tag == "section"]
    assert ids == SECTIONS  # every section stays, empty ones explain themselves
    # A non-SVG figure value is the caller's reason for its absence.
    page = render_html(inputs["report"], figures={"pr": "PR curves skipped: --no-pr was given"})
    assert "PR curves skipped: --no-pr was given" in page


def test_bad_inputs_name_the_field():
    inputs = build_inputs(figures=False)
    with pytest.raises(EvaluationError, match=r"gallery\[0\]: 'png' must be the bytes of a PNG"):
        render_html(inputs["report"], gallery=[{"title": "x", "caption": "", "png": b"GIF89a"}])
    with pytest.raises(EvaluationError, match=r"figures\['roc'\]: SVG refers to 'https://example.org/x.png'"):
        render_html(inputs["report"], figures={
            "roc": '<svg xmlns="http://www.w3.org/2000/svg"><image href="https://example.org/x.png"/></svg>'})
    with pytest.raises(EvaluationError, match=r"figures\['pr'\]: SVG holds a script"):
        render_html(inputs["report"], figures={"pr": "<svg><script>alert(1)</script></svg>"})
    with pytest.raises(EvaluationError, match="unknown key\\(s\\) 'heatmap'"):
        render_html(inputs["report"], figures={"heatmap": "<svg></svg>"})
    with pytest.raises(EvaluationError, match="report: missing key 'classes'"):
        render_html({"class_names": [], "mean": {}})


def test_write_html_is_atomic_and_returns_the_path(tmp_path, full_inputs):
    path = write_html(tmp_path / "report.html", **full_inputs)
    assert path.read_text(encoding="utf-8") == render_html(**full_inputs)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


# ------------------------------------------------------------------------------------------------
# Chromium
# ------------------------------------------------------------------------------------------------
CHROMIUM_156_STDERR = """\
[6027:6056:1202/030053.771238:ERROR:dbus/bus.cc:405] Failed to connect to the bus: no socket
[6225:6225:1202/030101.525425:INFO:CONSOLE:3] "err line 3", source: file:///tmp/t2.html (3)
[6225:6225:1202/030101.531706:INFO:CONSOLE:10] "Uncaught Error: thrown line 10", source: file:///tmp/t2.html (10)
[1:1:0101/000000.1:INFO:CONSOLE(7)] "Uncaught TypeError: x is undefined", source: file:///a.html (7)
"""


def test_parse_console_reads_chromium_log_lines():
    messages = parse_console(CHROMIUM_156_STDERR)
    assert [(m.message, m.source, m.line) for m in messages] == [
        ("err line 3", "file:///tmp/t2.html", 3),
        ("Uncaught Error: thrown line 10", "file:///tmp/t2.html", 10),
        ("Uncaught TypeError: x is undefined", "file:///a.html", 7),
    ]


@pytest.mark.slow
def test_browser_reports_console_errors_of_a_broken_page(tmp_path):
    require_chromium()
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><p>x</p>\n<script>\nconsole.error('deliberate');\n"
                    "setTimeout(function () { throw new Error('thrown on purpose'); }, 0);\n"
                    "</script></body></html>\n", encoding="utf-8")
    result = render_in_browser(page, tmp_path / "broken.png", width=400, height=300)
    messages = {m.message for m in result.console_errors}
    assert "deliberate" in messages
    assert "Uncaught Error: thrown on purpose" in messages


def _body_attributes(dom: str) -> dict:
    match = re.search(r"<body([^>]*)>", dom)
    assert match, "no <body> in the dumped DOM"
    return {k: html.unescape(v) for k, v in re.findall(r'([\w-]+)="([^"]*)"', match.group(1))}


@pytest.mark.slow
def test_full_report_renders_in_chromium(tmp_path):
    require_chromium()
    inputs = build_inputs(num_classes=14, num_patients=400, n_boot=50)
    path = write_html(tmp_path / "report.html", **inputs)
    width, height = 1280, 2400
    result = render_in_browser(path, tmp_path / "report.png", width=width, height=height)
    assert result.console_errors == []
    body = _body_attributes(result.dom)
    assert body["data-errors"] == ""
    assert body["data-figures-bad"] == ""
    assert body["data-figures-ok"] == "true"
    assert body["data-figure-count"] == "7"  # 4 SVG figures + 3 gallery images
    from PIL import Image

    with Image.open(result.screenshot) as image:
        assert image.size == (width, height)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    background = np.array([255, 255, 255])
    assert (np.abs(pixels.astype(int) - background).sum(axis=1) > 30).mean() > 0.01
    assert len(np.unique(pixels, axis=0)) > 50


def test_find_chromium_returns_an_executable_or_none():
    import os

    path = find_chromium()
    assert path is None or (re.search(r"chrom", path) and os.access(path, os.X_OK))
