"""Times the CheXpert and MIMIC-CXR-JPG readers on label files of the real data sets' sizes.

Generates, in a temporary folder, a CheXpert ``train.csv`` of 224,316 rows (64,540 patients, the
publisher's columns and value spellings: ``1.0``/``0.0``/``-1.0``/blank, ``Male``/``Female``,
``Frontal``/``Lateral``, ``AP``/``PA``/``LL``) and the three MIMIC-CXR-JPG 2.0.0 tables for 377,110
images (227,835 studies of 65,379 subjects, 8 studies without labels, train/validate/test by
patient), then times :func:`~can_tf.data.chexpert.load_chexpert` and
:func:`~can_tf.data.mimic.load_mimic` (all 14 observations, U-Ignore), best of ``--repeats``.

Image existence is always checked, two ways:

- ``no images``: the image folders are absent (``keep_missing=True``, so the loaders keep the rows
  with ``path == ""`` instead of stopping): the per-top-folder check makes this cost nothing per row;
- ``all images``: an empty file for every row (``--images all``/``both``; creating ~600k files
  takes a minute or so and is not timed): one ``os.path.isfile`` per row, with the OS cache warm.

Usage:
    python -m benchmarks.dataset_loading                       # both data sets, both image cases
    python -m benchmarks.dataset_loading --images none --repeats 1 --scale 0.1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

CHEXPERT_ROWS, CHEXPERT_PATIENTS = 224_316, 64_540
MIMIC_IMAGES, MIMIC_STUDIES, MIMIC_SUBJECTS = 377_110, 227_835, 65_379


def _label_cells(rng, n: int, p=(0.12, 0.08, 0.05, 0.75)) -> np.ndarray:
    """(n, 14) cells ``1.0``/``0.0``/``-1.0``/blank in roughly CheXpert's proportions."""
    return rng.choice(np.array(["1.0", "0.0", "-1.0", ""], dtype=object), size=(n, 14), p=list(p))


