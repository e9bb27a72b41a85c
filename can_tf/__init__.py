"""can-tf: Cross-Attention Networks for multi-label chest X-ray classification.

Keras 3 / TensorFlow implementation of Ma, Wang & Hoi, "Multi-label Thoracic Disease Image
Classification with Cross-Attention Networks" (MICCAI 2019, arXiv:2007.10859).

``import can_tf`` registers every custom Keras class of the package (models, layers, losses, the
learning-rate schedule) as ``can_tf>ClassName``, so it is all a saved model needs to load back. It
therefore loads TensorFlow; the ``can-tf`` CLI reads the version without importing this package,
so ``can-tf --help`` stays fast.

Example:
    >>> import can_tf, keras
    >>> model = keras.saving.load_model("runs/small-1a2b3c4d/best.keras")  # doctest: +SKIP
    >>> type(model).__name__  # doctest: +SKIP
    'CANModel'
"""

# Kept a plain literal on its own line: setup.cfg (``attr:``) and the CLI read it without importing.
__version__ = "0.1.0"

# Before anything below loads TensorFlow: keeps its C++/absl log lines off stderr unless
# CAN_TF_VERBOSE=1 (see can_tf.logs).
from can_tf.logs import quiet_native_logs as _quiet_native_logs  # noqa: E402

_quiet_native_logs()

from can_tf.labels import CLASS_NAMES  # noqa: E402
from can_tf.losses import BCELoss, BalanceLoss, CANLoss, FocalLoss, WeightedBCELoss  # noqa: E402
from can_tf.models import BaselineModel, CANModel, CrossAttention, build_model, inference_model  # noqa: E402
from can_tf.models.backbones import ImagePreprocessing  # noqa: E402
from can_tf.training.optimizers import OncePerStep  # noqa: E402

__all__ = [
    "BCELoss",
    "BalanceLoss",
    "BaselineModel",
    "CANLoss",
    "CANModel",
    "CLASS_NAMES",
    "CrossAttention",
    "FocalLoss",
    "ImagePreprocessing",
    "OncePerStep",
    "WeightedBCELoss",
    "__version__",
    "build_model",
    "inference_model",
]
