"""can-tf: Cross-Attention Networks for multi-label chest X-ray classification.

Keras 3 / TensorFlow implementation of Ma, Wang & Hoi, "Multi-label Thoracic Disease Image
Classification with Cross-Attention Networks" (MICCAI 2019, arXiv:2007.10859).

Submodules are imported lazily so that ``import can_tf`` (and ``can-tf --help``) stays fast;
TensorFlow is loaded only by the parts that need it.
"""

__version__ = "0.1.0"

from can_tf.labels import CLASS_NAMES  # noqa: E402  (no TensorFlow import)

__all__ = ["CLASS_NAMES", "__version__"]
