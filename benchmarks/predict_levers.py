"""Inference runtimes for can-tf's CAN on this CPU, one process: the levers for ``predict``.

Times the paper preset's inference view (random weights) at batch 8 and batch 1 through
``predict_on_batch``, a plain ``tf.function`` (what ``Predictor``'s Keras runtime runs), the same
function under XLA (``jit_compile=True``), and the LiteRT interpreter (XNNPACK, all usable cores) on
the float32 conversion (what ``predict`` runs on a CPU, :mod:`can_tf.litert_cache`), with the LiteRT
output's largest difference from Keras at batch 1.

Usage:
    python -m benchmarks.predict_levers [IMAGE_SIZE] [off|bfloat16]
"""
import os, sys, time, json
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf
import keras
from benchmarks.peer_pytorch import KerasSide

size = int(sys.argv[1]) if len(sys.argv) > 1 else 224
prec = sys.argv[2] if len(sys.argv) > 2 else "off"
side = KerasSide("can", size, precision=prec)
view = side.view
b8, b1 = side.batch, side.one

def timeit(fn, x, n):
    fn(x); fn(x)
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(x); ts.append(time.perf_counter() - t)
    return float(np.median(ts))

res = {}
res["predict_on_batch"] = (timeit(view.predict_on_batch, b8, 5), timeit(view.predict_on_batch, b1, 10))
f = tf.function(lambda x: view(x, training=False), reduce_retracing=True)
res["tf.function"] = (timeit(lambda x: f(tf.constant(x)).numpy(), b8, 5), timeit(lambda x: f(tf.constant(x)).numpy(), b1, 10))
fx = tf.function(lambda x: view(x, training=False), jit_compile=True)
try:
    res["xla"] = (timeit(lambda x: fx(tf.constant(x)).numpy(), b8, 5), timeit(lambda x: fx(tf.constant(x)).numpy(), b1, 10))
except Exception as e:
    res["xla"] = repr(e)[:200]
if prec == "off":
    conv = tf.lite.TFLiteConverter.from_concrete_functions(
        [tf.function(lambda x: view(x, training=False)).get_concrete_function(tf.TensorSpec([None, size, size, 1], tf.float32))])
    tfl = conv.convert()
    for bs, x in ((8, b8), (1, b1)):
        it = tf.lite.Interpreter(model_content=tfl, num_threads=os.cpu_count())
        it.resize_tensor_input(it.get_input_details()[0]["index"], [bs, size, size, 1]); it.allocate_tensors()
        def run(x, it=it):
            it.set_tensor(it.get_input_details()[0]["index"], x); it.invoke(); return it.get_tensor(it.get_output_details()[0]["index"])
        res.setdefault("tflite", []).append(timeit(run, x, 5 if bs == 8 else 10))
        if bs == 1:
            ref = view.predict_on_batch(b1)
            res["tflite_maxdiff_b1"] = float(np.abs(run(b1) - ref).max())
for k, v in res.items():
    if isinstance(v, (list, tuple)) and len(v) == 2:
        print(f"{k:18s} batch8 {8/v[0]:6.2f} img/s   batch1 {v[1]*1000:7.1f} ms")
    else:
        print(k, v)
