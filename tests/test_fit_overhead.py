"""A `fit` call costs its steps: no input pipeline waits on tf.data's autotuning thread at teardown.

With autotuning on, destroying a tf.data iterator waited for the tuning thread's next wake-up
(0.01 x (2^k - 1) s after the iterator was made), so each `fit` call and each validation pass was
rounded up to 1.27, 2.55, 5.11, 10.23, 20.47 s. The cause is checked here without timing: every
pipeline `can_tf.data.pipeline.make_dataset` builds, and what the trainer and the benchmarks make
of it, has autotuning off and fixed parallelism. The arithmetic of the benchmark's check
(`benchmarks.fit_overhead`) is checked on hand-computed calls; the measurement itself is a slow
test that asserts no timing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `benchmarks` is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import fit_overhead  # noqa: E402
from benchmarks.fit_overhead import FitCall, overhead_rows, summary  # noqa: E402

tf = pytest.importorskip("tensorflow")

from can_tf.data import pipeline  # noqa: E402

CLASSES = ["a", "b"]


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return pd.DataFrame({"path": paths, "a": [0, 1] * 3, "b": [1, 0, 0, 1, np.nan, 0]}, dtype=object).astype(
        {"a": np.float32, "b": np.float32})


def _dataset_ops(ds) -> list:
    """The op nodes of a dataset's graph (what its iterator will run)."""
    from tensorflow.core.framework import graph_pb2

    graph = graph_pb2.GraphDef()
    graph.ParseFromString(ds._as_serialized_graph().numpy())
    return list(graph.node)


@pytest.mark.parametrize("training,augment,cache", [(True, True, "memory"), (True, False, "none"),
                                                    (False, False, "memory"), (False, False, "none")])
def test_every_pipeline_runs_without_autotuning(tiny_table, training, augment, cache):
    ds = pipeline.make_dataset(tiny_table, CLASSES, 16, 2, training=training, augment=augment, cache=cache)
    options = ds.options()
    assert options.autotune.enabled is False
    assert options.deterministic is (not training)  # training: data.deterministic=False by default
    # No stage is left to the tuner: an AUTOTUNE (-1) parallelism or buffer would fall back to a
    # default chosen at run time instead of the module's documented values.
    parallel = [n for n in _dataset_ops(ds) if n.op.startswith("ParallelMapDataset")]
    assert len(parallel) == (2 if training and augment else 1)
    consts = {n.name: n for n in _dataset_ops(ds) if n.op == "Const"}
    for node in parallel:
        size = consts[node.input[-1].split(":")[0]].attr["value"].tensor.int64_val
        assert list(size) == [pipeline.parallel_calls()]
    prefetch = [n for n in _dataset_ops(ds) if n.op == "PrefetchDataset"]
    assert len(prefetch) == 1
    assert list(consts[prefetch[0].input[1].split(":")[0]].attr["value"].tensor.int64_val) == [
        pipeline.PREFETCH_BATCHES]


def test_the_trainers_input_keeps_autotuning_off(tiny_table):
    """The trainer maps labels onto every output, repeats and skips; options flow through all three."""
    from can_tf.training.trainer import labels_for_outputs

    ds = pipeline.make_dataset(tiny_table, CLASSES, 16, 2, training=True, augment=True, cache="memory",
                               drop_remainder=True)
    ds = labels_for_outputs(ds, ["fused", "branch_1"]).repeat().skip(3)
    assert ds.options().autotune.enabled is False
    images, labels = next(iter(ds))
    assert images.shape == (2, 16, 16, 1) and set(labels) == {"fused", "branch_1"}


def test_pipeline_options_and_parallel_calls():
    assert pipeline.pipeline_options(True).deterministic is True
    assert pipeline.pipeline_options(False).deterministic is False
    assert pipeline.pipeline_options(False).autotune.enabled is False
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert pipeline.parallel_calls() == expected


