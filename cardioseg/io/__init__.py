"""Images in and masks out: the ``Volume`` type, NIfTI and DICOM readers, atomic writers, and
the dataset layouts (ACDC folders, mask naming).

    volume.py          Volume, VolumeMeta, voxel limits and content checks
    readers.py         read_volume (dispatch by suffix: NIfTI file, DICOM series)
    nifti.py           the NIfTI reader and write_mask
    dicom_headers.py   DICOM files, headers and series (no pixels)
    dicom.py           a DICOM series assembled into a Volume
    dicom_seg.py       masks of DICOM input as DICOM Segmentation objects (highdicom, optional; not imported here)
    layouts.py         image suffixes, mask names, ACDC patient folders, ED/ES study names
    files.py           atomic writing and the temp-file naming scheme

Modules import each other directly (never this package), so there is no import cycle.
"""

from __future__ import annotations

from cardioseg.io.dicom import SeriesInfo, find_dicom_files, is_dicom_file, list_series, read_dicom_series
from cardioseg.io.files import atomic_path, temp_target, write_text_atomic
from cardioseg.io.layouts import (
    IMAGE_SUFFIXES,
    LABEL_SUFFIXES,
    MASK_STEM_SUFFIXES,
    PRED_SUFFIXES,
    REF_SUFFIXES,
    REFERENCE_SUFFIX,
    PatientFolder,
    PatientInfo,
    is_image_name,
    is_patient_folder,
    looks_like_mask,
    read_info_cfg,
    read_patient_folder,
    strip_image_suffix,
    study_name,
)
from cardioseg.io.nifti import write_mask
from cardioseg.io.readers import READERS, read_volume
from cardioseg.io.volume import (
    DEFAULT_MAX_VOXELS,
    Volume,
    VolumeMeta,
    check_voxel_count,
    check_voxels,
    max_voxels_default,
)

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "MASK_STEM_SUFFIXES",
    "PRED_SUFFIXES",
    "READERS",
    "REFERENCE_SUFFIX",
    "REF_SUFFIXES",
    "PatientFolder",
    "PatientInfo",
    "SeriesInfo",
    "Volume",
    "VolumeMeta",
    "atomic_path",
    "check_voxel_count",
    "check_voxels",
    "find_dicom_files",
    "is_dicom_file",
    "is_image_name",
    "is_patient_folder",
    "list_series",
    "looks_like_mask",
    "max_voxels_default",
    "read_dicom_series",
    "read_info_cfg",
    "read_patient_folder",
    "read_volume",
    "strip_image_suffix",
    "study_name",
    "temp_target",
    "write_mask",
    "write_text_atomic",
]
