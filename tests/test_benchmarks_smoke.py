"""Smoke tests of the benchmark suite: its pieces run on tiny inputs and write valid results.

No timing is asserted (the machines are shared and noisy); the tests check that measurements are
made, are positive and finite, and land in well-formed JSON and Markdown.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `benchmarks` is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import common  # noqa: E402


def _strict_json(path: Path) -> dict:
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_linear_fit_recovers_a_line_and_its_r2():
    # y = 1 + 2x exactly: slope 2, intercept 1, R^2 = 1.
    fit = common.linear_fit([64, 128, 256], [129, 257, 513])
    assert fit["slope"] == pytest.approx(2.0)
    assert fit["intercept"] == pytest.approx(1.0)
    assert fit["r2"] == pytest.approx(1.0)
    # y = [0, 1, 0] over x = [0, 1, 2]: best line is flat at 1/3 (slope 0), so R^2 = 0.
    assert common.linear_fit([0, 1, 2], [0, 1, 0])["r2"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="two or more"):
        common.linear_fit([1], [1])


def test_median_time_and_summary():
    calls = []
    timing = common.median_time(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5  # 2 warm-up + 3 timed
    assert timing["repeats"] == 3
    assert 0 <= timing["min_s"] <= timing["median_s"] <= timing["max_s"]
    assert common.summarize([3.0, 1.0, 2.0])["median_s"] == 2.0
    assert common.ratio(6.0, 3.0) == 2.0
    assert common.ratio(1.0, None) is None and common.ratio(1.0, 0.0) is None


def test_peak_rss_reads_proc_and_grows_with_an_allocation():
    if not Path("/proc/self/status").is_file():
        pytest.skip("no /proc on this system")
    common.reset_peak_rss()
    before = common.peak_rss_mb()
    block = bytearray(64 * 2 ** 20)  # 64 MB, touched so it is resident
    block[:: 4096] = b"\x01" * len(block[:: 4096])
    after = common.peak_rss_mb()
    assert before > 0
    assert after >= before + 48  # at least most of the 64 MB shows up in the peak
    del block


def test_machine_info_describes_cpu_and_versions():
    info = common.machine_info()
    assert info["cpu"]["usable_cores"] >= 1
    assert set(common.CPU_FLAGS) == set(info["cpu"]["flags"])
    assert info["cpu"]["native_bfloat16"] == (info["cpu"]["flags"]["avx512_bf16"] or info["cpu"]["flags"]["amx_bf16"])
    import keras
    import tensorflow as tf

    assert info["tensorflow"] == tf.__version__ and info["keras"] == keras.__version__
    assert "usable cores" in common.describe_machine(info)


def test_write_results_gives_strict_json_and_a_markdown_table(tmp_path):
    machine = common.machine_info()
    ok = common.Section("a", "Section A", "a note", [("name", "name"), ("v", "value")],
                        [{"name": "x|y", "v": 1234.5}, {"name": "nan", "v": float("nan")}], seconds=0.1)
    failed = common.Section("b", "Section B", error="RuntimeError: broken")
    json_path, md_path = common.write_results(tmp_path, machine, [ok, failed], command="cmd", mode="quick")
    data = _strict_json(json_path)
    assert [s["key"] for s in data["sections"]] == ["a", "b"]
    assert data["sections"][0]["rows"][1]["v"] is None  # NaN written as null
    assert data["sections"][1]["error"] == "RuntimeError: broken"
    md = md_path.read_text()
    assert "| name | value |" in md
    assert "| x\\|y | 1,234 |" in md  # pipe escaped, thousands separated
    assert "**Not measured:** RuntimeError: broken" in md


def test_format_value_for_tables():
    assert [common.format_value(v) for v in (None, True, 12345, 2835.4, 12.44, 0.0214, 6e-08, 0.0)] == [
        "–", "yes", "12,345", "2,835", "12.4", "0.0214", "6.0e-08", "0"]


def test_peak_flops_counts_two_n_cubed():
    from benchmarks.peak_flops import matmul_gflops

    result = matmul_gflops(size=128, repeats=2, warmup=1)
    assert result["gflop_per_product"] == pytest.approx(2 * 128 ** 3 / 1e9)
    assert result["gflops"] == pytest.approx(result["gflop_per_product"] / result["median_s"])
    assert math.isfinite(result["gflops"]) and result["gflops"] > 0
    assert result["gflops_best"] == pytest.approx(result["gflop_per_product"] / result["min_s"])
    assert result["gflops_best"] >= result["gflops"]


def test_forward_flops_match_the_arithmetic_of_known_layers():
    import keras

    from benchmarks.model_cost import forward_flops

    # Dense 10 -> 5: a 10x5 matrix product (2 FLOPs a multiply-add) plus 5 bias additions.
    dense = keras.Sequential([keras.Input((10,)), keras.layers.Dense(5)])
    assert forward_flops(dense) == 2 * 10 * 5 + 5
    # 3x3 convolution, 3 -> 4 channels, "same" padding on 8x8: 2 x (8*8 positions) x (3*3*3) x 4.
    conv = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, padding="same", use_bias=False)])
    assert forward_flops(conv) == 2 * 8 * 8 * 3 * 3 * 3 * 4


def _check_suite_results(out: Path, sections) -> dict:
    data = _strict_json(out / "results.json")
    by_key = {s["key"]: s for s in data["sections"]}
    assert list(by_key) == list(sections)
    for key, section in by_key.items():
        assert section["error"] is None, f"section {key} failed: {section['error']}\n{section['extra']}"
        assert section["rows"], f"section {key} has no rows"
    md = (out / "results.md").read_text()
    for section in by_key.values():
        assert f"## {section['title']}" in md
    return by_key


def test_quick_suite_peak_and_pipeline(tmp_path, chestxray14_dir):
    from benchmarks.run import run_suite

    run_suite(tmp_path, quick=True, sections=("peak", "pipeline"), data_dir=chestxray14_dir)
    sections = _check_suite_results(tmp_path, ("peak", "pipeline"))
    peak_rows = sections["peak"]["rows"]
    assert [(r["when"], r["dtype"]) for r in peak_rows] == [("start", "float32"), ("start", "bfloat16"),
                                                           ("end", "float32")]
    assert sections["peak"]["extra"]["peak_gflops"] == max(peak_rows[0]["gflops_best"], peak_rows[2]["gflops_best"])
    sizes = [r["image_size"] for r in sections["pipeline"]["rows"]]
    assert sizes == [64, 128]
    for row in sections["pipeline"]["rows"]:
        assert row["cold_images_per_s"] > 0 and row["cached_images_per_s"] > 0
        assert row["cached_vs_cold"] == pytest.approx(row["cached_images_per_s"] / row["cold_images_per_s"])
    assert sections["pipeline"]["extra"]["raw"]["images"] == 24  # the quick plan's subset of real PNGs


@pytest.mark.slow
def test_quick_suite_end_to_end(tmp_path, chestxray14_dir):
    from benchmarks.run import SECTIONS, main

    assert main(["--quick", "--out", str(tmp_path), "--data", str(chestxray14_dir)]) == 0
    sections = _check_suite_results(tmp_path, SECTIONS)
    training = sections["training"]["rows"]
    assert [r["kind"] for r in training] == ["can", "baseline"]
    for row in training:
        assert row["images_per_s"] > 0 and row["forward_gflop"] > 0 and row["peak_rss_mb"] > 0
        assert row["achieved_gflops"] == pytest.approx(3 * row["forward_gflop"] * row["images_per_s"])
    assert training[-1]["cost_vs_baseline"] == pytest.approx(1.0)
    assert 0 < training[0]["attention_share"] < 1 and training[-1]["attention_share"] is None
    assert [r["batch_size"] for r in sections["inference"]["rows"]] == [1, 8]
    levers = sections["levers"]["rows"]
    assert levers[0]["speedup"] == pytest.approx(1.0)
    assert any(r.get("xla") for r in levers)
    (bf16,) = [r for r in levers if r["model"].startswith("mixed_bfloat16")]
    if common.cpu_info()["native_bfloat16"]:
        assert bf16["precision"] == "mixed_bfloat16" and bf16["speedup"] > 0
    else:  # emulated bfloat16 is not worth minutes of measuring: the row says why it was skipped
        assert bf16["error"].startswith("skipped") and "step_s" not in bf16
    assert 0 < training[0]["attention_time_share"] < 1 and training[-1]["attention_time_share"] is None
    export = {r["variant"]: r for r in sections["export"]["rows"]}
    assert export["TFLite int8"]["xnnpack"] and not export["TFLite int8 (XNNPACK off)"]["xnnpack"]
    assert export["TFLite int8"]["xnnpack_speedup"] == pytest.approx(
        export["TFLite int8 (XNNPACK off)"]["ms"] / export["TFLite int8"]["ms"])
    fits = sections["scaling"]["extra"]
    assert 0.0 <= fits["fit_images"]["r2"] <= 1.0 and fits["fit_images"]["slope"] > 0
    assert {r["sweep"] for r in sections["scaling"]["rows"]} == {"images", "pixels"}
