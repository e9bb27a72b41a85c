"""What ``train.deterministic=true`` costs, side by side with the default.

Each measurement runs in a fresh process (op determinism and the Grappler switch are process-wide);
the modes alternate, so load from other users of a shared machine hits all of them alike.

    python -m benchmarks.determinism_cost small 3      # small preset, 8 epochs, 3 repeats per mode
    python -m benchmarks.determinism_cost densenet 3   # DenseNet-121 baseline train steps, 224 px, batch 8

Modes: ``off`` (the default), ``data`` (``data.deterministic=true``: ordered tf.data only), ``op``
(seeds + TensorFlow's op determinism alone), ``full`` (``train.deterministic=true``:
`can_tf.training.determinism.configure_determinism`, op determinism + Grappler off). For DenseNet
the weights' digest after the timed steps shows which modes repeat exactly.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile

MODES = {"off": [], "data": ["data.deterministic=true"], "op": ["train.deterministic=true", "OPONLY"],
         "full": ["train.deterministic=true"]}

CHILD = r'''
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
what, run_dir, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
import keras, numpy as np, tensorflow as tf
if "OPONLY" in overrides:  # configure_determinism minus its Grappler switch
    overrides.remove("OPONLY")
    import can_tf.training.determinism as D
    D.configure_determinism = lambda c: (keras.utils.set_random_seed(c.train.seed),
                                         tf.config.experimental.enable_op_determinism())
from can_tf.config import RunConfig
import can_tf.training.determinism as _D
if what == "small":
    from can_tf.training import train
    cfg = RunConfig.resolve("small", overrides=[f"train.run_dir={run_dir}", "train.verbose=0",
                                                "train.epochs=8", *overrides])
    _D.configure_determinism(cfg)  # what the trainer will do (it seeds again itself)
    t = time.perf_counter(); r = train(cfg); total = time.perf_counter() - t
    s = r.metrics["epoch_seconds"]
    print(json.dumps({"first": s[0], "median_rest": float(np.median(s[1:])), "total": total,
                      "test": str(r.test_mean_auroc)}))
else:
    from can_tf.models import build_model
    from can_tf.training.trainer import compile_model
    cfg = RunConfig.resolve("chexnet", overrides=["model.weights=null", "train.batch_size=8", *overrides])
    keras.utils.set_random_seed(0)
    _D.configure_determinism(cfg)
    model = build_model(cfg.model, 14, 224)
    compile_model(model, cfg, np.full(14, 0.1), steps_per_epoch=100)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 224, 224, 1)).astype("float32")
    y = {"fused": (rng.uniform(size=(8, 14)) < 0.2).astype("float32")}
    for _ in range(2):
        model.train_on_batch(x, y)  # trace + warm up
    times = []
    for _ in range(6):
        t = time.perf_counter(); loss = model.train_on_batch(x, y); times.append(time.perf_counter() - t)
    import hashlib
    digest = hashlib.sha1(b"".join(np.asarray(w).tobytes() for w in model.get_weights())).hexdigest()[:8]
    print(json.dumps({"median_step": float(np.median(times)), "min_step": min(times), "weights": digest}))
'''

def main(what: str, repeats: int) -> dict:
    """Runs every mode ``repeats`` times, alternating; prints each result and the medians."""
    results = {m: [] for m in MODES}
    for rep in range(repeats):
        for mode, overrides in MODES.items():
            if what == "densenet" and mode == "data":
                continue  # no tf.data in a train_on_batch loop
            with tempfile.TemporaryDirectory() as tmp:
                out = subprocess.run([sys.executable, "-c", CHILD, what, os.path.join(tmp, "run"),
                                      json.dumps(overrides)], capture_output=True, text=True)
            line = [l for l in out.stdout.splitlines() if l.startswith("{")]
            if not line:
                print(mode, "FAILED", out.stderr[-2000:])
                continue
            r = json.loads(line[-1])
            results[mode].append(r)
            print(rep, mode, r, flush=True)
    print("\nsummary (median over repeats):")
    for mode, rs in results.items():
        if rs:
            keys = rs[0].keys()
            print(f"  {mode:14s}", {k: (round(statistics.median(r[k] for r in rs), 4) if isinstance(rs[0][k], float)
                                   else sorted({r[k] for r in rs})) for k in keys})

    return results


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("small", "densenet"):
        raise SystemExit("usage: python -m benchmarks.determinism_cost small|densenet REPEATS")
    main(sys.argv[1], int(sys.argv[2]))
