"""The tf.data pipeline (can_tf.data.pipeline) on the real sample, edge-case files and the phantom."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from can_tf.data.errors import DataError
from can_tf.data.pipeline import BadImageWarning, make_dataset
from can_tf.images import load_image
from can_tf.labels import CLASS_NAMES as _CLASS_NAMES

tf = pytest.importorskip("tensorflow")

CLASS_NAMES = list(_CLASS_NAMES)  # a list: pandas reads a tuple as one column key


def _collect(ds):
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def _path_table(paths, labels=None, name="label"):
    """A minimal table: paths plus one label column (by default each row's index, to track rows)."""
    labels = np.arange(len(paths), dtype=np.float32) if labels is None else labels
    return pd.DataFrame({"path": [str(p) for p in paths], name: np.asarray(labels, np.float32)})


@pytest.fixture(scope="module")
def real_table(chestxray14_dir):
    from can_tf.data.chestxray14 import load_chestxray14

    return load_chestxray14(chestxray14_dir, image_root=chestxray14_dir / "images")


@pytest.fixture(scope="module")
def phantom_table(phantom_dir):
    from can_tf.data.chestxray14 import load_chestxray14

    return load_chestxray14(phantom_dir)


# ---- the real sample -----------------------------------------------------------------------------
def test_all_real_images_load_with_their_labels(real_table, chestxray14_dir):
    assert len(real_table) == 546
    ds = make_dataset(real_table, CLASS_NAMES, 64, 64, training=False)
    images, labels = _collect(ds)
    assert images.shape == (546, 64, 64, 1) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 255 and images.std() > 20  # real content, not blank
    np.testing.assert_array_equal(labels, real_table[CLASS_NAMES].to_numpy(np.float32))
    # Spot check against NIH's own strings, parsed here independently of the loader.
    with gzip.open(chestxray14_dir / "Data_Entry_2017_v2020.csv.gz", "rt") as f:
        raw = pd.read_csv(f, usecols=["Image Index", "Finding Labels"]).set_index("Image Index")
    for row in [0, 100, 273, 545]:
        findings = raw.loc[real_table["image_index"].iloc[row], "Finding Labels"].split("|")
        np.testing.assert_array_equal(labels[row], [float(n in findings) for n in CLASS_NAMES])
    assert labels.sum(axis=0)[CLASS_NAMES.index("Hernia")] == 18  # the sample's README count
    # The pipeline's first image equals the eager single-file path.
    np.testing.assert_array_equal(images[0], load_image(real_table["path"].iloc[0], 64).pixels)


def test_rgb_and_rgba_files_match_gray_and_pil_luminance(chestxray14_dir):
    files = sorted((chestxray14_dir / "images-64").glob("*.png"))
    rgba = [p for p in files if Image.open(p).mode == "RGBA"]
    rgb = [p for p in files if Image.open(p).mode == "RGB"][:20]
    assert rgba and rgb
    gray = sorted((chestxray14_dir / "images").glob("*.png"))[:4]
    images, _ = _collect(make_dataset(_path_table(rgb + rgba + gray), ["label"], 64, 16, training=False))
    assert images.shape == (len(rgb) + len(rgba) + len(gray), 64, 64, 1)
    colour = images[: len(rgb) + len(rgba), ..., 0]
    assert colour.min() >= 0 and colour.max() <= 255 and colour.max() > 200
    expected = np.stack([np.asarray(Image.open(p).convert("L"), np.float32) for p in rgb + rgba])
    assert np.abs(colour - expected).max() <= 1.0


def test_1024_original_resized_to_512_matches_the_512_file(chestxray14_dir):
    originals = sorted((chestxray14_dir / "images-1024").glob("*.png"))[:6]
    for path in originals:
        resized = load_image(path, 512).pixels[..., 0]
        reference = _pil_gray(chestxray14_dir / "images" / path.name).astype(np.float32)
        # Measured 0.26-0.44 grey levels on the 16 originals (the 512 px files were made with
        # another antialiasing filter); a nearest-neighbour resize gives 1.2-1.7 and a one-pixel
        # shift 1.6-2.2, so 0.75 separates a right resize from a wrong one.
        assert np.abs(resized - reference).mean() < 0.75, path.name


# ---- formats ------------------------------------------------------------------------------------
def test_sixteen_bit_png_range(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "16.png")
    images, _ = _collect(make_dataset(_path_table([tmp_path / "16.png"]), ["label"], 64, 1, training=False))
    assert images.min() == 0 and images.max() == 255
    # Same as the PIL path (v / 257, rounded), within one grey level of float rounding.
    assert np.abs(images[0, ..., 0] - _pil_gray(tmp_path / "16.png")).max() <= 1


def test_jpeg_and_other_modes_decode(tmp_path):
    rng = np.random.default_rng(0)
    blocks = np.kron(rng.integers(0, 256, (8, 8)), np.ones((8, 8))).astype(np.uint8)
    Image.fromarray(blocks, "L").save(tmp_path / "gray.jpg", quality=95)
    Image.fromarray(np.dstack([blocks] * 3), "RGB").save(tmp_path / "rgb.jpg", quality=95)
    Image.fromarray(blocks, "L").convert("LA").save(tmp_path / "la.png")
    Image.fromarray(blocks, "L").convert("P").save(tmp_path / "p.png")
    paths = [tmp_path / n for n in ("gray.jpg", "rgb.jpg", "la.png", "p.png")]
    images, _ = _collect(make_dataset(_path_table(paths), ["label"], 32, 4, training=False))
    assert images.shape == (4, 32, 32, 1)
    for image, path in zip(images, paths):
        # The PIL reader resized the same way: both decoders agree within JPEG's IDCT differences.
        expected = tf.image.resize(_pil_gray(path)[..., None].astype(np.float32), (32, 32), antialias=True)
        assert np.abs(image - np.round(expected.numpy())).mean() < 1.0, path.name


# ---- bad files ----------------------------------------------------------------------------------
@pytest.fixture()
def table_with_bad_files(phantom_table, tmp_path):
    good = phantom_table["path"].iloc[:10].tolist()
    data = open(good[0], "rb").read()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 3])
    (tmp_path / "junk.png").write_text("<html>not found</html>")
    return _path_table(good + [tmp_path / "cut.png", tmp_path / "junk.png"])


