"""SavedModel export: signatures match Keras on real images, TF Serving layout, safety guards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import export_support as support


@pytest.fixture(scope="module")
def export(chestxray14_dir):
    return support.saved_model_export(chestxray14_dir)


@pytest.fixture(scope="module")
def loaded(export):
    import tensorflow as tf

    return tf.saved_model.load(str(export[1].path))


def test_layout_and_verification_report(export):
    base, result = export
    assert result.path == base / "can" / "1" and result.version == 1
    assert (result.path / "saved_model.pb").is_file()
    # Nothing but the published version is left in the model folder (no staging folders).
    assert sorted(p.name for p in (base / "can").iterdir()) == ["1"]
    report = result.verification
    assert report.num_images == support.NUM_REAL + 3
    assert set(report.max_abs_error) == {"serving_default", "serving_images"}
    assert max(report.max_abs_error.values()) <= 1e-4
    # Weights held once: the checkpoint's scalars are exactly the fused-logits graph's weights.
    model_weights = sum(int(np.prod(w.shape)) for w in support.tiny_source().logits_model().weights)
    assert report.checkpoint_scalars == report.model_scalars == model_weights


def test_checkpoint_has_no_optimizer_state_and_no_duplicates(export):
    import tensorflow as tf

    keys = [name for name, _ in tf.train.list_variables(str(export[1].path / "variables" / "variables"))]
    assert not [k for k in keys if "OPTIMIZER" in k.upper()]
    weights = support.tiny_source().logits_model().weights
    assert len([k for k in keys if k != "_CHECKPOINTABLE_OBJECT_GRAPH"]) == len(weights)


def test_both_signatures_match_keras_on_real_images(loaded, chestxray14_dir):
    import tensorflow as tf

    from can_tf.export.source import preprocess_files

    files = support.sample_files(chestxray14_dir)
    expected = support.keras_probabilities(files)
    # The model must tell the images apart, else agreeing with it would prove little.
    assert np.ptp(expected, axis=0).max() > 1e-3
    by_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant([p.read_bytes() for p in files]))
    np.testing.assert_allclose(by_bytes["probabilities"].numpy(), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(tf.sigmoid(by_bytes["logits"]).numpy(), expected, atol=1e-4, rtol=0)
    images = preprocess_files(files, support.IMAGE_SIZE)
    by_tensor = loaded.signatures["serving_images"](images=tf.constant(images))
    np.testing.assert_allclose(by_tensor["probabilities"].numpy(), expected, atol=1e-4, rtol=0)


def test_image_signature_resizes_and_converts_colour(loaded, chestxray14_dir):
    import tensorflow as tf
    from PIL import Image

    path = support.real_images(chestxray14_dir, 1)[0]
    gray = np.asarray(Image.open(path).convert("L"), np.float32)  # 512 x 512
    expected = support.keras_probabilities([path])
    full_size = loaded.signatures["serving_images"](images=tf.constant(gray[None, :, :, None]))
    np.testing.assert_allclose(full_size["probabilities"].numpy(), expected, atol=1e-4, rtol=0)
    colour = np.repeat(gray[None, :, :, None], 3, axis=-1)  # R = G = B: luminance is the gray value
    by_colour = loaded.signatures["serving_images"](images=tf.constant(colour))
    np.testing.assert_allclose(by_colour["probabilities"].numpy(), expected, atol=1e-4, rtol=0)


def test_metadata_and_assets(loaded, export):
    from can_tf.labels import CLASS_NAMES

    metadata = loaded.signatures["metadata"]()
    assert [c.decode() for c in metadata["class_names"].numpy()] == list(CLASS_NAMES)
    np.testing.assert_allclose(metadata["thresholds"].numpy(), support.THRESHOLDS, atol=1e-6)
    assert int(metadata["image_size"]) == support.IMAGE_SIZE
    assets = export[1].path / "assets"
    assert (assets / "labels.txt").read_text().split() == list(CLASS_NAMES)
    thresholds = json.loads((assets / "thresholds.json").read_text())["thresholds"]
    assert [thresholds[c] for c in CLASS_NAMES] == support.THRESHOLDS


@pytest.mark.parametrize("kind", ["header_only", "real_20000px"])
def test_decompression_bomb_is_refused_undecoded(loaded, kind):
    import tensorflow as tf

    data = support.png_bomb_header() if kind == "header_only" else support.black_png(20_000)
    with pytest.raises(tf.errors.InvalidArgumentError, match="request image 0: image too large: "):
        loaded.signatures["serving_default"](image_bytes=tf.constant([data]))


def test_non_image_bytes_are_refused(loaded):
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError, match="request image 0: not a PNG, JPEG or DICOM image"):
        loaded.signatures["serving_default"](image_bytes=tf.constant([b"GIF89a" + b"\0" * 40]))


def test_jpeg_size_is_read_from_its_header(chestxray14_dir):
    import tensorflow as tf

    from can_tf.images import image_header_size

    path = support.real_images(chestxray14_dir, 1)[0]
    assert image_header_size(tf.constant(support.jpeg_bytes(path))).numpy().tolist() == [512, 512]
    assert image_header_size(tf.constant(path.read_bytes())).numpy().tolist() == [512, 512]
    assert image_header_size(tf.constant(support.png_bomb_header(300, 200))).numpy().tolist() == [200, 300]


def test_saved_model_cli_lists_the_signatures(export):
    run = subprocess.run(["saved_model_cli", "show", "--dir", str(export[1].path), "--all"],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert run.returncode == 0, run.stderr[-2000:]
    text = run.stdout
    default = text[text.index("signature_def['serving_default']"):]
    default = default[:default.index("Method name is")]
    assert "inputs['image_bytes']" in default and "dtype: DT_STRING" in default and "shape: (-1)" in default
    for output in ("probabilities", "logits"):
        block = default[default.index(f"outputs['{output}']"):]
        assert "dtype: DT_FLOAT" in block[:200] and "shape: (-1, 14)" in block[:200]
    assert "signature_def['serving_images']" in text and "inputs['images']" in text
    assert "signature_def['metadata']" in text


def test_tf1_session_loader_runs_serving_default_like_tf_serving(export, chestxray14_dir):
    # TF Serving loads a SavedModel through the TF1 C++ loader: 'serve' tag, signature tensor names.
    code = r"""
