"""The peer benchmarks: PyTorch comparison (slow, needs torch) and the GPU check's CPU-only exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args, timeout):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_gpu_check_without_gpu_says_so_and_exits_0(tmp_path):
    from benchmarks.gpu_check import NO_GPU, nvidia_visible

    if nvidia_visible():
        pytest.skip("an NVIDIA device is visible: the check would measure")
    out = tmp_path / "gpu.json"
    result = _run(["benchmarks.gpu_check", "--seconds", "30", "--out", str(out)], timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [NO_GPU]
    assert not out.exists()  # nothing measured, nothing written


@pytest.mark.slow
def test_peer_pytorch_quick_reports_both_sides_and_ratios(tmp_path):
    from benchmarks.peer_pytorch import NOT_USED_BF16, torch_missing_reason

    reason = torch_missing_reason()
    if reason:
        if os.environ.get("CAN_TF_REQUIRE_TORCH") == "1":
            pytest.fail(f"CAN_TF_REQUIRE_TORCH=1 but {reason}")
        pytest.skip(reason)
    out = tmp_path / "peer.json"
    result = _run(["benchmarks.peer_pytorch", "--quick", "--repeats", "1", "--out", str(out)], timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["image_size"] == 64 and payload["quick"] is True

    # The same architecture on both sides: parameter counts (BN statistics included) within 0.5%.
    for kind in ("can", "baseline"):
        counts = payload["params"][kind]
        assert abs(counts["can_tf"] - counts["pytorch"]) / counts["pytorch"] < 0.005, counts

    rows = payload["rows"]
    assert {(r["model"], r["precision"]) for r in rows} == {
        (m, p) for m in ("CAN (paper)", "DenseNet-121 (chexnet)") for p in ("fp32", "low")}
    assert len(rows) == 12
    for row in rows:
        assert row["pytorch"] > 0
        if row["can_tf"] is None:  # can-tf has no low precision on this CPU: said so, no ratio
            assert row["precision"] == "low" and row["can_tf_precision"] == NOT_USED_BF16
            assert row["ratio"] is None
        else:
            assert row["ratio"] == pytest.approx(row["can_tf"] / row["pytorch"])
    fp32 = [r for r in rows if r["precision"] == "fp32"]
    assert all(r["can_tf"] is not None and r["can_tf_precision"] == "float32" for r in fp32)
    low_tf = {r["can_tf_precision"] for r in rows if r["precision"] == "low"}
    assert low_tf == ({"mixed_bfloat16"} if payload["native_bfloat16"] else {NOT_USED_BF16})
    assert payload["threads"]["torch_intra_op"] >= 1 and payload["torch"] and payload["tensorflow"]
    assert "can-tf / PyTorch" in payload["markdown"] and "avx512_bf16" in payload["markdown"]
