"""Deployment exports: SavedModel for TF Serving and TFLite / LiteRT for phones and edge devices.

Every export is checked against the Keras model on real images before it is published, and is
published atomically (a temporary folder or file renamed into place), so a failure never leaves a
half-written export and nothing published is ever overwritten by accident.

Example:
    >>> from can_tf.export import export_saved_model, export_tflite
    >>> export_saved_model("runs/small-1a2b3c4d", "exports/serving/models").path  # doctest: +SKIP
    PosixPath('exports/serving/models/can/1')
    >>> export_tflite("runs/small-1a2b3c4d", "out", quantize="int8").path  # doctest: +SKIP
    PosixPath('out/can_int8.tflite')
"""

from can_tf.export.versioning import ExportError, next_version


def __getattr__(name):
    # TensorFlow loads only when an exporter is used, so `import can_tf.export` stays cheap.
    if name in ("export_saved_model", "ServingModule", "SavedModelExport", "DEFAULT_MAX_PIXELS"):
        from can_tf.export import saved_model

        return getattr(saved_model, name)
    if name in ("export_tflite", "convert_tflite", "run_tflite", "flex_ops", "TFLiteExport", "QUANTIZE_MODES"):
        from can_tf.export import tflite

        return getattr(tflite, name)
    if name in ("ExportSource", "load_source", "sample_images"):
        from can_tf.export import source

        return getattr(source, name)
    raise AttributeError(f"module 'can_tf.export' has no attribute {name!r}")


__all__ = ["ExportError", "next_version", "export_saved_model", "ServingModule", "SavedModelExport",
           "DEFAULT_MAX_PIXELS", "export_tflite", "convert_tflite", "run_tflite", "flex_ops", "TFLiteExport",
           "QUANTIZE_MODES", "ExportSource", "load_source", "sample_images"]
