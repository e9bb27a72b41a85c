"""The benchmark suite's one entry point: every measurement, one JSON file and one Markdown table.

Usage:
    python -m benchmarks.run                       # full suite, ~16 min on 2 CPU cores
    python -m benchmarks.run --quick               # tiny models, few steps: a smoke test
    python -m benchmarks.run --out DIR             # default benchmarks/results/ (git-ignored)
    python -m benchmarks.run --sections peak training

Sections (each runs even if an earlier one failed; a failure is recorded in the results):

- ``peak``: the machine's peak GFLOP/s from a large float32 matrix product (:mod:`benchmarks.peak_flops`).
- ``pipeline``: tf.data images/s on real PNGs, cold and cached, 224 and 512 px
  (:mod:`benchmarks.pipeline_throughput`).
- ``training``: ``model.fit`` images/s of the paper, hetero and CheXNet presets at 224 px, batch 8,
  weights=None (:mod:`benchmarks.train_throughput`), with trace time, peak memory, FLOPs per image
  (:mod:`benchmarks.model_cost`), achieved GFLOP/s against the peak, the CAN/baseline cost ratio,
  the cross-attention's FLOP share, and the input pipeline's headroom over what training consumes.
- ``fit_overhead``: each ``fit`` call's wall time against the sum of its train steps, at 1, 3, 5
  and 12 steps per epoch, on the training section's baseline model (:mod:`benchmarks.fit_overhead`);
  a call passes within 5% of its steps (or 0.1 s): what the few-step epochs above time is the
  maths, not a stall of the call around it.
- ``levers``: XLA (and, where they can help, mixed_bfloat16 on CPUs with native bfloat16 and
  mixed_float16 on a GPU) against the default train step, side by side on the CheXNet baseline (its
  default variant is the training section's run); ``--quick`` also tries ``steps_per_execution`` 4.
- ``inference``: Keras images/s and latency at batch 1, 8 and 32.
- ``scaling``: seconds per epoch against data set size and image size, with linear fits
  (:mod:`benchmarks.scaling`).
- ``export``: single-image latency and size of the Keras model, the SavedModel signatures and each
  TFLite variant, with and without the XNNPACK delegate (:mod:`benchmarks.export_latency`); last, as its conversions take longest.

Results are rewritten after every section, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "chestxray14"
SECTIONS = ("peak", "pipeline", "training", "fit_overhead", "levers", "inference", "scaling", "export")

# Train-step levers: key -> (row label, config overrides, where it can help). A lever is tried only
# where it can help; elsewhere its row says why it was skipped (a bfloat16 step emulated on a CPU
# without native bfloat16 ran at 0.11x the float32 step here, and costs minutes to measure).
LEVERS = {
    "xla": ("XLA (train.xla=true)", ["train.xla=true"], "any"),
    "bfloat16": ("mixed_bfloat16 (train.mixed_precision=bfloat16)", ["train.mixed_precision=bfloat16"],
                 "native_bfloat16"),
    "float16": ("mixed_float16 (train.mixed_precision=float16)", ["train.mixed_precision=float16"], "gpu"),
    "steps_per_execution": ("steps_per_execution 4", ["train.steps_per_execution=4"], "any"),
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much each section measures; :data:`FULL` and :data:`QUICK` are the two plans."""

    mode: str
    peak_size: int
    peak_repeats: int
    pipeline_images: Optional[int]  # None: every image in the folder
    pipeline_sizes: tuple
    pipeline_repeats: int
    train_presets: tuple  # (preset, row label); the last one is the baseline of the ratios
    train_image_size: int
    train_batch: int
    train_steps: int
    train_repeats: int
    overhead_steps: tuple  # steps per epoch of the fit_overhead section's calls
    overhead_calls: int  # fit calls per step count
    lever_preset: str  # the model the levers are tried on: a preset ...
    lever_backbones: Optional[tuple]  # ... with these backbones (None: the preset's own)
    lever_image_size: int
    lever_steps: int
    lever_variants: tuple  # keys of LEVERS, tried against the default train step
    inference_batches: tuple
    inference_repeats: int
    export_args: tuple
    scaling_backbone: str
    scaling_sizes: tuple
    scaling_image_sizes: tuple
    scaling_repeats: int


