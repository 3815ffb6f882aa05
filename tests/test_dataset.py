"""Distance maps (DMR Eq. 2), finding labelled frames, patient-level folds and the training cache."""

from __future__ import annotations

import csv
import gzip
import json
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from cardioseg.dataset import build_cache, find_frames, load_cache, prepare_frame, stratified_folds
from cardioseg.errors import ConfigError, InputFileNotFoundError
from cardioseg.phantom import PhantomSpec, make_phantom
from cardioseg.preprocess import PreprocessConfig, distance_maps, truncated_signed_distance
from tests.conftest import save_nifti

GROUPS = ["DCM", "HCM", "MINF", "NOR", "RV"]
TINY = PreprocessConfig(spacing_mm=2.5, fov_px=64)
P = namedtuple("P", "name group")


def write_acdc_tree(
    root: Path, n: int = 5, shape: tuple[int, int, int] = (64, 64, 4), slices: tuple[int, ...] | None = None
) -> Path:
    """``n`` ACDC-style phantom patients (one per group, cycling), ED = frame 1, ES = frame 3;
    ``slices``: one patient per entry, with that many slices of ``shape``'s in-plane size."""
    shapes = [shape] * n if slices is None else [(*shape[:2], k) for k in slices]
    for i, patient_shape in enumerate(shapes):
        name = f"patient{i + 1:03d}"
        ph = make_phantom(PhantomSpec(shape=patient_shape, spacing_mm=(2.5, 2.5, 10.0), n_frames=4, seed=i))
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text(f"ED: 1\nES: 3\nGroup: {GROUPS[i % 5]}\nHeight: 170\nWeight: 70\n")
        for number, t in ((1, ph.ed_frame), (3, ph.es_frame)):
            save_nifti(folder / f"{name}_frame{number:02d}.nii.gz", ph.image[..., t], ph.affine)
            save_nifti(folder / f"{name}_frame{number:02d}_gt.nii.gz", ph.labels[..., t], ph.affine)
    return root


# ---------------------------------------------------------------------------- distance maps


def test_signed_distance_of_a_strip_matches_the_hand_values() -> None:
    m = np.zeros((1, 7), bool)
    m[0, 2:5] = True
    assert truncated_signed_distance(m, 10.0).tolist() == [[-2.0, -1.0, 1.0, 2.0, 1.0, -1.0, -2.0]]
    assert truncated_signed_distance(m, 1.5).tolist() == [[-1.5, -1.0, 1.0, 2.0, 1.0, -1.0, -1.5]]


def test_signed_distance_of_a_square() -> None:
    m = np.zeros((11, 11), bool)
    m[3:8, 3:8] = True
    d = truncated_signed_distance(m, 2.5)
    assert d.dtype == np.float32 and d.shape == m.shape
    assert d[5, 5] == 3.0 and d[3, 5] == 1.0 and d[4, 4] == 2.0  # inside: to the nearest background pixel
    assert d[2, 5] == -1.0 and d[2, 2] == pytest.approx(-np.sqrt(2))  # outside: minus the distance to the object
    assert d[0, 0] == -2.5 and d.min() == -2.5  # truncated at -T
    assert (d[m] >= 1).all() and (d[~m] <= -1).all()  # sign convention: inside > 0
    np.testing.assert_array_equal(d, d.T)
    np.testing.assert_array_equal(d, d[::-1, ::-1])


def test_empty_mask_is_minus_t_everywhere() -> None:
    d = truncated_signed_distance(np.zeros((4, 6), bool), 7.0)
    assert d.dtype == np.float32 and (d == -7.0).all()


def test_full_mask_is_positive() -> None:
    assert (truncated_signed_distance(np.ones((4, 6), bool), 7.0) > 0).all()


def test_full_mask_is_symmetric() -> None:
    d = truncated_signed_distance(np.ones((4, 6), bool), 7.0)
    np.testing.assert_array_equal(d, d[::-1, ::-1])


def test_distance_maps_stack_one_map_per_value() -> None:
    lab = np.zeros((12, 12), np.uint8)
    lab[2:6, 2:6] = 1
    lab[7:10, 6:11] = 3
    maps = distance_maps(lab, (1, 2, 3), 20.0)
    assert maps.shape == (3, 12, 12) and maps.dtype == np.float32
    for k, v in enumerate((1, 2, 3)):
        np.testing.assert_array_equal(maps[k], truncated_signed_distance(lab == v, 20.0))
    assert (maps[1] == -20.0).all()  # value 2 absent
    assert (maps[0][lab == 1] > 0).all() and (maps[0][lab != 1] < 0).all()