def test_fit_call_overhead_arithmetic():
    # 3 steps of 1 s in a 3.12 s call: 0.12 s, 4% over -> passes the 5% check.
    ok = FitCall(steps=3, wall_s=3.12, step_s=(1.0, 1.0, 1.0))
    assert ok.steps_s == pytest.approx(3.0)
    assert ok.overhead_s == pytest.approx(0.12)
    assert ok.overhead == pytest.approx(0.04)
    assert ok.ok
    # The reported stall: 5 steps of 1.43 s (7.15 s) in a 10.23 s call -> 3.08 s, 43% over.
    stalled = FitCall(steps=5, wall_s=10.23, step_s=(1.43,) * 5)
    assert stalled.overhead == pytest.approx(10.23 / 7.15 - 1)
    assert not stalled.ok
    # Tiny steps: 1 step of 0.02 s in 0.06 s is 200% over but 0.04 s in all, under the fixed cost.
    tiny = FitCall(steps=1, wall_s=0.06, step_s=(0.02,))
    assert tiny.overhead == pytest.approx(2.0) and tiny.ok
    # ... but 0.15 s beyond 0.02 s of steps is a stall.
    assert not FitCall(steps=1, wall_s=0.17, step_s=(0.02,)).ok


def test_overhead_rows_and_summary():
    calls = [FitCall(1, 1.02, (1.0,)), FitCall(3, 5.11, (1.0, 1.0, 1.0))]
    rows = overhead_rows(calls)
    assert [r["steps"] for r in rows] == [1, 3]
    assert rows[1]["step_s_mean"] == pytest.approx(1.0)
    assert rows[1]["overhead_s"] == pytest.approx(2.11)
    assert [r["ok"] for r in rows] == [True, False]
    total = summary(calls)
    assert total["calls"] == 2 and total["failed"] == 1 and total["ok"] is False
    assert total["max_overhead"] == pytest.approx(5.11 / 3 - 1)
    assert summary([])["ok"] is True and summary([])["max_overhead"] is None


def test_step_counts_round_up_to_steps_per_execution():
    class Run:  # the two attributes measure_fit_overhead reads, with a model that records its calls
        class config:
            class train:
                steps_per_execution = 4

        class model:
            calls = []

            @classmethod
            def fit(cls, dataset, *, steps_per_epoch, callbacks, **kwargs):
                cls.calls.append(steps_per_epoch)

        dataset = None

    calls = fit_overhead.measure_fit_overhead(Run, (1, 3, 5, 12), calls=2)
    assert Run.model.calls == [4, 4, 8, 12] * 2
    assert [c.steps for c in calls] == [4, 4, 8, 12] * 2


def test_the_suite_runs_the_check_after_training():
    from benchmarks.run import FULL, QUICK, SECTIONS, Suite

    assert SECTIONS.index("training") < SECTIONS.index("fit_overhead") < SECTIONS.index("levers")
    assert hasattr(Suite, "section_fit_overhead")
    assert FULL.overhead_steps == (1, 3, 5, 12) and QUICK.overhead_steps == (1, 3, 5, 12)


@pytest.mark.slow
def test_fit_overhead_section_reports_every_call(tmp_path, chestxray14_dir):
    """The quick suite's section: one row per call, finite numbers (no timing asserted)."""
    import json
    import math

    from benchmarks.run import QUICK, run_suite

    json_path, _ = run_suite(tmp_path, quick=True, sections=("fit_overhead",), data_dir=chestxray14_dir)
    section = json.loads(Path(json_path).read_text())["sections"][0]
    assert section["error"] is None
    assert [r["steps"] for r in section["rows"]] == list(QUICK.overhead_steps) * QUICK.overhead_calls
    for row in section["rows"]:
        assert math.isfinite(row["overhead"]) and row["steps_s"] > 0 and isinstance(row["ok"], bool)
    assert section["extra"]["summary"]["calls"] == len(section["rows"])
