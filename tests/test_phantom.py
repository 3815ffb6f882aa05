"""The synthetic phantom the other tests rely on: deterministic, anatomically ordered."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from cardioseg.clinical import clinical_measures, detect_ed_es, frame_volumes
from cardioseg.labels import ACDC
from cardioseg.phantom import PhantomSpec, heart_labels, make_phantom, write_phantom

SPEC = PhantomSpec(shape=(64, 64, 6), spacing_mm=(3.0, 3.0, 10.0), n_frames=6, seed=7)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(SPEC)


def test_deterministic_for_a_seed(phantom):
    again = make_phantom(SPEC)
    assert np.array_equal(again.image, phantom.image)
    assert np.array_equal(again.labels, phantom.labels)
    assert np.array_equal(again.affine, phantom.affine)
    other = make_phantom(PhantomSpec(**{**SPEC.__dict__, "seed": 8}))
    assert not np.array_equal(other.image, phantom.image)  # the seed drives the noise ...
    assert np.array_equal(other.labels, phantom.labels)  # ... not the anatomy


def test_shapes_dtypes_affine(phantom):
    assert phantom.image.shape == (*SPEC.shape, SPEC.n_frames) and phantom.image.dtype == np.int16
    assert phantom.labels.shape == phantom.image.shape and phantom.labels.dtype == np.uint8
    assert np.allclose(np.abs(np.diag(phantom.affine)[:3]), SPEC.spacing_mm)
    assert phantom.voxel_volume_ml == pytest.approx(3.0 * 3.0 * 10.0 / 1000)
    assert phantom.ed_frame == 0 and phantom.es_frame == SPEC.n_frames // 2


def test_all_labels_present_in_every_frame(phantom):
    for t in range(SPEC.n_frames):
        assert set(np.unique(phantom.labels[..., t])) == {0, 1, 2, 3}
    assert np.array_equal(phantom.labels[..., 2], heart_labels(SPEC, 2))


def test_anatomy_is_nested(phantom):
    from scipy import ndimage

    lab = phantom.labels[..., 0]
    # the myocardium surrounds the LV cavity in-plane on every slice with cavity
    for k in range(lab.shape[2]):
        lv = lab[..., k] == 3
        if lv.any():
            ring = ndimage.binary_dilation(lv, iterations=1) & ~lv
            assert (lab[..., k][ring] == 2).all()
    # RV and LV cavities never touch
    assert not (ndimage.binary_dilation(lab == 3) & (lab == 1)).any()


def test_ed_bigger_than_es_and_ef_plausible(phantom):
    vols = [frame_volumes(phantom.labels[..., t], phantom.voxel_volume_ml, ACDC) for t in range(SPEC.n_frames)]
    ed, es = vols[phantom.ed_frame], vols[phantom.es_frame]
    assert ed.lv_ml > es.lv_ml and ed.rv_ml > es.rv_ml
    assert detect_ed_es(vols) == (phantom.ed_frame, phantom.es_frame)
    m = clinical_measures(ed, es)
    assert 45.0 <= m["lv_ef_pct"] <= 75.0, m["lv_ef_pct"]
    assert 10.0 <= m["rv_ef_pct"] <= 75.0, m["rv_ef_pct"]  # the phantom RV contracts less (~22 %)
    assert 50.0 <= m["lv_mass_g"] <= 250.0, m["lv_mass_g"]


def test_image_contrast_blood_bright_myocardium_dark(phantom):
    img, lab = phantom.image[..., 0].astype(float), phantom.labels[..., 0]
    assert img[lab == 3].mean() > 2 * img[lab == 2].mean()
    assert img[lab == 1].mean() > 2 * img[lab == 2].mean()


def test_write_phantom(tmp_path):
    spec = PhantomSpec(shape=(32, 32, 3), spacing_mm=(4.0, 4.0, 10.0), n_frames=2)
    paths = write_phantom(str(tmp_path), spec, name="demo")
    img, gt = nib.load(paths["image"]), nib.load(paths["labels"])
    assert img.shape == gt.shape == (32, 32, 3, 2)
    ph = make_phantom(spec)
    assert np.array_equal(np.asarray(img.dataobj), ph.image)
    assert np.array_equal(np.asarray(gt.dataobj), ph.labels)
    assert np.allclose(img.affine, ph.affine)