FULL = Plan(
    mode="full", peak_size=2048, peak_repeats=3,
    pipeline_images=None, pipeline_sizes=(224, 512), pipeline_repeats=3,
    train_presets=(("paper", "CAN paper (DenseNet-121 x2)"), ("hetero", "CAN hetero (DenseNet-121 + ResNet-50)"),
                   ("chexnet", "CheXNet baseline (DenseNet-121)")),
    train_image_size=224, train_batch=8, train_steps=1, train_repeats=3,
    overhead_steps=(1, 3, 5, 12), overhead_calls=2,
    lever_preset="chexnet", lever_backbones=None, lever_image_size=224, lever_steps=1,
    lever_variants=("xla", "bfloat16", "float16"),
    inference_batches=(1, 8, 32), inference_repeats=2,
    export_args=("--preset", "chexnet", "--image-size", "224", "--calibration", "8", "--runs", "10",
                 "--warmup", "2"),
    scaling_backbone="mobilenetv3small", scaling_sizes=(32, 64, 128), scaling_image_sizes=(224, 320, 512),
    scaling_repeats=2,
)

QUICK = Plan(
    mode="quick", peak_size=512, peak_repeats=2,
    pipeline_images=24, pipeline_sizes=(64, 128), pipeline_repeats=1,
    train_presets=(("small", "CAN small (tiny x2)"), ("small-baseline", "baseline small (tiny)")),
    train_image_size=64, train_batch=8, train_steps=1, train_repeats=2,
    overhead_steps=(1, 3, 5, 12), overhead_calls=1,
    lever_preset="small-baseline", lever_backbones=None, lever_image_size=64, lever_steps=1,
    lever_variants=("xla", "bfloat16", "float16", "steps_per_execution"),
    inference_batches=(1, 8), inference_repeats=2,
    export_args=("--preset", "small", "--calibration", "8", "--runs", "3", "--warmup", "1"),
    scaling_backbone="tiny", scaling_sizes=(8, 16, 24), scaling_image_sizes=(32, 48, 64),
    scaling_repeats=1,
)


