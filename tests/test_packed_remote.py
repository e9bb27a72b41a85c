"""Packed data read from a URL (TensorFlow's in-memory ``ram://`` file system stands in for gs:// and
s3://), and a shard that goes bad while it is read, named in one line."""

from __future__ import annotations

import json
import shutil
import struct
import uuid

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from can_tf.config import DataConfig
from can_tf.data import packed as packed_module
from can_tf.data.errors import DataError
from can_tf.data.packed import name_bad_shard, pack, packed_dataset, read_packed_table, verify_shards
from can_tf.data.splits import make_splits
from can_tf.data.table import load_table, resolve_source

tf = pytest.importorskip("tensorflow")

SHARD_MB = 0.1  # 64 px records: 22 a shard, so the phantom's 143 images make 7 shards
FIT = ["--epochs", "1", "--batch-size", "8", "--set", "train.steps_per_epoch=2", "--set", "data.augment=false",
       "--set", "train.verbose=2"]


def _collect(ds):
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


@pytest.fixture(scope="module")
def packed(phantom_dir, tmp_path_factory):
    df, class_names = load_table(DataConfig(source=str(phantom_dir)))
    out = tmp_path_factory.mktemp("packed") / "phantom-64"
    pack(df, str(out), class_names=class_names, image_size=64, shard_mb=SHARD_MB)
    return out


