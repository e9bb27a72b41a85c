"""Where training runs: the `tf.distribute` strategy, numeric precision and input distribution.

`make_strategy` picks, from ``train.strategy`` and the environment:

- ``multi_worker``: `tf.distribute.MultiWorkerMirroredStrategy`, chosen automatically when
  ``TF_CONFIG`` describes more than one task (workers + chief);
- ``mirrored``: `tf.distribute.MirroredStrategy` over the visible GPUs, chosen automatically when
  more than one GPU is visible; named explicitly on a machine without GPUs it mirrors over the
  logical CPU devices (how the tests run it);
- ``default``: the default (single device) strategy.

``train.batch_size`` is the *global* batch: `distribute_dataset` has each input pipeline build
``global_batch / num_replicas`` examples per replica and shard the files across workers through
the `tf.distribute.InputContext`. Keras 3 divides each replica's mean loss by the number of
replicas before the gradients are summed, so the update equals the single-device update on the same
global batch (checked by ``tests/test_distributed.py``). One caveat: the losses average over the
*known* labels of each replica's share, so with unknown (NaN) labels unevenly spread over replicas
the result is a mean of per-replica means, not exactly the global one. Batch normalisation
statistics are per replica (Keras's default), as in any `tf.distribute` training.

Example:
    >>> from can_tf.config import TrainConfig
    >>> info = make_strategy(TrainConfig(strategy="default"))
    >>> info.num_replicas, info.is_chief
    (1, True)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

from can_tf.config import ConfigError


@dataclass
class StrategyInfo:
    """The chosen strategy and this process's place in the cluster."""

    strategy: Any  # tf.distribute.Strategy
    kind: str  # default | mirrored | multi_worker
    num_replicas: int
    num_workers: int = 1
    worker_index: int = 0
    is_chief: bool = True

    def per_replica_batch_size(self, global_batch_size: int) -> int:
        """The batch each replica sees; the global batch must split evenly across replicas."""
        if global_batch_size % self.num_replicas:
            raise ConfigError(
                f"train.batch_size={global_batch_size} (the global batch) must be a multiple of the "
                f"number of replicas ({self.num_replicas}: {self.kind} strategy)"
            )
        return global_batch_size // self.num_replicas


def tf_config_cluster() -> tuple[int, int, bool]:
    """``(num_tasks, task_index, is_chief)`` from ``TF_CONFIG``; ``(1, 0, True)`` when unset.

    The chief is the task of type ``chief`` or, when there is none, worker 0 (TF's rule).
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 1, 0, True
    try:
        tf_config = json.loads(raw)
        cluster = tf_config.get("cluster", {})
        task = tf_config.get("task", {})
    except (json.JSONDecodeError, AttributeError) as e:
        raise ConfigError(f"environment variable TF_CONFIG is not valid JSON with cluster/task: {e}") from None
    chiefs = len(cluster.get("chief", []))
    workers = len(cluster.get("worker", []))
    task_type, task_index = task.get("type", "worker"), int(task.get("index", 0))
    is_chief = task_type == "chief" or (task_type == "worker" and task_index == 0 and chiefs == 0)
    # Chief first, then workers: the order TF uses for `input_pipeline_id`.
    index = task_index + (chiefs if task_type == "worker" else 0)
    return chiefs + workers, index, is_chief


def make_strategy(train_config) -> StrategyInfo:
    """Builds the strategy named by ``train_config.strategy`` (``auto`` looks at the machine).

    Must run before any other TensorFlow op in the process: multi-worker collectives cannot be set
    up once TensorFlow has initialised its devices.
    """
    import tensorflow as tf

    kind = train_config.strategy
    num_tasks, task_index, is_chief = tf_config_cluster()
    if kind == "auto":
        if num_tasks > 1:
            kind = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "default"
    if kind == "multi_worker":
        if num_tasks < 2:
            raise ConfigError(
                "train.strategy='multi_worker' needs TF_CONFIG describing at least two tasks "
                "(cluster.worker / cluster.chief); TF_CONFIG is "
                + ("unset" if "TF_CONFIG" not in os.environ else "a single-task cluster")
            )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return StrategyInfo(strategy, kind, strategy.num_replicas_in_sync, num_tasks, task_index, is_chief)
    if kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        strategy = tf.distribute.MirroredStrategy(devices)
        return StrategyInfo(strategy, kind, strategy.num_replicas_in_sync)
    return StrategyInfo(tf.distribute.get_strategy(), "default", 1)


def describe_devices() -> str:
    """What this process trains on, in one phrase: ``CPU (no GPU found)`` or ``1 GPU (NVIDIA H100)``.

    `fit` prints it as ``device: ...`` in place of TensorFlow's own (silenced) device log lines. It
    lists physical devices only, which does not initialise TensorFlow's runtime, so it may run
    before `make_strategy`.

    Example:
        >>> describe_devices()  # doctest: +SKIP
        '2 GPUs (NVIDIA A100-SXM4-80GB)'
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES") is not None and not os.environ["CUDA_VISIBLE_DEVICES"].strip()
        return "CPU (no GPU found" + (": CUDA_VISIBLE_DEVICES is empty)" if hidden else ")")
    names = []
    for gpu in gpus:
        try:
            name = tf.config.experimental.get_device_details(gpu).get("device_name") or gpu.name
        except Exception:  # noqa: BLE001 - details are optional; the count is what matters
            name = gpu.name
        if name not in names:
            names.append(name)
    return f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''} ({', '.join(names)})"


