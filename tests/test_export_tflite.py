"""TFLite export: each quantisation runs in ai_edge_litert, builtin ops only, close to Keras."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import export_support as support

REPO = Path(__file__).resolve().parents[1]
# (quantize, uint8_input, allowed max |p_tflite - p_keras|): float32 and float16 as the export
# promises; the int8 variants' error is printed and held to the exporter's loose bound.
VARIANTS = [("none", False, 1e-4), ("none", True, 1e-4), ("float16", False, 1e-2),
            ("dynamic", False, 0.15), ("int8", False, 0.15), ("int8", True, 0.15)]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tflite")


@pytest.fixture(scope="module")
def check_files(chestxray14_dir):
    # Images the exporter did not see (it calibrated and checked on the first NUM_REAL).
    return sorted((chestxray14_dir / "images").glob("*.png"))[support.NUM_REAL:support.NUM_REAL + 6]


@pytest.mark.parametrize("quantize,uint8_input,tolerance", VARIANTS,
                         ids=[f"{q}{'-uint8' if u else ''}" for q, u, _ in VARIANTS])
def test_variant_runs_in_litert_close_to_keras(quantize, uint8_input, tolerance, out_dir, chestxray14_dir,
                                               check_files, capsys):
    from ai_edge_litert.interpreter import Interpreter

    from can_tf.export.source import preprocess_files
    from can_tf.export.tflite import flex_ops, run_tflite

    result = support_export(out_dir, chestxray14_dir, quantize, uint8_input)
    assert result.path.is_file() and result.path.name == f"can_{quantize}{'_uint8' if uint8_input else ''}.tflite"
    assert result.max_abs_error <= tolerance
    assert flex_ops(result.path) == []
    assert not [op for op in result.ops if op.startswith("Flex")]

    interpreter = Interpreter(model_path=str(result.path))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(inp["shape"]) == [1, support.IMAGE_SIZE, support.IMAGE_SIZE, 1]
    assert inp["dtype"] == (np.uint8 if uint8_input else np.float32)
    assert list(out["shape"]) == [1, 14] and out["dtype"] == np.float32

    # An independent check on other real images than the exporter used.
    images = preprocess_files(check_files, support.IMAGE_SIZE)
    expected = support.tiny_source().probabilities(images)
    error = float(np.abs(run_tflite(result.path, images) - expected).max())
    # A model that ignored its input would be off by the spread of the Keras outputs across images.
    input_blind = float(np.abs(expected - expected.mean(axis=0)).max())
    with capsys.disabled():
        print(f"\n  TFLite {quantize}{' uint8 input' if uint8_input else ''}: {result.size_bytes} bytes, "
              f"max |p - p_keras| {error:.2e} on {len(images)} real images (input-blind model: {input_blind:.2e})")
    assert error <= tolerance
    if quantize in ("dynamic", "int8"):
        assert error < 0.5 * input_blind


def support_export(out_dir, chestxray14_dir, quantize, uint8_input):
    from can_tf.export.tflite import export_tflite

    return export_tflite(support.tiny_source(), out_dir, quantize=quantize, uint8_input=uint8_input,
                         images=support.real_images(chestxray14_dir), num_verify=support.NUM_REAL)


def test_companion_files(out_dir, chestxray14_dir):
    from can_tf.labels import CLASS_NAMES

    target = out_dir / "can_none.tflite"
    if not target.exists():
        support_export(out_dir, chestxray14_dir, "none", False)
    assert (out_dir / "labels.txt").read_text().split() == list(CLASS_NAMES)
    thresholds = json.loads((out_dir / "thresholds.json").read_text())["thresholds"]
    assert [thresholds[c] for c in CLASS_NAMES] == support.THRESHOLDS
    metadata = json.loads((out_dir / "can_none.json").read_text())
    assert metadata["input"]["shape"] == [1, support.IMAGE_SIZE, support.IMAGE_SIZE, 1]
    assert metadata["input"]["dtype"] == "float32" and metadata["model_file"] == "can_none.tflite"
    assert not [p.name for p in out_dir.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_existing_file_is_not_overwritten_without_flag(tmp_path, chestxray14_dir):
    from can_tf.export import ExportError
    from can_tf.export.tflite import export_tflite

    target = tmp_path / "can_float16.tflite"
    target.write_bytes(b"an earlier model")
    with pytest.raises(ExportError, match="already exists.*--overwrite"):
        export_tflite(support.tiny_source(), tmp_path, quantize="float16",
                      images=support.real_images(chestxray14_dir, 2))
    assert target.read_bytes() == b"an earlier model"
    result = export_tflite(support.tiny_source(), tmp_path, quantize="float16", overwrite=True,
                           images=support.real_images(chestxray14_dir, 2))
    assert result.path == target and target.read_bytes()[4:8] == b"TFL3"  # the flatbuffer identifier


def test_failed_check_leaves_nothing(tmp_path, chestxray14_dir):
    from can_tf.export import ExportError
    from can_tf.export.tflite import export_tflite

    with pytest.raises(ExportError, match="differs from the Keras model"):
        export_tflite(support.tiny_source(), tmp_path, quantize="int8", tolerance=0.0,
                      images=support.real_images(chestxray14_dir, 2))
    assert list(tmp_path.iterdir()) == []


def test_int8_needs_real_images():
    from can_tf.export import ExportError
    from can_tf.export.tflite import convert_tflite

    with pytest.raises(ExportError, match="calibration images"):
        convert_tflite(support.tiny_source(), "int8", calibration=None)
    with pytest.raises(ExportError, match="--quantize must be one of"):
        convert_tflite(support.tiny_source(), "int4")


def test_edge_infer_script_runs_without_tensorflow(tmp_path, chestxray14_dir):
    from can_tf.export.source import preprocess_files
    from can_tf.export.tflite import export_tflite

    result = export_tflite(support.tiny_source(), tmp_path, quantize="none", uint8_input=True,
                           images=support.real_images(chestxray14_dir, 2))
    image = sorted((chestxray14_dir / "images").glob("*.png"))[10]
    script = REPO / "exports" / "tflite" / "edge_infer.py"
    # Runs the script as __main__ and then proves TensorFlow was never imported.
    code = "\n".join([
        "import runpy, sys",
        "sys.argv = sys.argv[1:]",
        "try:",
        "    runpy.run_path(sys.argv[0], run_name='__main__')",
        "except SystemExit as e:",
        "    assert not e.code, e.code",
        "assert 'tensorflow' not in sys.modules, 'edge_infer imported tensorflow'",
        "assert not [m for m in sys.modules if m.startswith('can_tf')], 'edge_infer imported can_tf'",
    ])
    run = subprocess.run([sys.executable, "-c", code, str(script), str(result.path), str(image), "--json"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert run.returncode == 0, run.stderr[-3000:]
    output = json.loads(run.stdout.strip().splitlines()[-1])
    from can_tf.labels import CLASS_NAMES

    assert list(output["probabilities"]) == list(CLASS_NAMES)
    probabilities = np.array(list(output["probabilities"].values()))
    expected = support.tiny_source().probabilities(preprocess_files([image], support.IMAGE_SIZE))[0]
    # Pillow's antialiased bilinear resize is not bit-identical to TensorFlow's: a loose bound.
    np.testing.assert_allclose(probabilities, expected, atol=2e-2, rtol=0)
    thresholds = dict(zip(CLASS_NAMES, support.THRESHOLDS))
    assert output["findings"] == [c for c, p in output["probabilities"].items() if p >= thresholds[c]]


def test_cli_tflite(tmp_path, chestxray14_dir):
    from click.testing import CliRunner

    from can_tf_cli.main import main

    args = ["export", str(support.keras_file()), "--format", "tflite", "--quantize", "dynamic",
            "--out", str(tmp_path), "--calibration-data", str(support.real_images(chestxray14_dir, 1)[0])]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "can_dynamic.tflite").is_file() and "quantize=dynamic" in result.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "already exists" in again.output
    wrong = CliRunner().invoke(main, args + ["--version", "3"])
    assert wrong.exit_code != 0 and "--version" in wrong.output


def test_export_from_run_directory_uses_its_train_split_and_thresholds(tmp_path, chestxray14_dir):
    """A run directory as training writes it: config, splits, best.keras, thresholds.json."""
    from can_tf.config import RunConfig
    from can_tf.data.splits import make_splits, write_splits
    from can_tf.data.table import load_table
    from can_tf.evaluation.thresholds import Thresholds
    from can_tf.export.source import load_source, sample_images
    from can_tf.export.tflite import export_tflite
    from can_tf.labels import CLASS_NAMES

    run = tmp_path / "run"
    run.mkdir()
    config = RunConfig.from_preset("small", overrides=[f"data.source={chestxray14_dir}"])
    config.save(str(run / "config.yaml"))
    df, _ = load_table(config.data)
    splits = make_splits(df, config.data)
    write_splits(splits, run)
    support.tiny_model().save(run / "best.keras")
    values = [0.2] * 13 + [0.7]
    Thresholds(class_names=tuple(CLASS_NAMES), method="fixed", values=values).to_json(run / "thresholds.json")

    source = load_source(run)
    assert source.run_dir == run and source.thresholds == values and source.image_size == support.IMAGE_SIZE
    samples = sample_images(source, limit=3)
    train_names = set(splits["train"]["image_index"])
    assert len(samples.paths) == 3 and all(p.name in train_names for p in samples.paths)

    result = export_tflite(run, tmp_path / "out", quantize="int8", num_calibration=8, num_verify=4)
    assert result.max_abs_error <= 0.15 and result.num_images == 4
    assert json.loads((tmp_path / "out" / "thresholds.json").read_text())["thresholds"]["Hernia"] == 0.7


def test_bad_sources_are_named(tmp_path):
    from can_tf.export import ExportError
    from can_tf.export.source import load_source

    with pytest.raises(ExportError, match="does not exist"):
        load_source(tmp_path / "missing.keras")
    with pytest.raises(ExportError, match="not a run directory"):
        load_source(tmp_path)
    (tmp_path / "model.h5").write_bytes(b"x")
    with pytest.raises(ExportError, match="not a run directory or a .keras file"):
        load_source(tmp_path / "model.h5")
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(ExportError, match="cannot load the Keras model .*broken.keras"):
        load_source(tmp_path / "broken.keras")


def test_run_export_carries_its_provenance_and_names_the_images(tmp_path, phantom_dir):
    import copy

    from run_helpers import make_run_dir

    from can_tf.export.source import load_source
    from can_tf.export.tflite import export_tflite
    from can_tf.provenance import PHANTOM_WARNING

    run = make_run_dir(tmp_path / "run", phantom_dir)  # trained (untrained here) on phantom images
    out = tmp_path / "out"
    result = export_tflite(run, out, num_verify=2)
    recorded = json.loads((run / "provenance.json").read_text())
    assert recorded["data"]["phantom"] is True
    assert json.loads((out / "can_none.provenance.json").read_text()) == recorded
    assert json.loads((out / "can_none.json").read_text())["provenance"] == "can_none.provenance.json"
    summary = result.summary().splitlines()
    # The run's own training images, named by the data they come from; never "real" for phantoms.
    assert f"on 2 images of {recorded['data']['description']} " in summary[0]
    assert "real images" not in result.summary() and summary[-1] == PHANTOM_WARNING

    source = load_source(run)
    source.provenance = copy.deepcopy(recorded)
    source.provenance["data"].update(phantom=False, description="/data/ChestX-ray14")  # as a real-data run
    real = export_tflite(source, out, num_verify=2, overwrite=True)
    assert "on 2 images of /data/ChestX-ray14 " in real.summary() and PHANTOM_WARNING not in real.summary()
    assert json.loads((out / "can_none.provenance.json").read_text())["data"]["phantom"] is False


def test_exported_file_carries_metadata_matching_its_companions(out_dir, chestxray14_dir):
    from can_tf.export.tflite_metadata import read_metadata
    from can_tf.labels import CLASS_NAMES

    target = out_dir / "can_none.tflite"
    if not target.exists():
        support_export(out_dir, chestxray14_dir, "none", False)
    info = read_metadata(target)
    assert info["name"] == "can_none" and info["author"] == "can-tf" and info["license"]
    assert info["input"]["name"] == "image" and info["output"]["name"] == "probabilities"
    assert info["input"]["normalization"] == {"mean": [0.0], "std": [1.0]}
    assert info["input"]["default_size"] == {"width": support.IMAGE_SIZE, "height": support.IMAGE_SIZE}
    assert info["labels"] == list(CLASS_NAMES)
    # The packed files are the companions' very text.
    assert info["files"]["labels.txt"] == (out_dir / "labels.txt").read_bytes()
    assert info["files"]["thresholds.json"] == (out_dir / "thresholds.json").read_bytes()
    # No card given: the source's own (a model without a run: no evaluation in it).
    assert info["associated_files"] == ["labels.txt", "thresholds.json", "model_card.json"]
    assert info["files"]["model_card.json"] == (out_dir / "can_none.model_card.json").read_bytes()
    assert info["files"]["thresholds.json"] == support.tiny_source().threshold_set().to_text().encode()


def test_model_card_is_packed_and_a_bad_one_refused(tmp_path, chestxray14_dir):
    from can_tf.export import ExportError
    from can_tf.export.tflite import export_tflite
    from can_tf.export.tflite_metadata import read_metadata

    card = json.dumps({"model_details": {"name": "can"}}).encode()
    result = export_tflite(support.tiny_source(thresholds=None), tmp_path / "ok", uint8_input=True,
                           images=support.real_images(chestxray14_dir, 2), num_verify=2, model_card=card)
    info = read_metadata(result.path)
    assert info["associated_files"] == ["labels.txt", "model_card.json"]  # no thresholds: none packed
    assert info["files"]["model_card.json"] == card and info["input"]["normalization"] is None
    assert result.size_bytes == result.path.stat().st_size
    with pytest.raises(ExportError, match="model_card is not valid JSON"):
        export_tflite(support.tiny_source(), tmp_path / "bad", images=support.real_images(chestxray14_dir, 1),
                      num_verify=1, model_card=b"{not json")
    assert not (tmp_path / "bad").exists()


def test_metadata_that_changed_the_outputs_is_not_published(tmp_path, chestxray14_dir, monkeypatch):
    from can_tf.export import ExportError, tflite

    calls = []
    real = tflite.run_tflite

    def run_tflite(model, images, batch_size=1):
        calls.append(model)
        result = real(model, images, batch_size)
        return result if len(calls) == 1 else result + np.float32(1e-6)  # the packed file, off by 1e-6

    monkeypatch.setattr(tflite, "run_tflite", run_tflite)
    with pytest.raises(ExportError, match="other outputs once its metadata is added .*nothing was written"):
        tflite.export_tflite(support.tiny_source(), tmp_path / "out", images=support.real_images(chestxray14_dir, 1),
                             num_verify=1)
    assert len(calls) == 2 and calls[1][4:8] == b"TFL3" and b"TFLITE_METADATA" in calls[1]
    assert not (tmp_path / "out").exists()


# ---- the RGB variant (LiteRT Task Library, Android Studio) ---------------------------------------
def _interpreter_run(path, images):
    """``ai_edge_litert`` directly, one image at a time: no can-tf code between the file and the numbers."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    rows = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.stack(rows), inp


