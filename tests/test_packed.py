"""Packed TFRecord shards (can_tf.data.packed): round trip against the PNG pipeline, integrity, workers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from can_tf.config import DataConfig
from can_tf.data.errors import DataError
from can_tf.data.packed import (
    INDEX_FILE,
    pack,
    packed_dataset,
    read_packed_table,
    shard_files_for_worker,
)
from can_tf.data.pipeline import BadImageWarning, make_dataset
from can_tf.data.splits import make_splits
from can_tf.data.table import BASE_COLUMNS, load_table

tf = pytest.importorskip("tensorflow")

SHARD_MB = 0.1  # 64 px records: 22 a shard, so the phantom's 143 images make 7 shards


def _collect(ds):
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


@pytest.fixture(scope="module")
def phantom(phantom_dir):
    df, class_names = load_table(DataConfig(source=str(phantom_dir)))
    return df, class_names


@pytest.fixture(scope="module")
def packed(phantom, tmp_path_factory):
    df, class_names = phantom
    out = tmp_path_factory.mktemp("packed") / "phantom-64"
    result = pack(df, str(out), class_names=class_names, image_size=64, shard_mb=SHARD_MB)
    return out, result


def _copy(packed_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(packed_dir, copy)
    return copy


# ---- writing ---------------------------------------------------------------------------------------
def test_pack_writes_shards_and_an_index_that_rebuilds_the_table(phantom, packed):
    df, class_names = phantom
    out, result = packed
    per_shard = int(SHARD_MB * 2 ** 20) // (64 * 64 + 512)  # 22
    assert result.images == len(df) == 143 and per_shard == 22
    assert result.shards == [f"shard-{i:05d}-of-00007.tfrecord" for i in range(7)]
    index = json.loads((out / INDEX_FILE).read_text())
    assert [s["records"] for s in index["shards"]] == [22] * 6 + [143 - 6 * 22]
    assert sum(s["bytes"] for s in index["shards"]) == result.bytes
    assert all((out / s["file"]).stat().st_size == s["bytes"] for s in index["shards"])
    # Each record: 4096 pixel bytes plus the metadata, under the per-record allowance.
    assert 64 * 64 < result.bytes_per_image < 64 * 64 + 512
    assert (out / "train_val_list.txt").is_file() and (out / "test_list.txt").is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left

    table, packed_classes = read_packed_table(out)
    assert packed_classes == class_names
    assert list(table.columns) == [*BASE_COLUMNS, *class_names, "shard", "record"]
    pd.testing.assert_frame_equal(table[list(df.columns)], df, check_dtype=False)  # NaN ages and labels too
    assert table["shard"].tolist() == np.repeat(np.arange(7), [22] * 6 + [11]).tolist()
    assert table["record"].tolist()[:23] == [*range(22), 0]


def test_records_hold_the_pixels_labels_and_metadata(phantom, packed):
    df, class_names = phantom
    out, _ = packed
    # Parsed straight from the shard, independently of packed_dataset.
    raw = next(iter(tf.data.TFRecordDataset(str(out / "shard-00001-of-00007.tfrecord")).skip(3)))
    example = tf.train.Example.FromString(raw.numpy())
    f = example.features.feature
    row = df.iloc[22 + 3]
    assert f["image_index"].bytes_list.value[0].decode() == row["image_index"]
    assert f["patient_id"].bytes_list.value[0].decode() == row["patient_id"]
    assert f["path"].bytes_list.value[0].decode() == row["path"]
    assert (f["shard"].int64_list.value[0], f["record"].int64_list.value[0]) == (1, 3)
    np.testing.assert_array_equal(np.array(f["labels"].float_list.value, np.float32),
                                  row[class_names].to_numpy(np.float32))
    pixels = np.frombuffer(f["image"].bytes_list.value[0], np.uint8).reshape(64, 64)
    from can_tf.images import load_image

    np.testing.assert_array_equal(pixels, load_image(row["path"], 64).pixels[..., 0].astype(np.uint8))


# ---- reading: the same batches as the PNG pipeline ------------------------------------------------------
def test_packed_batches_equal_the_png_pipeline_exactly(phantom, packed):
    # Exactly, not within a grey level: both store the uint8 output of the same door function
    # (pipeline.load_file), and the cast to float32 is exact.
    df, class_names = phantom
    out, _ = packed
    table, _ = read_packed_table(out)
    expected_x, expected_y = _collect(make_dataset(df, class_names, 64, 32, training=False))
    x, y = _collect(packed_dataset(out, table, class_names, 32, training=False))
    assert x.dtype == np.float32 and x.shape == (143, 64, 64, 1)
    np.testing.assert_array_equal(x, expected_x)
    np.testing.assert_array_equal(y, expected_y)  # NaN where NaN
    # make_dataset itself reads a packed table from its shards (df.attrs["packed_root"]).
    np.testing.assert_array_equal(_collect(make_dataset(table, class_names, 64, 32, training=False))[0], x)


def test_a_subset_in_any_row_order_comes_back_in_that_order(phantom, packed):
    df, class_names = phantom
    out, _ = packed
    table, _ = read_packed_table(out)
    rows = np.random.default_rng(0).permutation(len(table))[:40]  # spread over the shards, unsorted
    x, y = _collect(packed_dataset(out, table.iloc[rows], class_names, 16, training=False))
    expected_x, expected_y = _collect(make_dataset(df.iloc[rows], class_names, 64, 16, training=False))
    np.testing.assert_array_equal(x, expected_x)
    np.testing.assert_array_equal(y, expected_y)


def test_patient_splits_of_the_packed_table_match_the_original(phantom, packed):
    df, _ = phantom
    out, _ = packed
    table, _ = load_table(DataConfig(source=str(out)))  # format auto-detected
    assert table.attrs["format"] == "packed" and table.attrs["packed_root"] == str(out)
    config = DataConfig(split_fractions=[0.6, 0.2, 0.2], seed=3)
    ours, theirs = make_splits(table, config), make_splits(df, config)
    for name in ("train", "val", "test"):
        assert ours[name]["image_index"].tolist() == theirs[name]["image_index"].tolist()
        assert ours[name].attrs["packed_root"] == str(out)
    official = make_splits(table, DataConfig(split="official"))  # lists copied beside the shards
    assert len(official["test"]) == len(make_splits(df, DataConfig(split="official"))["test"]) > 0


def test_training_stream_covers_each_row_once_an_epoch_and_repeats_with_its_seed(phantom, packed):
    df, class_names = phantom
    out, _ = packed
    table, _ = read_packed_table(out)
    table = table.assign(row=np.arange(len(table), dtype=np.float32))  # a label column that names the row
    ds = packed_dataset(out, table, ["row"], 16, training=True, seed=5, cache="memory")
    epochs = [_collect(ds) for _ in range(2)]
    for _, rows in epochs:
        assert sorted(rows[:, 0].astype(int).tolist()) == list(range(len(table)))
    assert epochs[0][1][:, 0].tolist() != epochs[1][1][:, 0].tolist()  # reshuffled each epoch
    again = _collect(packed_dataset(out, table, ["row"], 16, training=True, seed=5, cache="memory",
                                    deterministic=True))
    first = _collect(packed_dataset(out, table, ["row"], 16, training=True, seed=5, cache="memory",
                                    deterministic=True))
    np.testing.assert_array_equal(first[1], again[1])
    # An image arrives with its own row's label.
    eval_x, _ = _collect(packed_dataset(out, table, ["row"], 16, training=False))
    x, rows = epochs[0]
    np.testing.assert_array_equal(x, eval_x[rows[:, 0].astype(int)])


def test_augmented_training_batches_are_in_range_and_differ_from_the_originals(packed):
    out, _ = packed
    table, class_names = read_packed_table(out)
    x, _ = next(iter(packed_dataset(out, table, class_names, 8, training=True, augment=True, seed=0,
                                    drop_remainder=True)))
    assert x.shape == (8, 64, 64, 1) and float(tf.reduce_min(x)) >= 0 and float(tf.reduce_max(x)) <= 255
    assert not np.all(np.equal(np.round(x.numpy()), x.numpy()))  # interpolated: no longer whole grey levels


def test_another_image_size_is_refused(packed):
    out, _ = packed
    table, class_names = read_packed_table(out)
    with pytest.raises(DataError, match="packed at 64 px, not 128"):
        make_dataset(table, class_names, 128, 8, training=False)


# ---- integrity --------------------------------------------------------------------------------------
def test_a_truncated_shard_is_named(packed, tmp_path):
    out, _ = packed
    copy = _copy(out, tmp_path)
    shard = copy / "shard-00002-of-00007.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-100])
    table, class_names = read_packed_table(copy)
    with pytest.raises(DataError, match=r"shard .*shard-00002-of-00007\.tfrecord has .* bytes.*truncated"):
        packed_dataset(copy, table, class_names, 8, training=False)
    # A table not touching that shard is still readable.
    x, _ = _collect(packed_dataset(copy, table[table["shard"] != 2], class_names, 8, training=False))
    assert len(x) == 143 - 22


def test_a_corrupt_shard_of_the_right_size_is_named_and_never_skipped(packed, tmp_path):
    out, _ = packed
    copy = _copy(out, tmp_path)
    shard = copy / "shard-00004-of-00007.tfrecord"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    table, class_names = read_packed_table(copy)
    with pytest.raises(DataError, match=r"shard-00004-of-00007\.tfrecord does not match its SHA-256"):
        packed_dataset(copy, table, class_names, 8, training=False)
    # Without the digest check the record's CRC still stops the read: an error, not fewer images.
    ds = packed_dataset(copy, table, class_names, 8, training=False, verify="size")
    with pytest.raises(tf.errors.DataLossError):
        _collect(ds)


def test_a_folder_without_index_is_not_packed(tmp_path):
    with pytest.raises(DataError, match="has no index.json"):
        read_packed_table(tmp_path)


# ---- workers ------------------------------------------------------------------------------------------
def test_two_workers_get_disjoint_shard_files_covering_all(packed):
    out, result = packed
    files = result.shards
    first, second = shard_files_for_worker(files, 2, 0), shard_files_for_worker(files, 2, 1)
    assert not set(first) & set(second) and sorted(first + second) == sorted(files)
    assert first == files[0::2] and second == files[1::2]
    with pytest.raises(DataError, match="7 shard file.*8 input pipelines"):
        shard_files_for_worker(files, 8, 0)
    # Through an input context, as tf.distribute calls a dataset function: rows split by file.
    table, _ = read_packed_table(out)
    table = table.assign(row=np.arange(len(table), dtype=np.float32))
    seen = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2)
        _, rows = _collect(packed_dataset(out, table, ["row"], 16, training=True, input_context=context))
        shards = set(table["shard"].to_numpy()[rows[:, 0].astype(int)])
        assert shards == set(range(worker, 7, 2))
        seen.append(rows[:, 0].astype(int))
    assert sorted(np.concatenate(seen).tolist()) == list(range(len(table)))


# ---- bad images and refusals -------------------------------------------------------------------------
def test_a_bad_image_stops_the_pack_by_name_or_is_skipped(phantom, tmp_path):
    df, class_names = phantom
    df = df.iloc[:10].copy()
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"<html>not an image</html>")
    df.loc[3, "path"] = str(bad)
    with pytest.raises(DataError, match=r"1 of 10 image files cannot be read:\n  .*broken\.png: not a PNG"):
        pack(df, str(tmp_path / "stop"), class_names=class_names, image_size=32)
    assert not (tmp_path / "stop" / INDEX_FILE).exists()
    with pytest.warns(BadImageWarning, match="broken.png"):
        result = pack(df, str(tmp_path / "skip"), class_names=class_names, image_size=32, on_bad_image="skip")
    assert result.images == 9 and result.skipped == [str(bad)]
    table, _ = read_packed_table(tmp_path / "skip")
    assert str(bad) not in table["path"].tolist() and len(table) == 9


def test_an_existing_pack_is_kept_unless_overwritten(phantom, tmp_path):
    df, class_names = phantom
    out = tmp_path / "p"
    pack(df.iloc[:30], str(out), class_names=class_names, image_size=32, shard_mb=0.01)
    with pytest.raises(DataError, match="holds a packed data set already"):
        pack(df.iloc[:5], str(out), class_names=class_names, image_size=32)
    result = pack(df.iloc[:5], str(out), class_names=class_names, image_size=32, overwrite=True)
    assert sorted(p.name for p in out.glob("shard-*")) == result.shards == ["shard-00000-of-00001.tfrecord"]
    assert len(read_packed_table(out)[0]) == 5


# ---- the real sample -----------------------------------------------------------------------------------
def test_real_nih_images_round_trip_exactly(chestxray14_dir, tmp_path):
    from can_tf.data.chestxray14 import load_chestxray14

    df = load_chestxray14(chestxray14_dir, image_root=chestxray14_dir / "images").iloc[:12]
    class_names = list(df.columns[len(BASE_COLUMNS):])
    pack(df, str(tmp_path / "nih"), class_names=class_names, image_size=224)
    table, _ = read_packed_table(tmp_path / "nih")
    x, y = _collect(packed_dataset(tmp_path / "nih", table, class_names, 6, training=False))
    expected_x, expected_y = _collect(make_dataset(df, class_names, 224, 6, training=False))
    assert x.std() > 20  # real content
    np.testing.assert_array_equal(x, expected_x)
    np.testing.assert_array_equal(y, expected_y)
    assert table["patient_id"].tolist() == df["patient_id"].tolist()


# ---- the CLI and fit -------------------------------------------------------------------------------
def test_cli_pack_then_fit_one_epoch_on_the_packed_folder(phantom_dir, tmp_path):
    from can_tf_cli.main import main

    runner = CliRunner()
    out = tmp_path / "packed"
    result = runner.invoke(main, ["data", "pack", str(phantom_dir), str(out), "--image-size", "64",
                                  "--shard-mb", "0.2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "packed 143 images at 64 px into 4 shard(s)" in result.output
    assert "images/s" in result.output and "kB per image" in result.output
    run = tmp_path / "run"
    result = runner.invoke(main, ["fit", "--data", str(out), "--run-dir", str(run), "--epochs", "1",
                                  "--batch-size", "8", "--set", "train.steps_per_epoch=2", "--set",
                                  "data.augment=false", "--set", "train.verbose=2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["data"]["format"] == "packed"
    assert metrics["split"] == "test"


def _png_with_garbled_pixels(path):
    """A PNG whose chunks all carry valid CRCs but whose compressed pixels are garbage: it passes
    the up-front scan and fails only when decoded."""
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    at = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[at:at + 4])[0]
    garbage = bytes(range(7, 7 + length))
    chunk = struct.pack(">I", length) + b"IDAT" + garbage + struct.pack(">I", zlib.crc32(b"IDAT" + garbage))
    path.write_bytes(data[:at] + chunk + data[at + 12 + length:])


def test_an_image_that_fails_only_when_decoded_is_named_and_nothing_looks_complete(phantom, tmp_path):
    df, class_names = phantom
    df = df.iloc[:40].copy()
    bad = tmp_path / "garbled.png"
    _png_with_garbled_pixels(bad)
    df.loc[37, "path"] = str(bad)
    progress = []
    with pytest.raises(DataError, match=r"cannot decode image .*garbled\.png"):
        pack(df, str(tmp_path / "p"), class_names=class_names, image_size=32, shard_mb=0.01,
             on_progress=lambda done, total: progress.append((done, total)))
    assert not (tmp_path / "p" / INDEX_FILE).exists()
    assert not [p.name for p in (tmp_path / "p").iterdir() if p.name.startswith(".")]  # temporaries removed
    progress.clear()
    pack(df.iloc[:30], str(tmp_path / "q"), class_names=class_names, image_size=32,
         on_progress=lambda done, total: progress.append((done, total)))
    assert progress == [(30, 30)]