# ---------------------------------------------------------------------------- finding frames


def test_find_frames_acdc_layout(tmp_path: Path) -> None:
    root = write_acdc_tree(tmp_path / "acdc", n=2)
    frames = find_frames(root)
    assert [(f.patient, f.group, f.phase) for f in frames] == [
        ("patient001", "DCM", "ED"), ("patient001", "DCM", "ES"), ("patient002", "HCM", "ED"), ("patient002", "HCM", "ES"),
    ]  # fmt: skip
    assert frames[0].image.name == "patient001_frame01.nii.gz"
    assert frames[1].labels.name == "patient001_frame03_gt.nii.gz"
    assert frames[0].name == "patient001:ED"
    (root / "patient002" / "patient002_frame03_gt.nii.gz").unlink()
    with pytest.raises(InputFileNotFoundError, match="patient002_frame03_gt"):
        find_frames(root)


def test_find_frames_generic_layout(tmp_path: Path) -> None:
    root = tmp_path / "generic"
    vol = np.zeros((8, 8, 2), np.int16)
    for name in ("case1_ED", "case1_ES", "solo"):
        save_nifti(root / "images" / f"{name}.nii.gz", vol)
    save_nifti(root / "labels" / "case1_ED_gt.nii.gz", vol)
    save_nifti(root / "labels" / "case1_ES_gt.nii.gz", vol)
    save_nifti(root / "labels" / "solo.nii.gz", vol)
    (root / "groups.csv").write_text("patient,group\ncase1,DCM\n")
    frames = find_frames(root)
    assert [(f.patient, f.group, f.phase, f.labels.name) for f in frames] == [
        ("case1", "DCM", "ED", "case1_ED_gt.nii.gz"), ("case1", "DCM", "ES", "case1_ES_gt.nii.gz"),
        ("solo", "unknown", "", "solo.nii.gz"),
    ]  # fmt: skip
    save_nifti(root / "images" / "orphan.nii.gz", vol)
    with pytest.raises(InputFileNotFoundError, match="No labels for .*orphan"):
        find_frames(root)


def test_find_frames_acdc_layout_with_uncompressed_files(tmp_path: Path) -> None:
    """ACDC folders with ``.nii`` frames and references (the layout read_patient_folder accepts) are found too."""
    root = write_acdc_tree(tmp_path / "acdc", n=2)
    for f in sorted((root / "patient002").glob("*.nii.gz")):
        f.with_name(f.name[: -len(".gz")]).write_bytes(gzip.decompress(f.read_bytes()))
        f.unlink()
    frames = find_frames(root)
    assert [(f.patient, f.phase, f.image.name, f.labels.name) for f in frames[2:]] == [
        ("patient002", "ED", "patient002_frame01.nii", "patient002_frame01_gt.nii"),
        ("patient002", "ES", "patient002_frame03.nii", "patient002_frame03_gt.nii"),
    ]
    assert frames[0].image.name == "patient001_frame01.nii.gz"
    assert prepare_frame(frames[2], TINY)[0].shape == prepare_frame(frames[0], TINY)[0].shape
    (root / "patient002" / "patient002_frame03_gt.nii").unlink()
    with pytest.raises(InputFileNotFoundError, match="patient002_frame03_gt.nii.gz"):
        find_frames(root)


def test_find_frames_errors(tmp_path: Path) -> None:
    with pytest.raises(InputFileNotFoundError, match="not found"):
        find_frames(tmp_path / "missing")
    with pytest.raises(ConfigError, match="No ACDC patient"):
        find_frames(tmp_path)


def test_stratified_folds_are_balanced_stratified_and_deterministic() -> None:
    patients = [P(f"p{i:02d}", GROUPS[i % 5]) for i in range(10)]
    folds = stratified_folds(patients, 5)
    assert sorted(folds) == [p.name for p in patients]
    assert np.bincount(list(folds.values()), minlength=5).tolist() == [2, 2, 2, 2, 2]
    for g in GROUPS:  # each group's two patients land in different folds
        assert len({folds[p.name] for p in patients if p.group == g}) == 2
    assert stratified_folds(list(reversed(patients)), 5) == folds  # deterministic, order-independent
    odd = stratified_folds([P(f"q{i}", GROUPS[i % 2]) for i in range(7)], 3, seed=4)
    sizes = np.bincount(list(odd.values()), minlength=3)
    assert sizes.max() - sizes.min() <= 1
    assert stratified_folds([P("a", "x"), P("a", "x"), P("b", "x")], 2).keys() == {"a", "b"}  # one entry per patient