@pytest.fixture
def url(packed):
    """A copy of the packed folder at ``ram://packed-<unique>`` (removed afterwards)."""
    root = f"ram://packed-{uuid.uuid4().hex}"
    tf.io.gfile.makedirs(root)
    for name in tf.io.gfile.listdir(str(packed)):
        tf.io.gfile.copy(str(packed / name), f"{root}/{name}")
    yield root
    tf.io.gfile.rmtree(root)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """can-tf's cache folder (where a remote folder's split lists are copied) inside the test's."""
    monkeypatch.setenv("CAN_TF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _corrupt_record(shard_path, record: int) -> int:
    """Flips a byte in the middle of record ``record``'s payload (the size stays); returns its offset.

    TFRecord framing: length (uint64), CRC of the length, payload, CRC of the payload.
    """
    data = bytearray(shard_path.read_bytes())
    offset = 0
    for _ in range(record):
        (length,) = struct.unpack_from("<Q", data, offset)
        offset += 12 + length + 4
    (length,) = struct.unpack_from("<Q", data, offset)
    middle = offset + 12 + length // 2
    data[middle] ^= 0xFF
    shard_path.write_bytes(bytes(data))
    return middle


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


# ---- a URL as data.source -------------------------------------------------------------------------------
def test_a_url_reads_the_same_table_and_batches_as_the_local_folder(packed, url, cache):
    local, class_names = read_packed_table(packed)
    remote, remote_classes = read_packed_table(url)
    assert remote_classes == class_names
    pd.testing.assert_frame_equal(remote, local)
    assert remote.attrs["packed_root"] == url
    for training in (False, True):
        options = dict(training=training, deterministic=True, seed=3)
        x, y = _collect(packed_dataset(url, remote, class_names, 16, **options))
        expected_x, expected_y = _collect(packed_dataset(packed, local, class_names, 16, **options))
        assert x.shape == (143, 64, 64, 1)
        np.testing.assert_array_equal(x, expected_x)
        np.testing.assert_array_equal(y, expected_y)
    # NIH's split lists, read through tf.io.gfile into a local copy: data.split=official works.
    assert remote.attrs["data_root"].startswith(str(cache / "packed-lists"))
    official = DataConfig(split="official", val_fraction=0.2)
    for name, part in make_splits(remote, official).items():
        assert part["image_index"].tolist() == make_splits(local, official)[name]["image_index"].tolist()


def test_resolve_source_keeps_a_url_and_detects_packed_data(url):
    assert resolve_source(url) == ("packed", url, None)
    assert resolve_source(url, "packed") == ("packed", url, None)
    df, _ = load_table(DataConfig(source=url))
    assert df.attrs["format"] == "packed" and df.attrs["packed_root"] == url and len(df) == 143
    with pytest.raises(DataError, match=f"^data source {url}/nothing does not exist$"):
        resolve_source(f"{url}/nothing")


def test_a_scheme_without_a_file_system_is_one_line_naming_the_url():
    with pytest.raises(DataError) as caught:
        resolve_source("nosuchfs://x/y")
    message = str(caught.value)
    assert message.startswith("data source nosuchfs://x/y: TensorFlow has no file system for nosuchfs://")
    assert "\n" not in message
    import importlib.util

    if importlib.util.find_spec("tensorflow_io") is None:  # s3:// is tensorflow-io's
        with pytest.raises(DataError, match=r"^data source s3://bucket/nih: .*no file system.*tensorflow-io"):
            resolve_source("s3://bucket/nih")


def test_a_url_that_is_not_packed_data_is_refused_in_one_line(url):
    csv = f"{url}/labels.csv"
    with tf.io.gfile.GFile(csv, "w") as f:
        f.write("path,patient,Effusion\na.png,1,1\n")
    only_packed = r"only packed data \(can-tf data pack\) is read from a URL; PNG folders and CSV files must be local"
    for source, format in ((csv, "auto"), (csv, "csv"), (url, "chestxray14"), ("gs://bucket/nih", "chexpert")):
        with pytest.raises(DataError, match=f"^data source {source}: {only_packed}") as caught:
            resolve_source(source, format)
        assert "\n" not in str(caught.value)


def test_cli_fit_trains_one_epoch_on_a_url(url, tmp_path):
    from can_tf_cli.main import main

    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["fit", "--data", url, "--run-dir", str(run), *FIT], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["data"]["source"] == url and provenance["data"]["format"] == "packed"
    assert provenance["data"]["description"] == url
    assert json.loads((run / "metrics.json").read_text())["split"] == "test"
    assert (run / "splits" / "train.txt").is_file()
    assert not (tmp_path / "ram:").exists()  # nothing took the URL for a local path


def test_cli_fit_on_an_unknown_scheme_is_one_error_line(tmp_path):
    from can_tf_cli.main import main

    result = CliRunner().invoke(main, ["fit", "--data", "nosuchfs://x/y", "--run-dir", str(tmp_path / "run"), *FIT])
    assert result.exit_code == 1
    assert _one_error_line(result.output).startswith("Error: data error: data source nosuchfs://x/y: TensorFlow "
                                                     "has no file system for nosuchfs://")


# ---- a shard that goes bad mid-read ----------------------------------------------------------------------
def test_a_shard_corrupt_mid_record_is_named_after_a_size_only_read(packed, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(packed, copy)
    bad = copy / "shard-00003-of-00007.tfrecord"
    _corrupt_record(bad, 5)
    table, class_names = read_packed_table(copy)
    with pytest.raises(tf.errors.DataLossError) as caught:  # the size matches: the read itself fails
        _collect(packed_dataset(copy, table, class_names, 8, training=False, verify="size"))
    error = name_bad_shard(copy, error=caught.value)
    assert isinstance(error, DataError)
    assert str(error).startswith(f"shard {bad} is corrupt (DataLossError while reading: corrupted record at ")
    assert str(error).endswith("its SHA-256 differs from the index): re-copy or re-pack it")
    assert "\n" not in str(error)
    # Shards that match the index: the folder and the read error are named.
    fine = name_bad_shard(copy, ["shard-00000-of-00007.tfrecord"], caught.value)
    assert str(fine).startswith(f"packed data {copy}: DataLossError while reading: corrupted record at ")
    assert "every shard read matches its size and SHA-256" in str(fine)


def test_a_shard_changed_after_verification_is_named_afresh(packed, url):
    table, class_names = read_packed_table(url)
    verify_shards(url, [f"shard-{i:05d}-of-00007.tfrecord" for i in range(7)])  # hashed, remembered
    shard = f"{url}/shard-00001-of-00007.tfrecord"
    with tf.io.gfile.GFile(shard, "rb") as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF  # same size and (ram://) time stamp: the remembered hash still applies
    tf.io.gfile.remove(shard)  # ram:// opened with "wb" appends to an existing file
    with tf.io.gfile.GFile(shard, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(tf.errors.DataLossError) as caught:
        _collect(packed_dataset(url, table, class_names, 8, training=False))
    assert str(name_bad_shard(url, error=caught.value)).startswith(f"shard {shard} is corrupt (DataLossError")
    with pytest.raises(DataError, match="shard-00001-of-00007.tfrecord does not match its SHA-256"):
        packed_dataset(url, table, class_names, 8, training=False)  # the record of it was dropped


def test_cli_fit_on_a_shard_corrupt_mid_record_prints_one_line_naming_it(packed, tmp_path, monkeypatch):
    from can_tf_cli.main import main

    copy = tmp_path / "copy"
    shutil.copytree(packed, copy)
    bad = copy / "shard-00002-of-00007.tfrecord"
    _corrupt_record(bad, 10)
    # data.* has no verify option: read as verify="size" would (the size matches; the hash is skipped).
    size_only = packed_module.verify_shards
    monkeypatch.setattr(packed_module, "verify_shards", lambda path, files, mode="sha256": size_only(path, files, "size"))
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["fit", "--data", str(copy), "--run-dir", str(run), *FIT])
    assert result.exit_code == 1, result.output
    line = _one_error_line(result.output)
    assert line.startswith(f"Error: data error: shard {bad} is corrupt (DataLossError while reading: corrupted record at ")
    assert line.endswith("re-copy or re-pack it")