def cpu_supports_bfloat16() -> bool:
    """True on CPUs with native bfloat16 arithmetic (AVX512-BF16 or AMX), read from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(mode: str, has_gpu: Optional[bool] = None) -> str:
    """The Keras dtype policy for ``train.mixed_precision``.

    ``auto``: ``mixed_float16`` on a GPU, ``mixed_bfloat16`` on a CPU with native bfloat16,
    otherwise ``float32`` (bfloat16 emulated in software is slower than float32).

    Example:
        >>> resolve_precision("bfloat16")
        'mixed_bfloat16'
        >>> resolve_precision("auto", has_gpu=True)
        'mixed_float16'
    """
    if mode == "off":
        return "float32"
    if mode == "float16":
        return "mixed_float16"
    if mode == "bfloat16":
        return "mixed_bfloat16"
    if mode != "auto":
        raise ConfigError(f"train.mixed_precision must be off, auto, float16 or bfloat16; got {mode!r}")
    if has_gpu is None:
        import tensorflow as tf

        has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if has_gpu:
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_supports_bfloat16() else "float32"


def set_precision(mode: str) -> str:
    """Sets Keras's global dtype policy from ``train.mixed_precision``; returns the policy name."""
    import keras

    policy = resolve_precision(mode)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def distribute_dataset(info: StrategyInfo, dataset_fn: Callable, global_batch_size: int):
    """The training input for ``model.fit``.

    ``dataset_fn(input_context)`` builds the input from the *global* batch size: with
    ``input_context=None`` (one replica) it yields global batches; given a
    `tf.distribute.InputContext` it shards its files by input pipeline and yields per-replica
    batches (``input_context.get_per_replica_batch_size``), as
    `strategy.distribute_datasets_from_function` expects.
    """
    if info.num_replicas == 1 and info.num_workers == 1:
        return dataset_fn(None)
    info.per_replica_batch_size(global_batch_size)  # a clear error if the batch does not split
    return info.strategy.distribute_datasets_from_function(dataset_fn)


def prepare_model_for_strategy(model, info: StrategyInfo) -> None:
    """Works around two places where Keras 3's ``fit`` fails under MultiWorkerMirroredStrategy.

    1. Before training, Keras builds the optimizer and metric variables from one batch, which it first
    collapses across replicas with ``strategy.reduce("MEAN", batch)``. MultiWorkerMirroredStrategy
    cannot reduce a nested (images, labels-dict) batch in one call and raises ``Attempt to convert
    a value (PerReplica ...) to a Tensor`` (keras-team/keras#20585, open for Keras >= 3.0). Only the
    batch's shapes matter there, so for this model the batch is replaced by this worker's first
    replica's part, read locally.
    2. Each step's logs are reduced in a way that fails on scalars: see `_patch_step_log_reduction`.

    Other strategies are left alone.
    """
    if info.kind != "multi_worker":
        return
    import types

    import tensorflow as tf

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tf.nest.map_structure(
                    lambda v: (info.strategy.experimental_local_results(v)[0]
                               if isinstance(v, tf.distribute.DistributedValues) else v), batch)
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(maybe_symbolic_build, model)
    _patch_step_log_reduction()


def _patch_step_log_reduction() -> None:
    """Makes Keras reduce each step's scalar logs across workers with ``axis=None``.

    Keras 3 reduces the per-replica logs of every train/test step with
    ``strategy.reduce("MEAN", v, axis=0)`` under MultiWorkerMirroredStrategy (a hard-coded
    ``reduction="auto"``), which fails on scalars ("Invalid reduction dimension 0 for input with 0
    dimensions"). The replacement takes the mean over all replicas of all workers (``axis=None``),
    the value MirroredStrategy logs, and hands everything else to Keras. It is installed only in
    processes that train under MultiWorkerMirroredStrategy.
    """
    from keras.src.backend.tensorflow import trainer as keras_tf_trainer

    original = keras_tf_trainer.reduce_per_replica
    if getattr(original, "_can_tf_multi_worker", False):
        return
    import tensorflow as tf

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            def reduce(v):
                # With one local replica a worker's value is a plain tensor, not a PerReplica.
                local = v.values[0] if isinstance(v, tf.distribute.DistributedValues) else v
                if getattr(local, "shape", None) is not None and local.shape.rank == 0:
                    return strategy.reduce("MEAN", v, axis=None)
                return original(v, strategy, reduction)

            return tf.nest.map_structure(reduce, values)
        return original(values, strategy, reduction)

    reduce_per_replica._can_tf_multi_worker = True
    keras_tf_trainer.reduce_per_replica = reduce_per_replica