import json, sys
import numpy as np
import tensorflow as tf
path, files = sys.argv[1], json.loads(sys.argv[2])
with tf.compat.v1.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as sess:
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
    sig = meta.signature_def["serving_default"]
    feed = {sig.inputs["image_bytes"].name: [open(f, "rb").read() for f in files]}
    probs = sess.run(sig.outputs["probabilities"].name, feed_dict=feed)
print(json.dumps(probs.tolist()))
"""
    files = support.sample_files(chestxray14_dir)
    run = subprocess.run([sys.executable, "-c", code, str(export[1].path), json.dumps([str(f) for f in files])],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert run.returncode == 0, run.stderr[-3000:]
    probs = np.array(json.loads(run.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(probs, support.keras_probabilities(files), atol=1e-4, rtol=0)


def test_cli_next_version_then_never_overwrites(chestxray14_dir, tmp_path):
    from click.testing import CliRunner

    from can_tf_cli.main import main

    base = tmp_path / "serving"
    (base / "cxr" / "1").mkdir(parents=True)  # an earlier version
    (base / "cxr" / "1" / "saved_model.pb").write_bytes(b"earlier")
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{f}\n" for f in support.real_images(chestxray14_dir, 2)))
    runner = CliRunner()
    args = ["export", str(support.keras_file()), "--format", "saved_model", "--out", str(base),
            "--name", "cxr", "--calibration-data", str(listing)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "version 2" in result.output and f"verified in a fresh process on 2 images from {listing}" in result.output
    assert "real images" not in result.output  # the summary says where the images came from instead
    assert sorted(p.name for p in (base / "cxr").iterdir()) == ["1", "2"]
    assert (base / "cxr" / "2" / "assets" / "labels.txt").is_file()

    again = runner.invoke(main, args + ["--version", "1"])
    assert again.exit_code != 0 and "version 1 already exists" in again.output
    assert (base / "cxr" / "1" / "saved_model.pb").read_bytes() == b"earlier"
    assert sorted(p.name for p in (base / "cxr").iterdir()) == ["1", "2"]


def test_failed_verification_leaves_nothing(chestxray14_dir, tmp_path, monkeypatch):
    from can_tf.export import ExportError, verify
    from can_tf.export.saved_model import export_saved_model

    def mismatch(name, actual, expected, atol):
        raise verify.VerificationError(f"{name} differs from the Keras model (forced by the test)")

    monkeypatch.setattr(verify, "check_close", mismatch)
    with pytest.raises(ExportError, match="not published.*forced by the test"):
        export_saved_model(support.tiny_source(), tmp_path, name="can",
                           images=support.real_images(chestxray14_dir, 2))
    assert list(tmp_path.iterdir()) == []


def test_failed_export_into_existing_model_keeps_other_versions(export, chestxray14_dir, tmp_path):
    from can_tf.export import ExportError
    from can_tf.export.saved_model import export_saved_model

    (tmp_path / "can" / "1").mkdir(parents=True)
    broken = tmp_path / "broken.png"
    broken.write_bytes(support.real_images(chestxray14_dir, 1)[0].read_bytes()[:200])  # truncated
    with pytest.raises(ExportError, match="broken.png"):
        export_saved_model(support.tiny_source(), tmp_path, name="can", images=[broken])
    assert sorted(p.name for p in (tmp_path / "can").iterdir()) == ["1"]


def test_existing_version_is_refused_before_any_work(tmp_path):
    from can_tf.export import ExportError
    from can_tf.export.versioning import check_version_free, next_version

    (tmp_path / "can" / "3").mkdir(parents=True)
    (tmp_path / "can" / ".staging-4-abc").mkdir()  # a staging folder is not a version
    assert next_version(tmp_path / "can") == 4
    with pytest.raises(ExportError, match="version 3 already exists"):
        check_version_free(tmp_path / "can", 3)
    with pytest.raises(ExportError, match="positive integer"):
        check_version_free(tmp_path / "can", 0)


def test_provenance_travels_with_the_export_and_the_summary_names_phantom_data(chestxray14_dir, tmp_path):
    from can_tf.config import RunConfig
    from can_tf.export.saved_model import export_saved_model
    from can_tf.provenance import PHANTOM_WARNING, build_provenance

    source = support.tiny_source()
    source.provenance = build_provenance(RunConfig.from_preset("small"))  # trained on the phantom
    images = support.real_images(chestxray14_dir, 2)
    result = export_saved_model(source, tmp_path, images=images)
    record = json.loads((result.path / "assets.extra" / "provenance.json").read_text())
    assert record == json.loads(json.dumps(source.provenance)) and record["data"]["phantom"] is True
    summary = result.summary().splitlines()
    assert f"verified in a fresh process on 2 images from {images[0].parent}:" in summary[1]
    assert summary[-1] == PHANTOM_WARNING and "real images" not in result.summary()
    assert sorted(p.name for p in (tmp_path / "can").iterdir()) == ["1"]  # no staging or asset folders left
