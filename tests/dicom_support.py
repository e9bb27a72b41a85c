"""Writing small DICOM files for tests (pydicom is a test dependency)."""

from __future__ import annotations

import pytest


def new_dicom(rows: int, columns: int, photometric: str = "MONOCHROME2"):
    """A Secondary Capture DX dataset with its file meta, to which a test adds the pixel data."""
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "DX", 1, photometric
    ds.Rows, ds.Columns = rows, columns
    return ds