class Suite:
    """Runs the sections of a plan in order, sharing what later sections need (peak, pipeline, models)."""

    def __init__(self, plan: Plan, out_dir, data_dir: Optional[Path], command: str):
        from benchmarks.common import machine_info

        self.plan, self.out_dir, self.command = plan, Path(out_dir), command
        self.data_dir = data_dir if data_dir is not None and (data_dir / "images").is_dir() else None
        self.machine = machine_info()
        self.sections: list = []
        self.peak_gflops: Optional[float] = None
        self.pipeline_rows: list = []
        self.training_rows: list = []
        self.baseline_model = None
        self.baseline_run = None  # the training section's baseline, still compiled and traced
        self._tmp = tempfile.TemporaryDirectory(prefix="can-tf-bench-")
        self._table = None
        self.start = time.perf_counter()

    # ---- shared inputs ----------------------------------------------------------------------------
    def table(self, limit: Optional[int] = None):
        """The real NIH sample's table (phantom data where it is absent), first ``limit`` rows."""
        from benchmarks.train_throughput import load_images_table

        if self._table is None:
            self._table = load_images_table(None if self.data_dir is None else str(self.data_dir),
                                            limit=None if self.data_dir else 60)
        df, class_names = self._table
        if limit is not None and len(df) < limit:
            raise ValueError(f"{len(df)} images available, {limit} needed")
        return (df if limit is None else df.iloc[:limit].reset_index(drop=True)), class_names

    def image_folder(self) -> Path:
        """A folder of real PNGs: the NIH ``images/`` (or, in quick mode, links to a few of them)."""
        df, _ = self.table()
        paths = [Path(p) for p in df["path"]]
        if self.plan.pipeline_images is None and self.data_dir is not None:
            return self.data_dir / "images"
        folder = Path(self._tmp.name) / "images"
        if not folder.is_dir():
            folder.mkdir()
            for path in paths[: self.plan.pipeline_images or len(paths)]:
                (folder / path.name).symlink_to(path)  # links, not copies of the images
        return folder

    def sample_images(self, size: int, count: int = 8):
        from can_tf.export.source import preprocess_files

        df, _ = self.table(count)
        return preprocess_files(list(df["path"]), size)

    # ---- running ----------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.0f} s] {message}", file=sys.stderr, flush=True)

    def run(self, names) -> None:
        for name in names:
            section = getattr(self, f"section_{name}")
            self.log(f"{name} ...")
            start = time.perf_counter()
            try:
                result = section()
            except Exception as e:  # one broken measurement must not lose the others
                from benchmarks.common import Section

                result = Section(name, name, error=f"{type(e).__name__}: {e}")
                result.extra["traceback"] = traceback.format_exc()
                print(result.extra["traceback"], file=sys.stderr, flush=True)
            result.seconds = time.perf_counter() - start
            self.sections.append(result)
            self.write()

    def write(self):
        from benchmarks.common import write_results

        return write_results(self.out_dir, self.machine, self.sections, command=self.command,
                             mode=self.plan.mode, total_seconds=time.perf_counter() - self.start)

    # ---- sections ---------------------------------------------------------------------------------
    def section_peak(self):
        from benchmarks.common import Section
        from benchmarks.peak_flops import matmul_gflops

        rows = [matmul_gflops(self.plan.peak_size, dtype, self.plan.peak_repeats) for dtype in ("float32", "bfloat16")]
        for row in rows:
            row["when"] = "start"
            row["vs_float32"] = row["gflops_best"] / rows[0]["gflops_best"]
        self.peak_gflops = rows[0]["gflops_best"]
        cpu = self.machine["cpu"]
        note = (f"Peak = GFLOP/s of a {self.plan.peak_size}x{self.plan.peak_size} float32 "
                f"`tf.linalg.matmul` on all cores (2 n^3 FLOPs a product), the fastest of "
                f"{self.plan.peak_repeats} products (other programs' load only ever slows one down), "
                f"measured at the start and again at the end of the run; the higher is the peak. It is "
                f"the best-tuned kernel TensorFlow has, so a practical ceiling for convolutions; every "
                f"'of peak' below is achieved GFLOP/s / this peak. The bfloat16 row shows whether "
                f"bfloat16 is native here: "
                f"this CPU has avx512_bf16 {'yes' if cpu['flags']['avx512_bf16'] else 'no'}, amx_bf16 "
                f"{'yes' if cpu['flags']['amx_bf16'] else 'no'}.")
        return Section("peak", "Machine peak (large matmul)", note,
                       [("when", "when"), ("dtype", "dtype"), ("size", "n"), ("gflops_best", "GFLOP/s (best)"),
                        ("gflops", "GFLOP/s (median)"), ("vs_float32", "x float32")], rows)

    def finish_peak(self) -> None:
        """Measures the peak again at the end; the higher one becomes the peak of every 'of peak'."""
        from benchmarks.peak_flops import matmul_gflops

        section = next((s for s in self.sections if s.key == "peak" and not s.error), None)
        if section is None or len(self.sections) < 2:
            return
        row = matmul_gflops(self.plan.peak_size, "float32", self.plan.peak_repeats)
        row["when"] = "end"
        row["vs_float32"] = 1.0
        section.rows.append(row)
        self.peak_gflops = max(r["gflops_best"] for r in section.rows if r["dtype"] == "float32")
        section.extra["peak_gflops"] = self.peak_gflops
        for other in self.sections:
            for r in other.rows:
                if r.get("achieved_gflops") is not None:
                    r["peak_fraction"] = r["achieved_gflops"] / self.peak_gflops

    def section_pipeline(self):
        from benchmarks.common import Section
        from benchmarks.pipeline_throughput import main as pipeline_main

        folder = self.image_folder()
        result = pipeline_main(["--images", str(folder), "--sizes", *map(str, self.plan.pipeline_sizes),
                                "--repeats", str(self.plan.pipeline_repeats)])
        rows = []
        for r in result["results"]:
            rows.append({**r, "cached_vs_cold": r["cached_images_per_s"] / r["cold_images_per_s"]})
        self.pipeline_rows = rows
        note = (f"{result['images']} real PNGs ({folder}), batch {result['batch_size']}, "
                f"`make_dataset(training=False)`: cold = read + decode + resize every epoch; cached = the "
                f"second epoch over a memory cache of decoded images (what training pays after epoch 1). "
                f"Up-front file check: {result['scan_images_per_s']:,.0f} images/s.")
        return Section("pipeline", "Input pipeline (tf.data) images/s", note,
                       [("image_size", "px"), ("cold_images_per_s", "cold img/s"),
                        ("cached_images_per_s", "cached img/s"), ("cached_vs_cold", "cached / cold")],
                       rows, extra={"raw": result})

    def _config(self, preset: str, size: int, *extra):
        from can_tf.config import RunConfig

        return RunConfig.from_preset(preset, overrides=[
            "model.weights=null", f"data.image_size={size}", f"train.batch_size={self.plan.train_batch}", *extra])

    def section_training(self):
        from benchmarks.common import Section, ratio
        from benchmarks.train_throughput import TrainingRun, measure_interleaved

        plan = self.plan
        df, class_names = self.table(plan.train_batch)
        runs = []
        try:
            for preset, label in plan.train_presets:
                runs.append(TrainingRun(self._config(preset, plan.train_image_size), df, class_names,
                                        steps=plan.train_steps, label=label))
                self.log(f"  {label}: warmed up (first epoch {runs[-1].first_epoch_s:.0f} s)")
            # Timed in turns, so load changes on a shared machine hit every model alike.
            measure_interleaved(runs, plan.train_repeats)
            rows = [run.row(peak_gflops=self.peak_gflops) for run in runs]
            # The baseline stays: the levers reuse it as their default variant (no second trace)
            # and the inference timings use its model.
            self.baseline_run, self.baseline_model = runs[-1], runs[-1].model
        finally:
            for run in runs[:-1]:
                run.close()
        self.training_rows = rows
        base = rows[-1]
        cached = {r["image_size"]: r for r in self.pipeline_rows}.get(plan.train_image_size)
        for row in rows:
            row["cost_vs_baseline"] = ratio(row["step_s"], base["step_s"])
            row["flops_vs_baseline"] = ratio(row.get("forward_gflop"), base.get("forward_gflop"))
            if cached:
                row["pipeline_headroom_cached"] = cached["cached_images_per_s"] / row["images_per_s"]
                row["pipeline_headroom_cold"] = cached["cold_images_per_s"] / row["images_per_s"]
        can = rows[0]
        extra_cost = ratio(can["step_s"] - base["step_s"], base["step_s"])
        note = (
            f"`model.fit` on {len(df)} real radiographs (augmented, memory-cached), batch "
            f"{plan.train_batch}, {plan.train_image_size} px, weights=None, compiled by the trainer's "
            f"`compile_model` (loss, optimizer, steps_per_execution from the preset). Median of "
            f"{plan.train_repeats} epochs of {plan.train_steps} step(s) after a warm-up epoch, the models "
            f"kept side by side and timed in turns (a load change hits all alike); peak RSS is the process "
            f"peak during a model's warm-up (earlier models stay resident); trace = the "
            f"warm-up epoch minus its steps at the steady speed (one-off cost per process). Training "
            f"FLOPs = 3 x forward FLOPs (profiler count of the inference graph at batch 1). Cost ratio = "
            f"step time / the baseline's step time, same run. "
            + (f"{can['model']} costs {can['cost_vs_baseline']:.2f}x the baseline per step: its extra cost is "
               f"{extra_cost:.2f}x a baseline step, against ~1x for the second backbone alone; the "
               f"cross-attention layer is {100 * (can.get('attention_share') or 0):.1f}% of its forward FLOPs, and "
               f"the layer alone (forward + backward, its real feature-map shapes, batch {plan.train_batch}) takes "
               f"{100 * (can.get('attention_time_share') or 0):.1f}% of its step time. "
               if extra_cost is not None and len(rows) > 1 else "")
            + ("Pipeline headroom = pipeline images/s (cached, same size) / training images/s; it should "
               "be >= 10." if cached else "")
        )
        return Section("training", f"Training images/s ({plan.train_image_size} px, batch {plan.train_batch})", note,
                       [("model", "model"), ("images_per_s", "img/s"), ("step_s", "s / step"),
                        ("cost_vs_baseline", "cost x baseline"), ("forward_gflop", "fwd GFLOP / img"),
                        ("flops_vs_baseline", "FLOPs x baseline"), ("attention_share", "x-attn FLOP share"),
                        ("attention_time_share", "x-attn time share"),
                        ("achieved_gflops", "achieved GFLOP/s"), ("peak_fraction", "of peak"),
                        ("trace_s", "trace s"), ("peak_rss_mb", "peak RSS MB"),
                        ("pipeline_headroom_cached", "pipeline headroom (cached)"),
                        ("pipeline_headroom_cold", "pipeline headroom (cold)")], rows)

    def section_fit_overhead(self):
        from benchmarks.common import Section
        from benchmarks.fit_overhead import FIXED_COST_S, MAX_OVERHEAD, measure_fit_overhead, overhead_rows, summary
        from benchmarks.train_throughput import TrainingRun

        plan = self.plan
        run, own = self.baseline_run, False
        if run is None:  # run without the training section: trace the baseline here
            df, class_names = self.table(plan.train_batch)
            preset, label = plan.train_presets[-1]
            run, own = TrainingRun(self._config(preset, plan.train_image_size), df, class_names, steps=1,
                                   label=label), True
        try:
            calls = measure_fit_overhead(run, plan.overhead_steps, plan.overhead_calls)
        finally:
            if own:
                run.close()
        rows = overhead_rows(calls)
        for row in rows:
            row["model"] = run.label
        total = summary(calls)
        note = (f"{run.label}, {plan.train_image_size} px, batch {plan.train_batch}: {plan.overhead_calls} "
                f"one-epoch `fit` call(s) per step count, as the training rows time them. overhead = call wall "
                f"time / sum of its step times - 1 (steps timed from on_train_batch_begin to "
                f"on_train_batch_end; the wall time includes iterator set-up and teardown). Check: every call "
                f"within {100 * MAX_OVERHEAD:.0f}% of its steps or {FIXED_COST_S:g} s; "
                f"{total['calls'] - total['failed']} of {total['calls']} pass"
                + ("." if total["ok"] else " - a fit call stalls outside its steps, so the few-step "
                   "epochs above measure the stall, not the maths."))
        return Section("fit_overhead", "Fit overhead: call wall time vs its steps", note,
                       [("model", "model"), ("steps", "steps"), ("wall_s", "call s"), ("steps_s", "steps s"),
                        ("overhead_s", "overhead s"), ("overhead", "overhead"), ("ok", "ok")],
                       rows, extra={"summary": total})

    def section_levers(self):
        from benchmarks.common import Section, ratio
        from benchmarks.train_throughput import TrainingRun, measure_interleaved

        plan = self.plan
        bf16_native = self.machine["cpu"]["native_bfloat16"]
        backbones = [f"model.backbones=[{', '.join(plan.lever_backbones)}]"] if plan.lever_backbones else []
        has = {"any": True, "native_bfloat16": bf16_native, "gpu": bool(self.machine["gpus"])}
        why_not = {"native_bfloat16": "skipped: no avx512_bf16/amx_bf16 on this CPU (see the peak table's "
                                      "bfloat16 matmul row)", "gpu": "skipped: no GPU"}
        variants, skipped = [("default (float32, no XLA, steps_per_execution 1)", [])], []
        for key in plan.lever_variants:
            label, overrides, needs = LEVERS[key]
            if has[needs]:
                variants.append((label, overrides))
            else:
                skipped.append({"model": label, "error": why_not[needs]})
        df, class_names = self.table(plan.train_batch * plan.lever_steps)
        reuse = (self.baseline_run is not None and plan.lever_backbones is None
                 and plan.lever_preset == plan.train_presets[-1][0] and plan.lever_image_size == plan.train_image_size)
        runs = []
        try:
            for i, (label, overrides) in enumerate(variants):
                if i == 0 and reuse:  # the training section's baseline is this default, already traced
                    self.baseline_run.label = label
                    runs.append(self.baseline_run)
                    continue
                config = self._config(plan.lever_preset, plan.lever_image_size, *backbones, *overrides)
                try:
                    runs.append(TrainingRun(config, df, class_names, steps=plan.lever_steps, label=label))
                except Exception as e:  # e.g. an op XLA cannot compile on this device: say so, go on
                    runs.append({"model": label, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
                self.log(f"  {label}: warmed up")
            live = [run for run in runs if isinstance(run, TrainingRun)]
            measure_interleaved(live, plan.train_repeats)  # in turns: see section_training
            rows = [run.row(count_flops=False) if isinstance(run, TrainingRun) else run for run in runs] + skipped
        finally:
            for run in runs:
                if isinstance(run, TrainingRun):
                    run.close()
            self.baseline_run = None
        base = rows[0]
        for row in rows:
            row["speedup"] = ratio(base.get("step_s"), row.get("step_s"))
        model = (f"{plan.lever_preset} preset" + (f" with backbone(s) {' + '.join(plan.lever_backbones)}"
                                                   if plan.lever_backbones else ""))
        note = (f"One model ({model}, weights=None, "
                f"{plan.lever_image_size} px, batch {plan.train_batch}, real images, augmented, cached), "
                f"{plan.lever_steps} step(s) an epoch, median of "
                f"{plan.train_repeats} epochs, each variant "
                f"after its own warm-up, the variants timed in turns"
                + (" (the default is the training table's baseline run, timed further)" if reuse else "")
                + ". speedup = default step time / variant step time (> 1 helps). This "
                f"CPU {'has' if bf16_native else 'has no'} native bfloat16 (avx512_bf16/amx_bf16), so "
                f"mixed_precision=auto resolves to {'mixed_bfloat16' if bf16_native else 'float32'} here. "
                f"Cached vs cold decoded images: see the pipeline table; inference batch sizes: see the "
                f"inference table.")
        return Section("levers", "Levers on the train step", note,
                       [("model", "variant"), ("images_per_s", "img/s"), ("step_s", "s / step"),
                        ("speedup", "speedup"), ("trace_s", "trace/compile s"), ("peak_rss_mb", "peak RSS MB"),
                        ("error", "error / skipped")], rows)

    def section_inference(self):
        from benchmarks.common import Section
        from benchmarks.inference_batch import keras_inference

        plan = self.plan
        model = self.baseline_model
        label = plan.train_presets[-1][1]
        if model is None:  # the training section did not run: build the baseline here
            from can_tf.models import build_model

            preset = plan.train_presets[-1][0]
            config = self._config(preset, plan.train_image_size)
            model = build_model(config.model, config.num_classes, plan.train_image_size)
        images = self.sample_images(plan.train_image_size)
        rows = keras_inference(model, images, plan.inference_batches, repeats=plan.inference_repeats)
        base = rows[0]
        for row in rows:
            row["throughput_vs_batch1"] = row["images_per_s"] / base["images_per_s"]
            if self.training_rows and self.training_rows[-1].get("forward_gflop"):
                row["achieved_gflops"] = self.training_rows[-1]["forward_gflop"] * row["images_per_s"]
                if self.peak_gflops:
                    row["peak_fraction"] = row["achieved_gflops"] / self.peak_gflops
        note = (f"{label}, {plan.train_image_size} px, Keras `predict_on_batch` of the inference view "
                f"(probabilities) on real images; median of {plan.inference_repeats} calls after a warm-up "
                f"call per batch size. Latency is per call (the whole batch).")
        return Section("inference", "Keras inference: batch size", note,
                       [("batch_size", "batch"), ("images_per_s", "img/s"), ("latency_ms", "ms / call"),
                        ("throughput_vs_batch1", "img/s x batch 1"), ("achieved_gflops", "achieved GFLOP/s"),
                        ("peak_fraction", "of peak")], rows)

    def section_export(self):
        from benchmarks.common import Section

        try:
            from benchmarks.export_latency import main as export_main
        except ImportError as e:
            raise RuntimeError(f"benchmarks/export_latency.py is not available ({e})") from e
        out = Path(self._tmp.name) / "export_latency.json"
        images = self.image_folder()
        export_main([*self.plan.export_args, "--images", str(images), "--json", str(out)])
        result = json.loads(out.read_text())
        rows = result["rows"]
        base = next((r for r in rows if r["variant"].startswith("Keras")), rows[0])
        for row in rows:
            row["mb"] = row["bytes"] / 1e6
            row["images_per_s"] = 1000.0 / row["ms"]
            row["latency_vs_keras"] = row["ms"] / base["ms"]
        without = {r["quantize"]: r for r in rows if r.get("xnnpack") is False}
        for row in rows:
            if row.get("xnnpack") and row["quantize"] in without:
                row["xnnpack_speedup"] = without[row["quantize"]]["ms"] / row["ms"]
        note = (f"Preset {result['preset']} at {result['image_size']} px (weights=None), one image per call, "
                f"median of {result['runs']} calls (`benchmarks/export_latency.py`); every export verified "
                f"against Keras by the exporters first. latency x Keras < 1 is faster than Keras. Each TFLite file "
                f"runs with the XNNPACK delegate (the interpreter's default) and without it (built-in "
                f"kernels); XNNPACK speedup = latency without / latency with.")
        return Section("export", "Export variants: single-image latency", note,
                       [("variant", "variant"), ("mb", "size MB"), ("ms", "latency ms"),
                        ("images_per_s", "img/s (batch 1)"), ("latency_vs_keras", "latency x Keras"),
                        ("xnnpack_speedup", "XNNPACK speedup"), ("max_abs_error", "max abs error vs Keras")], rows, extra={"raw": result})

    def section_scaling(self):
        from benchmarks.common import Section
        from benchmarks.scaling import measure_scaling

        plan = self.plan
        df, class_names = self.table(max(plan.scaling_sizes))
        result = measure_scaling(df, class_names, dataset_sizes=plan.scaling_sizes,
                                 image_sizes=plan.scaling_image_sizes, images_for_size_sweep=min(plan.scaling_sizes),
                                 backbone=plan.scaling_backbone, batch_size=plan.train_batch,
                                 repeats=plan.scaling_repeats)
        fi, fp = result["fit_images"], result["fit_pixels"]
        note = (f"Model: {result['model']}, real images, augmented, memory cache; median of "
                f"{plan.scaling_repeats} epochs after the cache-filling epoch. Data set sweep at "
                f"{plan.scaling_image_sizes[0]} px: epoch s = {fi['intercept']:.3f} + {fi['slope'] * 1000:.2f} ms x "
                f"images, R^2 = {fi['r2']:.4f}. Image size sweep at {min(plan.scaling_sizes)} images: epoch s = "
                f"{fp['intercept']:.3f} + {fp['slope'] * 1e6:.3f} us x pixels, R^2 = {fp['r2']:.4f}. "
                f"R^2 near 1: time grows linearly with images and with pixels.")
        return Section("scaling", "Scaling: seconds per epoch", note,
                       [("sweep", "sweep"), ("images", "images"), ("image_size", "px"),
                        ("epoch_s", "epoch s"), ("images_per_s", "img/s"), ("first_epoch_s", "first epoch s")],
                       result["rows"], extra={"fit_images": fi, "fit_pixels": fp, "model": result["model"]})


def run_suite(out_dir=DEFAULT_OUT, *, quick: bool = False, sections=SECTIONS, data_dir=DEFAULT_DATA,
              command: Optional[str] = None) -> tuple:
    """Runs ``sections`` of the full (or quick) plan; returns the paths of results.json and results.md."""
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    suite = Suite(QUICK if quick else FULL, out_dir, None if data_dir is None else Path(data_dir),
                  command or "python -m benchmarks.run" + (" --quick" if quick else ""))
    # Keep the order of SECTIONS: later sections reuse the peak, the pipeline figures and a model.
    suite.run([s for s in SECTIONS if s in sections])
    suite.finish_peak()
    return suite.write()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and few steps (a smoke test)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS, metavar="SECTION",
                        help=f"run only these ({', '.join(SECTIONS)})")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="ChestX-ray14 folder with images/ (default: the NIH sample beside the project)")
    args = parser.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in given)
    json_path, md_path = run_suite(args.out, quick=args.quick, sections=args.sections, data_dir=args.data,
                                   command=command.strip())
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
