"""Heat maps that show where a model looked, and how well they point at known findings.

- :mod:`can_tf.explanation.cam`: Grad-CAM, Grad-CAM++ and Score-CAM on CAN (fused output or one
  branch) and baseline models.
- :mod:`can_tf.explanation.overlay`: heat maps blended over the radiograph, written as PNG.
- :mod:`can_tf.explanation.localization`: hit rate and IoU against NIH-format bounding boxes.
- :mod:`can_tf.explanation.explain`: all three over a list of image files (``can-tf explain``).

Submodules import TensorFlow only where they need it; import them directly.
"""
