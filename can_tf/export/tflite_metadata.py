"""TFLite model metadata: the labels, input scaling and documents a ``.tflite`` carries inside itself.

This is the format of the TFLite Support library (``metadata_schema.fbs``, file identifier ``M001``)
that the LiteRT Task Library, Android Studio's ML model binding and ``MetadataDisplayer`` read. A
model with metadata is two things at once:

- a valid TFLite flatbuffer whose ``metadata`` vector has an entry named ``TFLITE_METADATA``
  pointing at one more buffer, which holds the ``ModelMetadata`` flatbuffer;
- a valid ZIP archive: the associated files (``labels.txt``, ``thresholds.json``, a model card) are
  appended after the flatbuffer, uncompressed, as ``MetadataPopulator`` does. Flatbuffer readers
  ignore bytes after the root table, ZIP readers find the archive from its end.

What is written, per the schema and as the official image classifier writer fills it:

- the model: name, description, version, author, license, ``min_parser_version`` (``1.0.0``: every
  field used here is in the first schema version, the rule of ``metadata_version.cc``) and the
  model-level associated files (type ``DESCRIPTIONS``, e.g. ``model_card.json``);
- the input ``image`` tensor: ``ImageProperties`` (``GRAYSCALE`` for one channel, ``RGB`` for three:
  the Task Library's ``ImageClassifier`` accepts only RGB; ``default_size`` S x S), for a float32
  input a ``NormalizationOptions`` process unit with ``mean [0]`` and ``std [1]`` (the model takes
  raw pixels 0-255 and normalises inside the graph; a reader computes ``(x - mean) / std``, one
  value for every channel), none for a uint8 input, and ``Stats`` min 0, max 255;
- the output ``probabilities`` tensor: ``FeatureProperties``, ``Stats`` min 0, max 1, ``labels.txt``
  (one class a line, in output order) as ``TENSOR_AXIS_LABELS`` and ``thresholds.json`` when given.

The model's own input and output tensors are renamed ``image`` and ``probabilities`` (the converter
calls them ``serving_default_image:0`` and ``PartitionedCall:0``), so the names in the metadata are
the model's. The flatbuffers are written with the ``flatbuffers`` package: the model through the
generated TFLite schema (``ModelT``), the metadata table by table from the field order of
``metadata_schema.fbs`` (:data:`_SCHEMA`; a union field takes two slots, its type then its value).
:func:`read_metadata` reads both back with plain flatbuffer table reads (no TFLite Support package).

Example:
    >>> import tensorflow as tf
    >>> f = tf.function(lambda x: {"probabilities": tf.sigmoid(tf.reshape(x, [1, 4]))},
    ...                 input_signature=[tf.TensorSpec([1, 2, 2, 1], tf.float32)])
    >>> model = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()]).convert()
    >>> packed = add_metadata(model, class_names=["a", "b", "c", "d"], name="toy", description="d",
    ...                       version="1", author="me", license="MIT", input_dtype="float32", image_size=2)
    >>> info = read_metadata(packed)
    >>> info["labels"], info["input"]["normalization"], info["input"]["color_space"]
    (['a', 'b', 'c', 'd'], {'mean': [0.0], 'std': [1.0]}, 'GRAYSCALE')
    >>> info["output"]["name"], info["associated_files"], info["min_parser_version"]
    ('probabilities', ['labels.txt'], '1.0.0')
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

import flatbuffers
import numpy as np
from flatbuffers import encode, number_types, packer
from flatbuffers.table import Table

from can_tf.export.versioning import ExportError

PathLike = Union[str, os.PathLike]

METADATA_NAME = "TFLITE_METADATA"  # the model's metadata entry that MetadataPopulator writes
METADATA_IDENTIFIER = b"M001"
MODEL_IDENTIFIER = b"TFL3"
MIN_PARSER_VERSION = "1.0.0"
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
LABELS_FILE, THRESHOLDS_FILE = "labels.txt", "thresholds.json"
INPUT_DTYPES = ("float32", "uint8")

# metadata_schema.fbs, table by table: fields in declaration order (a field's vtable slot is its
# index). A union ``x`` is declared as two slots, ``x_type`` (ubyte) then ``x``. Kinds: scalars
# "byte"/"ubyte"/"uint", "string", "[string]", "[float]", a table name, "[Table]", or "union:<Union>".
_SCHEMA = {
    "ModelMetadata": (("name", "string"), ("description", "string"), ("version", "string"),
                      ("subgraph_metadata", "[SubGraphMetadata]"), ("author", "string"), ("license", "string"),
                      ("associated_files", "[AssociatedFile]"), ("min_parser_version", "string")),
    "SubGraphMetadata": (("name", "string"), ("description", "string"),
                         ("input_tensor_metadata", "[TensorMetadata]"), ("output_tensor_metadata", "[TensorMetadata]"),
                         ("associated_files", "[AssociatedFile]"), ("input_process_units", "[ProcessUnit]"),
                         ("output_process_units", "[ProcessUnit]"), ("input_tensor_groups", "[TensorGroup]"),
                         ("output_tensor_groups", "[TensorGroup]"), ("custom_metadata", "[CustomMetadata]")),
    "TensorMetadata": (("name", "string"), ("description", "string"), ("dimension_names", "[string]"),
                       ("content", "Content"), ("process_units", "[ProcessUnit]"), ("stats", "Stats"),
                       ("associated_files", "[AssociatedFile]")),
    "Content": (("content_properties_type", "ubyte"), ("content_properties", "union:ContentProperties"),
                ("range", "ValueRange")),
    "ImageProperties": (("color_space", "byte"), ("default_size", "ImageSize")),
    "ImageSize": (("width", "uint"), ("height", "uint")),
    "FeatureProperties": (),
    "ValueRange": (("min", "int"), ("max", "int")),
    "ProcessUnit": (("options_type", "ubyte"), ("options", "union:ProcessUnitOptions")),
    "NormalizationOptions": (("mean", "[float]"), ("std", "[float]")),
    "Stats": (("max", "[float]"), ("min", "[float]")),
    "AssociatedFile": (("name", "string"), ("description", "string"), ("type", "byte"), ("locale", "string"),
                       ("version", "string")),
    "TensorGroup": (("name", "string"), ("tensor_names", "[string]")),
    "CustomMetadata": (("name", "string"),),  # its data vector is not read here
}
# Union members in declaration order; the type code is the index + 1 (0 is NONE).
_UNIONS = {
    "ContentProperties": ("FeatureProperties", "ImageProperties", "BoundingBoxProperties", "AudioProperties"),
    "ProcessUnitOptions": ("NormalizationOptions", "ScoreCalibrationOptions", "ScoreThresholdingOptions",
                           "BertTokenizerOptions", "SentencePieceTokenizerOptions", "RegexTokenizerOptions"),
}
ASSOCIATED_FILE_TYPES = ("UNKNOWN", "DESCRIPTIONS", "TENSOR_AXIS_LABELS", "TENSOR_VALUE_LABELS",
                         "TENSOR_AXIS_SCORE_CALIBRATION", "VOCABULARY", "SCANN_INDEX_FILE")
COLOR_SPACES = ("UNKNOWN", "RGB", "GRAYSCALE")
_SCALARS = {"byte": number_types.Int8Flags, "ubyte": number_types.Uint8Flags, "uint": number_types.Uint32Flags,
            "int": number_types.Int32Flags}
# TFLite's TensorType codes of the input dtypes.
_TENSOR_TYPES = {"float32": 0, "uint8": 3}

AssociatedFiles = Mapping[str, Union[bytes, Tuple[bytes, str]]]


# ---- writing ---------------------------------------------------------------------------------------
def add_metadata(model: bytes, *, class_names: Sequence[str], name: str, description: str, version: str,
                 author: str, license: str, input_dtype: str, image_size: int, channels: int = 1,
                 thresholds: Union[str, bytes, None] = None, associated_files: AssociatedFiles = {}) -> bytes:
    """``model`` with TFLite metadata and its associated files packed in (see the module docstring).

    Metadata already in ``model`` is replaced, with the files packed after it.

    Args:
        model: a TFLite flatbuffer with one ``(1, S, S, channels)`` input and one ``(1, C)`` output.
        class_names: the ``C`` output classes in order; written as ``labels.txt``.
        name, description, version, author, license: the model's descriptive fields.
        input_dtype: ``float32`` (raw pixels 0-255: normalisation mean 0, std 1) or ``uint8``.
        image_size: ``S``, the square input size.
        channels: 1 (``GRAYSCALE``) or 3 (``RGB``).
        thresholds: the text of a ``thresholds.json``, packed as is and attached to the output.
        associated_files: more files, ``{name: bytes}`` or ``{name: (bytes, description)}``, attached
            to the model as ``DESCRIPTIONS`` (a model card, a README).

    Raises:
        ExportError: ``model`` is not a TFLite flatbuffer, its tensors do not match the arguments,
            or an argument is invalid; the message names it.
    """
    schema = _tflite_schema()
    root = _model_root(model, "the model")
    try:
        tree = schema.ModelT.InitFromObj(root)
    except Exception as e:  # a truncated or corrupt flatbuffer fails anywhere inside the reads
        raise ExportError(f"the model is not a readable TFLite flatbuffer ({type(e).__name__}: {e})") from None
    class_names = _check_class_names(class_names)
    if input_dtype not in INPUT_DTYPES:
        raise ExportError(f"input_dtype must be one of {', '.join(INPUT_DTYPES)}; got {input_dtype!r}")
    if channels not in (1, 3):
        raise ExportError(f"channels must be 1 (grayscale) or 3 (RGB); got {channels!r}")
    if any(b.offset > 1 for b in tree.buffers or []):
        # Over 2 GB the weights live after the flatbuffer at fixed offsets a repack would break.
        raise ExportError("the model keeps its weights outside the flatbuffer (over 2 GB); "
                          "metadata cannot be added to it")
    input_tensor, output_tensor = _check_tensors(tree, int(image_size), channels, input_dtype, len(class_names))
    files = {LABELS_FILE: labels_text(class_names).encode()}
    if thresholds is not None:
        if not isinstance(thresholds, (str, bytes, bytearray)):
            raise ExportError(f"thresholds must be the text of a {THRESHOLDS_FILE}, got {type(thresholds).__name__}")
        files[THRESHOLDS_FILE] = thresholds.encode() if isinstance(thresholds, str) else bytes(thresholds)
    extras = _check_extra_files(associated_files, reserved=files)
    files.update({file: data for file, (data, _) in extras.items()})

    # The tensors take the names the metadata gives them, so a reader matching by name finds them.
    input_tensor.name, output_tensor.name = INPUT_NAME.encode(), OUTPUT_NAME.encode()
    metadata = _metadata_table(class_names, name, description, version, author, license, input_dtype,
                               int(image_size), channels, thresholds is not None, extras)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(_build(metadata, "ModelMetadata", METADATA_IDENTIFIER), np.uint8)
    entries = [m for m in (tree.metadata or []) if m.name.decode("utf-8", "replace") == METADATA_NAME]
    if entries:  # replaced in place, as MetadataPopulator does
        tree.buffers[entries[0].buffer] = buffer
    else:
        tree.buffers = list(tree.buffers or []) + [buffer]
        entry = schema.MetadataT()
        entry.name, entry.buffer = METADATA_NAME, len(tree.buffers) - 1
        tree.metadata = list(tree.metadata or []) + [entry]
    builder = flatbuffers.Builder(len(model) + 1024)
    builder.Finish(tree.Pack(builder), file_identifier=MODEL_IDENTIFIER)
    return _append_zip(bytes(builder.Output()), files)


def _metadata_table(class_names, name, description, version, author, license, input_dtype, size, channels,
                    has_thresholds, extras) -> dict:
    """The ``ModelMetadata`` as nested dicts of schema field names (what :func:`_build` writes)."""
    color = "GRAYSCALE" if channels == 1 else "RGB"
    image = {"color_space": COLOR_SPACES.index(color), "default_size": {"width": size, "height": size}}
    scaling = ("raw pixel values 0-255 as float32 (the model normalises internally)" if input_dtype == "float32"
               else "raw pixel values 0-255 as uint8")
    # The RGB variant's graph turns the three channels into one luminance channel itself.
    colour = "grayscale" if channels == 1 else "RGB (converted to gray inside the model)"
    input_meta = {
        "name": INPUT_NAME,
        "description": f"Chest radiograph, {size} x {size} px, {colour}, {scaling}.",
        "content": {"content_properties": ("ImageProperties", image)},
        "stats": {"max": [255.0], "min": [0.0]},
    }
    if input_dtype == "float32":
        # A reader computes (x - mean) / std; the identity keeps the 0-255 pixels the graph expects.
        input_meta["process_units"] = [{"options": ("NormalizationOptions", {"mean": [0.0], "std": [1.0]})}]
    output_files = [{"name": LABELS_FILE, "type": ASSOCIATED_FILE_TYPES.index("TENSOR_AXIS_LABELS"),
                     "description": "The class of each output, one a line, in output order."}]
    if has_thresholds:
        output_files.append({"name": THRESHOLDS_FILE, "type": ASSOCIATED_FILE_TYPES.index("UNKNOWN"),
                             "description": "Per-class decision thresholds (JSON): a class is a finding "
                                            "when its probability is >= its threshold."})
    output_meta = {
        "name": OUTPUT_NAME,
        "description": f"Probability of each of the {len(class_names)} classes (sigmoid; multi-label: "
                       "each class on its own), in the order of labels.txt.",
        "content": {"content_properties": ("FeatureProperties", {})},
        "stats": {"max": [1.0], "min": [0.0]},
        "associated_files": output_files,
    }
    table = {"name": name, "description": description, "version": version, "author": author, "license": license,
             "subgraph_metadata": [{"input_tensor_metadata": [input_meta], "output_tensor_metadata": [output_meta]}],
             "min_parser_version": MIN_PARSER_VERSION}
    if extras:
        table["associated_files"] = [{"name": file, "description": text,
                                      "type": ASSOCIATED_FILE_TYPES.index("DESCRIPTIONS")}
                                     for file, (_, text) in extras.items()]
    return table


def _build(values: dict, table: str, identifier: bytes) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(_write_table(builder, table, values), file_identifier=identifier)
    return bytes(builder.Output())


def _write_table(builder, table: str, values: dict) -> int:
    fields = _SCHEMA[table]
    # Children first: flatbuffers builds strings, vectors and sub-tables before the table using them.
    offsets, scalars = {}, {}
    for slot, (field, kind) in enumerate(fields):
        value = values.get(field)
        if value is None:
            continue
        if kind.startswith("union:"):
            member, member_values = value
            scalars[slot - 1] = ("ubyte", _UNIONS[kind[6:]].index(member) + 1)  # the x_type slot before x
            offsets[slot] = _write_table(builder, member, member_values)
        elif kind in _SCALARS:
            scalars[slot] = (kind, int(value))
        elif kind == "string":
            offsets[slot] = builder.CreateString(str(value))
        elif kind == "[float]":
            offsets[slot] = builder.CreateNumpyVector(np.asarray(value, "<f4"))
        elif kind == "[string]":
            offsets[slot] = _vector(builder, [builder.CreateString(str(v)) for v in value])
        elif kind.startswith("["):
            offsets[slot] = _vector(builder, [_write_table(builder, kind[1:-1], v) for v in value])
        else:
            offsets[slot] = _write_table(builder, kind, value)
    builder.StartObject(len(fields))
    for slot, offset in offsets.items():
        builder.PrependUOffsetTRelativeSlot(slot, offset, 0)
    for slot, (kind, value) in scalars.items():
        prepend = {"byte": builder.PrependInt8Slot, "ubyte": builder.PrependUint8Slot,
                   "uint": builder.PrependUint32Slot, "int": builder.PrependInt32Slot}[kind]
        prepend(slot, value, 0)
    return builder.EndObject()


def _vector(builder, offsets: list) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _append_zip(model: bytes, files: dict) -> bytes:
    out = io.BytesIO(model)
    out.seek(0, io.SEEK_END)
    # Stored, not deflated: the Task Library reads associated files in place from the model buffer.
    # A fixed date keeps the same inputs giving the same bytes.
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        for file, data in files.items():
            archive.writestr(zipfile.ZipInfo(file, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


def _check_class_names(class_names) -> list:
    names = [str(c) for c in class_names]
    if not names:
        raise ExportError("class_names is empty; the labels file needs one class a line")
    for i, c in enumerate(names):
        if not c.strip() or "\n" in c or "\r" in c:
            raise ExportError(f"class_names[{i}] = {c!r} cannot be a line of labels.txt")
    duplicates = sorted({c for c in names if names.count(c) > 1})
    if duplicates:
        raise ExportError(f"class_names lists {', '.join(duplicates)} more than once")
    return names


def _check_extra_files(files: AssociatedFiles, reserved) -> dict:
    """``{name: (bytes, description)}``; names are plain file names, not the ones written here."""
    checked = {}
    for file, value in dict(files).items():
        data, text = value if isinstance(value, tuple) else (value, "")
        if not isinstance(file, str) or not file or "/" in file or "\\" in file or file in (".", ".."):
            raise ExportError(f"associated file name {file!r} must be a plain file name")
        if file in reserved:
            raise ExportError(f"associated file {file} is written by add_metadata itself; pass it another name")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ExportError(f"associated file {file}: expected bytes, got {type(data).__name__}")
        checked[file] = (bytes(data), str(text))
    return checked


def _check_tensors(tree, size: int, channels: int, input_dtype: str, num_classes: int):
    """The single input and output tensor (``TensorT``) after checking them against the arguments."""
    if len(tree.subgraphs or []) != 1:
        raise ExportError(f"the model has {len(tree.subgraphs or [])} subgraphs; TFLite metadata describes one")
    graph = tree.subgraphs[0]
    inputs, outputs = list(graph.inputs if graph.inputs is not None else []), \
        list(graph.outputs if graph.outputs is not None else [])
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(f"the model has {len(inputs)} inputs and {len(outputs)} outputs; expected one of each")
    input_tensor, output_tensor = graph.tensors[inputs[0]], graph.tensors[outputs[0]]
    shape = [int(d) for d in (input_tensor.shape if input_tensor.shape is not None else [])]
    if shape != [1, size, size, channels]:
        raise ExportError(f"the model's input has shape {shape}; image_size={size}, channels={channels} "
                          f"describe [1, {size}, {size}, {channels}]")
    if input_tensor.type != _TENSOR_TYPES[input_dtype]:
        raise ExportError(f"the model's input is not {input_dtype} (TFLite tensor type {input_tensor.type})")
    shape = [int(d) for d in (output_tensor.shape if output_tensor.shape is not None else [])]
    if shape != [1, num_classes]:
        raise ExportError(f"the model's output has shape {shape}; "
                          f"{num_classes} class names describe [1, {num_classes}]")
    return input_tensor, output_tensor


# ---- reading ---------------------------------------------------------------------------------------
def read_metadata(model: Union[bytes, PathLike]) -> dict:
    """The metadata of a ``.tflite`` file or buffer, with its packed files.

    Returns:
        ``{"name", "description", "version", "author", "license", "min_parser_version",
        "input": {"name", "normalization": {"mean", "std"} or None, "stats": {"min", "max"},
        "color_space", "default_size": {"width", "height"}},
        "output": {"name", "labels_file", "stats"},
        "associated_files": [names recorded in the metadata: the input's, the output's, the
        subgraph's, then the model's],
        "labels": [the classes of the packed labels file], "files": {name: bytes of each packed file}}``.

    Raises:
        ExportError: not a TFLite model, no metadata, a corrupt metadata flatbuffer, or a file the
            metadata names that is not packed in the model.
    """
    what = "the model"
    if not isinstance(model, (bytes, bytearray, memoryview)):
        what = str(model)
        try:
            model = Path(model).read_bytes()
        except OSError as e:
            raise ExportError(f"cannot read {what}: {e.strerror or e}") from None
    model = bytes(model)
    root = _model_root(model, what)
    try:
        data = _metadata_buffer(root)
    except Exception as e:  # corrupt offsets surface as IndexError/struct.error anywhere in the walk
        raise ExportError(f"{what} is not a readable TFLite flatbuffer ({type(e).__name__}: {e})") from None
    if data is None:
        raise ExportError(f"{what} has no TFLite metadata (no {METADATA_NAME} entry)")
    if len(data) < 8 or data[4:8] != METADATA_IDENTIFIER:
        raise ExportError(f"{what}: the {METADATA_NAME} buffer is not a metadata flatbuffer "
                          f"(identifier {bytes(data[4:8])!r}, expected {METADATA_IDENTIFIER!r})")
    try:
        buffer = bytearray(data)
        table = _read_table(buffer, encode.Get(packer.uoffset, buffer, 0), "ModelMetadata")
    except Exception as e:
        raise ExportError(f"{what}: corrupt {METADATA_NAME} flatbuffer ({type(e).__name__}: {e})") from None
    files = _packed_files(model, what)
    return _summary(table, files, what)


def _summary(table: dict, files: dict, what: str) -> dict:
    subgraphs = table.get("subgraph_metadata") or []
    if len(subgraphs) != 1:
        raise ExportError(f"{what}: the metadata describes {len(subgraphs)} subgraphs; expected one")
    inputs = subgraphs[0].get("input_tensor_metadata") or []
    outputs = subgraphs[0].get("output_tensor_metadata") or []
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(f"{what}: the metadata describes {len(inputs)} inputs and {len(outputs)} outputs; "
                          "expected one of each")
    (input_meta,), (output_meta,) = inputs, outputs
    content = (input_meta.get("content") or {}).get("content_properties")
    image = content[1] if content and content[0] == "ImageProperties" else {}
    normalization = None
    for unit in input_meta.get("process_units") or []:
        options = unit.get("options")
        if options and options[0] == "NormalizationOptions":
            normalization = {"mean": list(options[1].get("mean") or []), "std": list(options[1].get("std") or [])}
            break
    color = image.get("color_space") or 0
    output_files = output_meta.get("associated_files") or []
    labels_file = next((f.get("name") for f in output_files
                        if f.get("type") == ASSOCIATED_FILE_TYPES.index("TENSOR_AXIS_LABELS")), None)
    everywhere = ((input_meta.get("associated_files") or []) + output_files
                  + (subgraphs[0].get("associated_files") or []) + (table.get("associated_files") or []))
    recorded = [f.get("name") for f in everywhere]
    missing = [f for f in recorded if f not in files]
    if missing:
        raise ExportError(f"{what}: {', '.join(missing)} named in the metadata but not packed in the model file")
    labels = None
    if labels_file is not None:
        try:
            labels = [line for line in files[labels_file].decode("utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as e:
            raise ExportError(f"{what}: {labels_file} is not UTF-8 text ({e})") from None
    return {
        "name": table.get("name"), "description": table.get("description"), "version": table.get("version"),
        "author": table.get("author"), "license": table.get("license"),
        "min_parser_version": table.get("min_parser_version"),
        "input": {"name": input_meta.get("name"), "normalization": normalization,
                  "stats": _stats(input_meta.get("stats")),
                  "color_space": COLOR_SPACES[color] if 0 <= color < len(COLOR_SPACES) else str(color),
                  "default_size": image.get("default_size")},
        "output": {"name": output_meta.get("name"), "labels_file": labels_file,
                   "stats": _stats(output_meta.get("stats"))},
        "associated_files": recorded,
        "labels": labels,
        "files": files,
    }


def _stats(stats: Optional[dict]) -> Optional[dict]:
    if stats is None:
        return None
    return {"min": list(stats.get("min") or []), "max": list(stats.get("max") or [])}


def _model_root(model: bytes, what: str):
    if not isinstance(model, (bytes, bytearray, memoryview)):
        raise ExportError(f"{what} must be bytes of a .tflite file, got {type(model).__name__}")
    if len(model) < 8 or bytes(model[4:8]) != MODEL_IDENTIFIER:
        raise ExportError(f"{what} is not a TFLite model (no {MODEL_IDENTIFIER.decode()} flatbuffer identifier)")
    return _tflite_schema().Model.GetRootAs(bytes(model), 0)


def _metadata_buffer(root) -> Optional[bytes]:
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        if (entry.Name() or b"").decode("utf-8", "replace") == METADATA_NAME:
            return root.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


def _packed_files(model: bytes, what: str) -> dict:
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        return {}
    except Exception as e:  # a damaged archive: bad CRC, truncated member
        raise ExportError(f"{what}: the files packed after the model cannot be read "
                          f"({type(e).__name__}: {e})") from None


def _read_table(data: bytearray, position: int, table: str) -> dict:
    """One table as ``{field: value}`` for the fields present; unions as ``(member, dict or None)``."""
    tab = Table(data, position)
    values = {}
    for slot, (field, kind) in enumerate(_SCHEMA[table]):
        offset = tab.Offset(4 + 2 * slot)
        if not offset:
            continue
        at = tab.Pos + offset
        if kind in _SCALARS:
            values[field] = int(tab.Get(_SCALARS[kind], at))
        elif kind == "string":
            values[field] = tab.String(at).decode("utf-8")
        elif kind.startswith("union:"):
            members = _UNIONS[kind[6:]]
            code = values.get(f"{field}_type", 0)
            member = members[code - 1] if 0 < code <= len(members) else f"#{code}"
            values[field] = (member, _read_table(data, tab.Indirect(at), member) if member in _SCHEMA else None)
        elif kind.startswith("["):
            start, count = tab.Vector(offset), tab.VectorLen(offset)
            element = kind[1:-1]
            if element == "float":
                values[field] = [float(tab.Get(number_types.Float32Flags, start + 4 * i)) for i in range(count)]
            elif element == "string":
                values[field] = [tab.String(start + 4 * i).decode("utf-8") for i in range(count)]
            else:
                values[field] = [_read_table(data, tab.Indirect(start + 4 * i), element) for i in range(count)]
        else:
            values[field] = _read_table(data, tab.Indirect(at), kind)
    return values


def _tflite_schema():
    # The generated TFLite schema (the module TensorFlow ships as tensorflow.lite.python.
    # schema_py_generated) in the copy of the runtime, ai-edge-litert: it is the newer one (float8
    # types, multi-axis and blockwise quantisation), and ModelT drops fields its schema lacks.
    # It also keeps read_metadata free of a TensorFlow import.
    from ai_edge_litert import schema_py_generated as schema

    return schema


def labels_text(class_names: Sequence[str]) -> str:
    """The ``labels.txt`` content for ``class_names``: one class a line, in output order."""
    return "".join(f"{c}\n" for c in _check_class_names(class_names))