@pytest.mark.parametrize("uint8_input", [False, True], ids=["float32", "uint8"])
def test_rgb_variant_computes_what_the_gray_export_computes(uint8_input, out_dir, chestxray14_dir, check_files):
    from can_tf.export.source import preprocess_files
    from can_tf.export.tflite import export_tflite
    from can_tf.export.tflite_metadata import read_metadata

    gray = out_dir / f"can_none{'_uint8' if uint8_input else ''}.tflite"
    if not gray.exists():
        support_export(out_dir, chestxray14_dir, "none", uint8_input)
    result = export_tflite(support.tiny_source(), out_dir, uint8_input=uint8_input, rgb_input=True,
                           images=support.real_images(chestxray14_dir), num_verify=2)
    stem = f"can_none{'_uint8' if uint8_input else ''}_rgb"
    assert result.path == out_dir / f"{stem}.tflite" and result.rgb_input and result.max_abs_error <= 1e-4
    assert "RGB" in result.summary()

    images = np.round(preprocess_files(check_files, support.IMAGE_SIZE))  # integers: the same for uint8
    expected, _ = _interpreter_run(gray, images)
    actual, inp = _interpreter_run(result.path, np.repeat(images, 3, axis=-1))
    assert list(inp["shape"]) == [1, support.IMAGE_SIZE, support.IMAGE_SIZE, 3]
    assert inp["dtype"] == (np.uint8 if uint8_input else np.float32)
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)
    assert np.abs(expected - expected.mean(axis=0)).max() > 1e-3  # the images give different outputs

    # A colour image: the model's gray is the pipeline's luminance, channels in R, G, B order.
    # Made from the radiographs so the channels differ a lot: R the image, G shifted, B its negative.
    colour = np.concatenate([images, np.roll(images, 7, axis=1), 255.0 - images], axis=-1)[:2]
    luminance = colour @ np.array([0.299, 0.587, 0.114], np.float32)
    if not uint8_input:
        reference, _ = _interpreter_run(gray, luminance[..., None])
        np.testing.assert_allclose(_interpreter_run(result.path, colour)[0], reference, atol=1e-5, rtol=0)
        swapped, _ = _interpreter_run(gray, (colour[..., ::-1] @ np.array([0.299, 0.587, 0.114]))[..., None])
        assert np.abs(swapped - reference).max() > 1e-3  # BGR order would have been caught

    described = json.loads((out_dir / f"{stem}.json").read_text())
    assert described["model_file"] == f"{stem}.tflite"
    assert described["input"]["shape"] == [1, support.IMAGE_SIZE, support.IMAGE_SIZE, 3]
    assert described["input"]["channels"] == 3
    assert described["input"]["color"] == "RGB (converted to gray inside the model)"
    info = read_metadata(result.path)
    assert info["name"] == stem and info["input"]["color_space"] == "RGB"
    assert info["input"]["normalization"] == (None if uint8_input else {"mean": [0.0], "std": [1.0]})
    assert "RGB (converted to gray inside the model" in info["description"]
    assert read_metadata(gray)["input"]["color_space"] == "GRAYSCALE"