# ---------------------------------------------------------------------------- the cache


@pytest.fixture(scope="module")
def two_patients(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_acdc_tree(tmp_path_factory.mktemp("data") / "acdc", n=2)


def test_build_cache_writes_documented_arrays(two_patients: Path, tmp_path: Path) -> None:
    frames = find_frames(two_patients)
    seen: list[str] = []
    out = build_cache(
        frames, tmp_path / "c" / "cache", TINY, truncation_px=20.0, progress=lambda f: seen.append(f.name)
    )
    assert out == tmp_path / "c" / "cache" and seen == [f.name for f in frames]
    assert sorted(p.name for p in out.iterdir()) == [
        "distmaps.npy",
        "images.npy",
        "index.csv",
        "labels.npy",
        "meta.json",
    ]
    assert [p.name for p in out.parent.iterdir()] == ["cache"]  # no temporary folder left
    cache = load_cache(out)
    n = 2 * 2 * 4  # patients x frames x slices
    assert len(cache) == n and len(cache.index) == n
    assert cache.images.shape == (n, 64, 64) and cache.images.dtype == np.float16
    assert cache.labels.shape == (n, 64, 64) and cache.labels.dtype == np.uint8
    assert cache.distmaps.shape == (n, 3, 64, 64) and cache.distmaps.dtype == np.float16
    for arr in (cache.images, cache.labels, cache.distmaps):
        assert isinstance(arr, np.memmap)
    assert set(np.unique(cache.labels)) == {0, 1, 2, 3}
    assert abs(float(np.asarray(cache.images, np.float32).mean())) < 1.0
    for i in range(n):
        np.testing.assert_allclose(
            cache.distmaps[i].astype(np.float32), distance_maps(cache.labels[i], (1, 2, 3), 20.0), atol=0.02
        )
    assert float(cache.distmaps.min()) == -20.0
    row = cache.index[5]
    assert row == {"patient": "patient001", "group": "DCM", "phase": "ES", "frame": "patient001:ES",
                   "slice": "1", "n_slices": "4", "position": "0.3333"}  # fmt: skip
    assert cache.patients == ["patient001", "patient002"] and cache.frames == [f.name for f in frames]
    assert cache.slices_of({"patient002"}).tolist() == list(range(8, 16))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == "cardioseg-cache/1" and meta["n_slices"] == n and meta["distance_truncation_px"] == 20.0
    assert meta["preprocess"] == TINY.to_dict() and meta["frames"] == [f.name for f in frames]
    assert meta["label_map"] == {"background": 0, "rv": 1, "myo": 2, "lv": 3}
    with open(out / "index.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == n


def test_failed_build_leaves_nothing_behind(
    two_patients: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cardioseg.dataset as ds

    frames = find_frames(two_patients)
    original = ds.prepare_frame
    calls: list[int] = []

    def flaky(frame, cfg):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return original(frame, cfg)

    monkeypatch.setattr(ds, "prepare_frame", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        build_cache(frames, tmp_path / "c" / "cache", TINY)
    assert not (tmp_path / "c").exists() or list((tmp_path / "c").iterdir()) == []
    monkeypatch.undo()
    # a failure while writing the arrays (the temporary folder exists) keeps an older cache
    old = build_cache(frames[:1], tmp_path / "c" / "cache", TINY)

    def broken(*args, **kwargs):
        raise RuntimeError("no space")

    monkeypatch.setattr(ds, "distance_maps", broken)
    with pytest.raises(RuntimeError, match="no space"):
        build_cache(frames, old, TINY)
    assert [p.name for p in old.parent.iterdir()] == ["cache"] and len(load_cache(old)) == 4


def test_load_cache_errors(tmp_path: Path) -> None:
    with pytest.raises(InputFileNotFoundError, match="cardioseg preprocess"):
        load_cache(tmp_path / "nothing")
    (tmp_path / "meta.json").write_text('{"format": "other/9"}')
    with pytest.raises(ConfigError, match="format"):
        load_cache(tmp_path)
    with pytest.raises(ConfigError, match="no frames"):
        build_cache([], tmp_path / "empty", TINY)
