"""Provenance records: phantom data recognised wherever it was written, real data never called phantom."""

from __future__ import annotations

import json

from can_tf.config import RunConfig
from can_tf.provenance import (PHANTOM_WARNING, build_provenance, describe_data, is_phantom_source,
                               phantom_warning, summary_lines)


def test_built_in_and_synth_phantom_data_are_phantom_and_real_data_is_not(phantom_dir, chestxray14_dir):
    assert is_phantom_source(None)
    assert is_phantom_source(phantom_dir)  # written by `can-tf data synth` / write_phantom
    assert is_phantom_source(phantom_dir / "Data_Entry_2017.csv")
    assert not is_phantom_source(chestxray14_dir)  # the real NIH sample (its README is NIH's)
    assert describe_data(RunConfig.from_preset("small").data) == "built-in phantom data (synthetic images)"
    real = build_provenance(RunConfig.from_preset("small", [f"data.source={json.dumps(str(chestxray14_dir))}"]))
    assert real["data"]["phantom"] is False and phantom_warning(real) is None
    assert real["data"]["description"] == str(chestxray14_dir)


def test_record_names_splits_seeds_model_and_versions(phantom_dir):
    import pandas as pd

    config = RunConfig.from_preset("small", [f"data.source={json.dumps(str(phantom_dir))}", "train.seed=3"])
    splits = {"train": pd.DataFrame({"patient_id": ["a", "a", "b"]}), "val": pd.DataFrame({"patient_id": ["c"]})}
    record = build_provenance(config, splits=splits, table_attrs={"format": "chestxray14", "missing_images": 2},
                              best_epoch=4, epochs_run=5)
    assert record["data"]["split_counts"] == {"train": {"images": 3, "patients": 2}, "val": {"images": 1, "patients": 1}}
    assert record["data"]["filters"]["missing_images"] == 2 and record["seeds"] == {"data": 0, "train": 3}
    assert record["model"] == {"kind": "can", "backbones": ["tiny", "tiny"], "weights": None, "image_size": 64,
                               "input_channels": 1}
    assert {"can_tf", "tensorflow", "keras", "python"} <= set(record["versions"])
    assert phantom_warning(record) == PHANTOM_WARNING
    lines = summary_lines(record)
    assert lines[0] == f"- data: phantom data at {phantom_dir} (synthetic images)"
    assert "- splits: train 3 images / 2 patients, val 1 images / 1 patients" in lines
    assert "- best epoch: 4 of 5" in lines
    json.dumps(record)  # JSON-ready as it is
