"""``Volume`` and ``VolumeMeta``: geometry properties, immutability, voxel limits and content checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from cardioseg.errors import ConfigError, UnsupportedInputError
from cardioseg.io import DEFAULT_MAX_VOXELS, Volume, VolumeMeta, check_voxel_count, check_voxels, max_voxels_default

AFFINE = np.diag([1.5, 1.5, 8.0, 1.0])


def image(shape=(40, 40, 6), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, size=shape).astype(np.float32)


def test_geometry_properties_of_a_frame_and_a_cine():
    frame = Volume(np.zeros((4, 5, 3)), np.diag([2.0, 2.5, 6.0, 1.0]), Path("/x/case.nii.gz"))
    assert frame.spacing_mm == (2.0, 2.5, 6.0) and frame.voxel_volume_ml == pytest.approx(0.03)
    assert not frame.is_cine and frame.n_frames == 1 and frame.name == "case"
    assert frame.frame(0) is frame.data
    with pytest.raises(IndexError):
        frame.frame(1)
    cine = Volume(np.arange(4 * 5 * 3 * 2).reshape(4, 5, 3, 2), AFFINE)
    assert cine.is_cine and cine.n_frames == 2 and cine.name == "volume"
    assert np.array_equal(cine.frame(1), cine.data[..., 1])


def test_volume_and_meta_are_frozen_and_meta_defaults_are_empty():
    vol = Volume(np.zeros((4, 5, 3)), AFFINE)
    assert vol.meta == VolumeMeta() and vol.meta.source is None and vol.meta.warnings == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        vol.meta = VolumeMeta(source="nifti")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        vol.meta.warnings = ("x",)  # type: ignore[misc]
    meta = VolumeMeta(source="dicom", warnings=("a",))
    assert meta.with_warnings("b", "c") == VolumeMeta(source="dicom", warnings=("a", "b", "c"))
    assert meta.warnings == ("a",)  # with_warnings made a copy


def test_check_voxels_returns_a_new_volume_and_leaves_the_input_alone():
    labels = np.zeros((20, 20, 6), np.uint8)
    labels[5:10, 5:10, 2:4] = 3
    vol = Volume(labels, AFFINE, meta=VolumeMeta(source="dicom", warnings=("reader",)))
    checked = check_voxels(vol)
    assert checked is not vol and checked.data is vol.data and checked.affine is vol.affine
    assert vol.meta.warnings == ("reader",)  # not mutated
    assert checked.meta.warnings[0] == "reader" and "label map" in checked.meta.warnings[1]
    assert checked.meta.source == "dicom" and len(checked.meta.warnings) == 2


def test_check_voxels_warns_about_isotropic_voxels_only():
    assert check_voxels(Volume(image(), AFFINE)).meta.warnings == ()
    (warning,) = check_voxels(Volume(image(), np.diag([1.5, 1.5, 1.5, 1.0]))).meta.warnings
    assert warning.startswith("voxels are nearly isotropic (1.5 x 1.5 x 1.5 mm)")


@pytest.mark.parametrize(("bad", "words"), [(np.nan, "1 NaN or infinite"), (np.inf, "1 NaN or infinite")])
def test_check_voxels_refuses_non_finite_voxels(bad, words):
    data = image()
    data[3, 4, 2] = bad
    with pytest.raises(UnsupportedInputError, match=words):
        check_voxels(Volume(data, AFFINE, Path("x.nii")))


def test_voxel_count_limit():
    check_voxel_count((40, 40, 6), 9600, "x")  # at the limit: fine
    with pytest.raises(UnsupportedInputError, match=r"x claims 9,601 voxels \(shape \(9601,\)\), more than the limit of 9,600"):
        check_voxel_count((9601,), 9600, "x")


def test_max_voxels_default_reads_the_environment(monkeypatch):
    assert max_voxels_default() == DEFAULT_MAX_VOXELS
    monkeypatch.setenv("CARDIOSEG_MAX_VOXELS", "1e6")
    assert max_voxels_default() == 1_000_000
    for raw in ("lots", "1e999", "0", "-5"):
        monkeypatch.setenv("CARDIOSEG_MAX_VOXELS", raw)
        with pytest.raises(ConfigError, match="CARDIOSEG_MAX_VOXELS must be"):
            max_voxels_default()