def test_bad_image_stop_names_the_files(table_with_bad_files):
    with pytest.raises(DataError) as error:
        make_dataset(table_with_bad_files, ["label"], 32, 4, training=True, on_bad_image="stop")
    message = str(error.value)
    assert "cut.png: truncated PNG" in message and "junk.png: not a PNG, JPEG or DICOM image" in message
    assert "2 of 12 image files" in message


def test_bad_image_skip_reports_and_drops(table_with_bad_files):
    with pytest.warns(BadImageWarning, match=r"skipping 2 of 12 image files") as record:
        ds = make_dataset(table_with_bad_files, ["label"], 32, 4, training=False, on_bad_image="skip")
    assert "cut.png" in str(record[0].message) and "junk.png" in str(record[0].message)
    _, labels = _collect(ds)
    np.testing.assert_array_equal(labels[:, 0], np.arange(10))


def test_missing_label_column_is_named(phantom_table):
    with pytest.raises(DataError, match="Hernia"):
        make_dataset(phantom_table.drop(columns=["Hernia"]), CLASS_NAMES, 32, 4, training=False)


# ---- order, determinism, sharding, caching ------------------------------------------------------
def test_nan_labels_pass_through(phantom_table):
    table = phantom_table.iloc[:8].copy()
    table.loc[table.index[[1, 5]], "Effusion"] = np.nan
    _, labels = _collect(make_dataset(table, CLASS_NAMES, 32, 8, training=False))
    np.testing.assert_array_equal(np.isnan(labels), np.isnan(table[CLASS_NAMES].to_numpy(np.float32)))