def test_rgb_int8_is_calibrated_and_checked(tmp_path, chestxray14_dir, check_files):
    from can_tf.export.source import preprocess_files
    from can_tf.export.tflite import export_tflite, run_tflite

    result = export_tflite(support.tiny_source(), tmp_path, quantize="int8", uint8_input=True, rgb_input=True,
                           images=support.real_images(chestxray14_dir), num_verify=support.NUM_REAL)
    assert result.path.name == "can_int8_uint8_rgb.tflite" and result.max_abs_error <= 0.15
    images = preprocess_files(check_files, support.IMAGE_SIZE)
    expected = support.tiny_source().probabilities(np.round(images))
    error = float(np.abs(run_tflite(result.path, images) - expected).max())  # gray in, R = G = B
    assert error < 0.5 * float(np.abs(expected - expected.mean(axis=0)).max())  # not an input-blind model


def test_cli_rgb_input(tmp_path, chestxray14_dir):
    from click.testing import CliRunner

    from can_tf_cli.main import main

    wrong = CliRunner().invoke(main, ["export", str(support.keras_file()), "--rgb-input", "--out", str(tmp_path)])
    assert wrong.exit_code == 2
    errors = [line for line in wrong.output.splitlines() if line.startswith("Error")]
    assert errors == ["Error: --quantize, --uint8-input, --rgb-input and --overwrite apply to --format tflite "
                      "only (SavedModel versions are never overwritten; omit --version for a new one)"]
    assert list(tmp_path.iterdir()) == []
    args = ["export", str(support.keras_file()), "--format", "tflite", "--rgb-input", "--out", str(tmp_path),
            "--calibration-data", str(support.real_images(chestxray14_dir, 1)[0])]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "can_none_rgb.tflite").is_file() and "input float32 RGB" in result.output
