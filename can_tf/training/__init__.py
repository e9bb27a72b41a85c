"""Training: `train(config)` runs one fit into a run directory (see `can_tf.training.trainer`).

Example:
    >>> from can_tf.config import RunConfig
    >>> from can_tf.training import train
    >>> result = train(RunConfig.resolve("small"))  # doctest: +SKIP
    >>> print(result.run_dir, result.test_mean_auroc)  # doctest: +SKIP
"""


def train(config, **kwargs):
    """Trains the model ``config`` describes; see `can_tf.training.trainer.train`."""
    from can_tf.training.trainer import train as _train  # lazy: keeps TensorFlow out of imports

    return _train(config, **kwargs)


__all__ = ["train"]