def make_chexpert(root: Path, rows: int, seed: int = 0) -> pd.DataFrame:
    from can_tf.data.chexpert import OBSERVATIONS

    rng = np.random.default_rng(seed)
    patients = max(1, round(rows * CHEXPERT_PATIENTS / CHEXPERT_ROWS))
    patient = np.sort(np.concatenate([np.arange(1, patients + 1), rng.integers(1, patients + 1, rows - patients)]))
    # number the images of each patient: study = k // 2 + 1, view 1 frontal, view 2 lateral
    k = np.arange(rows) - np.searchsorted(patient, patient)
    lateral = k % 2 == 1
    view = np.where(lateral, "view2_lateral", "view1_frontal")
    path = ("CheXpert-v1.0-small/train/patient" + pd.Series(patient).map("{:05d}".format) + "/study"
            + pd.Series(k // 2 + 1).astype(str) + "/" + view + ".jpg")
    table = pd.DataFrame({
        "Path": path,
        "Sex": rng.choice(["Male", "Female", "Unknown"], rows, p=[0.59, 0.409, 0.001]),
        "Age": rng.integers(18, 91, rows).astype(str),
        "Frontal/Lateral": np.where(lateral, "Lateral", "Frontal"),
        "AP/PA": np.where(lateral, "", rng.choice(["AP", "PA", "LL", "RL"], rows, p=[0.83, 0.169, 0.0005, 0.0005])),
    })
    table[list(OBSERVATIONS)] = _label_cells(rng, rows)
    root.mkdir(parents=True, exist_ok=True)
    table.to_csv(root / "train.csv", index=False)
    return table


def make_mimic(root: Path, images: int, seed: int = 0) -> pd.DataFrame:
    from can_tf.data.mimic import LABEL_FILES, METADATA_FILE, SPLIT_FILE

    rng = np.random.default_rng(seed)
    studies = max(1, round(images * MIMIC_STUDIES / MIMIC_IMAGES))
    subjects = max(1, round(images * MIMIC_SUBJECTS / MIMIC_IMAGES))
    subject_ids = 10_000_000 + np.sort(rng.choice(9_999_999, subjects, replace=False))
    study_ids = 50_000_000 + rng.choice(9_999_999, studies, replace=False)
    study_subject = np.sort(np.concatenate([np.arange(subjects), rng.integers(0, subjects, studies - subjects)]))
    image_study = np.sort(np.concatenate([np.arange(studies), rng.integers(0, studies, images - studies)]))
    dicom = pd.Series([bytes(b).hex() for b in rng.integers(0, 256, (images, 20), dtype=np.uint8)])
    dicom = dicom.str[0:8] + "-" + dicom.str[8:16] + "-" + dicom.str[16:24] + "-" + dicom.str[24:32] + "-" + dicom.str[32:40]
    subject = subject_ids[study_subject[image_study]].astype(str)
    study = study_ids[image_study].astype(str)
    meta = pd.DataFrame({
        "dicom_id": dicom, "subject_id": subject, "study_id": study,
        "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
        "ViewPosition": rng.choice(["PA", "AP", "LATERAL", "LL", "AP AXIAL", ""], images,
                                   p=[0.257, 0.39, 0.218, 0.092, 0.003, 0.04]),
        "Rows": "3056", "Columns": "2544", "StudyDate": "21800506", "StudyTime": "213014.531",
        "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
        "ViewCodeSequence_CodeMeaning": "postero-anterior", "PatientOrientationCodeSequence_CodeMeaning": "Erect",
    })
    split_of_subject = rng.choice(["train", "validate", "test"], subjects, p=[0.978, 0.008, 0.014])
    split = pd.DataFrame({"dicom_id": dicom, "study_id": study, "subject_id": subject,
                          "split": split_of_subject[study_subject[image_study]]})
    labelled = np.ones(studies, bool)
    labelled[rng.choice(studies, min(8, studies - 1), replace=False)] = False  # studies without a report
    from can_tf.data.chexpert import OBSERVATIONS

    labels = pd.DataFrame({"subject_id": subject_ids[study_subject[labelled]].astype(str),
                           "study_id": study_ids[labelled].astype(str)})
    labels[sorted(OBSERVATIONS)] = _label_cells(rng, int(labelled.sum()))
    root.mkdir(parents=True, exist_ok=True)
    gz = {"method": "gzip", "compresslevel": 1}
    labels.to_csv(root / LABEL_FILES["chexpert"], index=False, compression=gz)
    meta.to_csv(root / METADATA_FILE, index=False, compression=gz)
    split.to_csv(root / SPLIT_FILE, index=False, compression=gz)
    return meta


def touch_images(root: Path, relative) -> float:
    """An empty file for each relative path (what the existence check needs); returns seconds taken."""
    start = time.perf_counter()
    made = set()
    for rel in relative:
        folder = os.path.dirname(rel)
        if folder not in made:
            os.makedirs(root / folder, exist_ok=True)
            made.add(folder)
        open(root / rel, "wb").close()
    return time.perf_counter() - start


def _best(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", choices=["none", "all", "both"], default="both",
                        help="image case(s) to time: folders absent, an empty file per row, or both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real sizes (1.0 = full size)")
    parser.add_argument("--datasets", nargs="+", choices=["chexpert", "mimic"], default=["chexpert", "mimic"])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import logging

    logging.getLogger("can_tf").setLevel(logging.ERROR)  # the "N images missing" warnings
    from can_tf.data.chexpert import OBSERVATIONS, load_chexpert
    from can_tf.data.label_space import DATASET_LABELS
    from can_tf.data.mimic import load_mimic

    classes = list(dict.fromkeys(DATASET_LABELS["chexpert"][o] for o in OBSERVATIONS))
    cases = ["none", "all"] if args.images == "both" else [args.images]
    rows = []
    with tempfile.TemporaryDirectory(prefix="can-tf-dataset-loading-") as tmp:
        tmp = Path(tmp)
        for name in args.datasets:
            root = tmp / name
            start = time.perf_counter()
            if name == "chexpert":
                table = make_chexpert(root, max(1, round(CHEXPERT_ROWS * args.scale)))
                relative = table["Path"].tolist()
                load = lambda: load_chexpert(root, classes, keep_missing=True)  # noqa: E731
            else:
                meta = make_mimic(root, max(1, round(MIMIC_IMAGES * args.scale)))
                relative = ("files/p" + meta["subject_id"].str[:2] + "/p" + meta["subject_id"] + "/s"
                            + meta["study_id"] + "/" + meta["dicom_id"] + ".jpg").tolist()
                load = lambda: load_mimic(root, classes, keep_missing=True)  # noqa: E731
            generated = time.perf_counter() - start
            for case in cases:
                touched = touch_images(root, relative) if case == "all" else None
                seconds, df = _best(load, args.repeats)
                found = int((df["path"] != "").sum())
                expected = len(df) if case == "all" else 0
                assert found == expected, (name, case, found, expected)
                rows.append({"dataset": name, "rows": len(df), "images": case, "found": found,
                             "best_s": seconds, "rows_per_s": len(df) / seconds,
                             "generate_s": generated, "touch_s": touched})

    result = {"repeats": args.repeats, "scale": args.scale, "cpu_count": os.cpu_count(),
              "load_average_1min": os.getloadavg()[0], "platform": platform.platform(),
              "pandas": pd.__version__, "numpy": np.__version__, "results": rows}
    print(f"best of {args.repeats}; {os.cpu_count()} CPUs (load average {result['load_average_1min']:.1f} at the end); "
          f"every image checked on disk")
    print()
    print("| data set | table rows | images on disk | best (s) | rows/s |")
    print("| --- | ---: | --- | ---: | ---: |")
    for row in rows:
        on_disk = "none (folders absent)" if row["images"] == "none" else f"all ({row['found']:,} empty files)"
        print(f"| {row['dataset']} | {row['rows']:,} | {on_disk} | {row['best_s']:.2f} | {row['rows_per_s']:,.0f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
