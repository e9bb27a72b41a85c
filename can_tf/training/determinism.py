"""`configure_determinism(config)`: ``train.deterministic=true`` makes a rerun repeat a run exactly.

Why runs with the same seeds differed (test mean AUROC 0.786 / 0.800 / 0.809 for three runs of
``can-tf fit`` on the phantom data; 0.934 / 0.939 for two runs of today's small preset). The seeds
were not the problem: the trainer seeds Python, NumPy, TensorFlow and Keras, the shuffles are seeded
and the augmentation is stateless with seeds from a seeded ``tf.data.Dataset.random``. Two things
vary whatever the seeds (found on 2 CPU cores):

1. **Input order** (the whole story for the small presets). With ``data.deterministic=false``, the
   default, the parallel ``map`` stages of :func:`can_tf.data.pipeline.make_dataset` hand over
   elements as their threads finish. The decode stage reorders the seeded shuffle a little, and
   ``data.cache=memory`` freezes that order for every later epoch's reshuffle; the augmentation
   stage swaps whole batches now and then (each batch keeps its augmentation seed but reaches the
   model at another step). The labels of the first three epochs of batches differed between every
   two processes, with or without cache or augmentation. With the order fixed, two runs of the
   small preset gave bit-identical ``history.csv`` and test AUROCs.
2. **Summation order in Grappler's memory optimizer** (DenseNet-121 and other large graphs). To save
   memory, Grappler rewrites an ``AddN`` with more than two large inputs (DenseNet's gradient of a
   feature map that many later layers read) into a temporary variable plus one ``AssignAdd`` per
   input, run in whatever order the inputs finish: float addition in a different order, different
   gradients. ``enable_op_determinism`` does not turn this pass off (TensorFlow 2.21; whether it
   fires depends on Grappler's peak-memory estimate against the memory it finds free), so the
   weights after a few DenseNet-121 train steps (224 px, batch 8) still differed between runs with
   op determinism on. One inter-op thread or Grappler off made them repeat; the pass has no switch
   of its own in the public API.

CPU kernels themselves (oneDNN on) repeated run to run here. On a GPU, cuDNN algorithm autotuning
and atomics (convolution backprop, for example) are a third source.

What ``train.deterministic=true`` does, from the top of ``train()`` (before any model or dataset):

- seeds Python, NumPy, TensorFlow and Keras from ``train.seed`` (``keras.utils.set_random_seed``);
- ``tf.config.experimental.enable_op_determinism()``: deterministic kernels (on a GPU the first
  working cuDNN algorithm instead of the fastest, no atomics; XLA with ``xla_gpu_deterministic_ops``),
  an error for an op without a deterministic kernel instead of varying results, and every tf.data
  ``deterministic=False`` (``map``, ``Options``) overridden to True. That is how
  ``train.deterministic`` implies ``data.deterministic``: the pipeline needs no flag of its own.
- turns Grappler off (``disable_meta_optimizer``), for cause 2. Its fusions and rewrites change the
  float results too, so a deterministic run's numbers differ slightly from a default run's.

What it does not cover: another machine, thread count (``TF_NUM_INTRAOP_THREADS``, a different
cpuset), TensorFlow/CUDA/cuDNN version or ``TF_ENABLE_ONEDNN_OPTS`` may change float results; a run
resumed after an interruption restarts its input pipeline at the first epoch's order, so it repeats
other resumed runs but not the uninterrupted one; ``data.cache`` files written by an earlier run are
read as they are. Thread pools cannot be resized here: TensorFlow is already running when the
trainer calls this.

Cost, measured on 2 shared CPU cores (TensorFlow 2.21, oneDNN on; each mode in a fresh process,
modes alternated, median of 3): none beyond the noise. Small preset, 8 epochs of 12 steps: 0.405 s
an epoch by default, 0.407 s deterministic, and a faster first (tracing) epoch, 3.45 s against
3.79 s, since Grappler no longer runs. The full 40-epoch ``can-tf fit``: 24.6-25.0 s of fit
deterministic, 25.9-27.0 s default (two runs each). DenseNet-121 baseline train step (224 px,
batch 8): 1.31 s deterministic, 1.35 s default. On a GPU, deterministic cuDNN algorithms and the
missing Grappler layout and fusion passes will cost something; not measured yet.

Example:
    >>> from can_tf.config import RunConfig
    >>> config = RunConfig.resolve("small", overrides=["train.deterministic=true"])
    >>> configure_determinism(config)  # doctest: +SKIP
"""

from __future__ import annotations


def configure_determinism(config) -> None:
    """Sets up this process so that a run of ``config`` repeats exactly; see the module docstring.

    Does nothing unless ``config.train.deterministic`` is true. Call it once, before any model
    or dataset is built. The settings then stay for the rest of the process (TensorFlow has no
    public switch to turn op determinism off again).

    Args:
        config: a `can_tf.config.RunConfig`.
    """
    if not config.train.deterministic:
        return
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.train.seed)
    tf.config.experimental.enable_op_determinism()
    # Grappler's memory optimizer turns large AddNs into AssignAdds that sum in arrival order, and
    # op determinism leaves it on; it has no public switch of its own (module docstring, cause 2).
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