def test_deterministic_training_order_and_augmentation(phantom_table):
    table = _path_table(phantom_table["path"].iloc[:24])

    def two_epochs(seed):
        ds = make_dataset(table, ["label"], 32, 8, training=True, augment=True, cache="memory",
                          deterministic=True, seed=seed)
        return [_collect(ds) for _ in range(2)]

    (a1, l1), (a2, l2) = two_epochs(3)
    (b1, m1), (b2, m2) = two_epochs(3)
    np.testing.assert_array_equal(l1, m1)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert sorted(l1[:, 0]) == list(range(24))  # every image once per epoch
    assert not np.array_equal(l1, l2)  # reshuffled each epoch
    (c1, n1), _ = two_epochs(4)
    assert not np.array_equal(l1, n1)
    # Augmented, but still images of the same kind: values in range, mean brightness near the source.
    plain, labels = _collect(make_dataset(table, ["label"], 32, 8, training=False))
    assert a1.min() >= 0 and a1.max() <= 255
    source = plain[l1[:, 0].astype(int)]
    assert not np.array_equal(a1, source)
    assert abs(float(a1.mean() - source.mean())) < 10


def test_training_without_augment_only_reorders(phantom_table):
    table = _path_table(phantom_table["path"].iloc[:24])
    plain, _ = _collect(make_dataset(table, ["label"], 32, 8, training=False))
    shuffled, labels = _collect(make_dataset(table, ["label"], 32, 8, training=True, seed=1))
    assert not np.array_equal(labels[:, 0], np.arange(24))
    np.testing.assert_array_equal(shuffled, plain[labels[:, 0].astype(int)])


def test_sharding_splits_disjointly(phantom_table):
    table = _path_table(phantom_table["path"].iloc[:30])
    seen = []
    for worker in range(3):
        context = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=worker,
                                             num_replicas_in_sync=3)
        ds = make_dataset(table, ["label"], 32, 6, training=True, input_context=context, seed=0)
        _, labels = _collect(ds)
        assert max(len(y) for y, _ in ds.as_numpy_iterator()) == 2  # per-replica batch: 6 / 3
        seen.append(set(labels[:, 0].astype(int).tolist()))
    assert sum(len(s) for s in seen) == 30
    assert set.union(*seen) == set(range(30))
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])


def test_cache_modes_give_the_same_images(phantom_table, tmp_path):
    table = _path_table(phantom_table["path"].iloc[:12])
    reference, _ = _collect(make_dataset(table, ["label"], 32, 5, training=False, cache="none"))
    prefix = str(tmp_path / "cache" / "train")
    for cache in ("memory", prefix):
        ds = make_dataset(table, ["label"], 32, 5, training=False, cache=cache)
        for _ in range(2):  # the second pass reads the cache
            np.testing.assert_array_equal(_collect(ds)[0], reference)
    written = list((tmp_path / "cache").iterdir())
    assert written and all(p.name.startswith("train-32px-") for p in written)


def test_drop_remainder(phantom_table):
    table = _path_table(phantom_table["path"].iloc[:10])
    sizes = [len(y) for _, y in make_dataset(table, ["label"], 32, 4, training=False, drop_remainder=True)]
    assert sizes == [4, 4]


def _pil_gray(path) -> np.ndarray:
    """An independent reference: Pillow's decoder and luminance (16-bit scaled by its full range)."""
    with Image.open(path) as image:
        if image.mode.startswith("I"):
            return np.round(np.asarray(image, np.float64) * 255.0 / 65535.0).astype(np.uint8)
        if image.mode == "LA":
            return np.asarray(image.getchannel(0), np.uint8)
        if image.mode in ("P", "PA"):
            image = image.convert("RGBA")
        return np.asarray(image.convert("L"), np.uint8)
