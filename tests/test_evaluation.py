"""``cardioseg evaluate``: pairing, per-case metrics, summaries, clinical agreement, outputs, CLI."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import save_nifti
from scipy.stats import wilcoxon
from typer.testing import CliRunner

from cardioseg import evaluation as E
from cardioseg.cli import app
from cardioseg.errors import ConfigError, InputFileNotFoundError
from cardioseg.labels import MNMS
from cardioseg.phantom import PhantomSpec, heart_labels

runner = CliRunner()
AFF = np.diag([1.25, 1.25, 10.0, 1.0])
VOXEL_ML = 1.25 * 1.25 * 10.0 / 1000.0
_C, _S = math.cos(math.radians(30)), math.sin(math.radians(30))
# permuted and oblique: stored axis 0 is the 10 mm slice axis, the in-plane axes rotated 30 degrees
OBLIQUE = np.array([[0, 1.25 * _C, -1.25 * _S, 5.0], [0, 1.25 * _S, 1.25 * _C, -3.0], [10.0, 0, 0, 7.0], [0, 0, 0, 1]])
INF, NAN = math.inf, math.nan


def put(path: Path, data: np.ndarray, affine: np.ndarray = AFF) -> Path:
    return save_nifti(path, np.asarray(data, dtype=np.uint8), affine)


def touch(root: Path, *names: str) -> None:
    for name in names:
        put(root / name, heart())


def heart(slice_axis: int = 2) -> np.ndarray:
    """10 x 10 x 4 ACDC labels in slices 1-2: LV 3 (18 voxels), myo 2 (32), RV 1 (20)."""
    m = np.zeros((10, 10, 4), np.uint8)
    m[2:7, 2:7, 1:3] = 2
    m[3:6, 3:6, 1:3] = 3
    m[7:9, 2:7, 1:3] = 1
    return np.moveaxis(m, 2, slice_axis)


def one_case(tmp_path: Path, pred: np.ndarray, ref: np.ndarray, affine: np.ndarray = AFF, **kw) -> E.CaseResult:
    case = E.Case("c", put(tmp_path / "p.nii.gz", pred, affine), put(tmp_path / "r.nii.gz", ref, affine))
    return E.evaluate_case(case, E.EvaluateOptions(**kw))


def by_label(result: E.CaseResult, frame: int = 0) -> dict[str, dict]:
    assert result.error is None, result.error
    return {r["label"]: r for r in result.frames[frame].rows}


def mrow(case: str, label: str, phase: str | None = "ED", group: str | None = None, **metrics: float) -> dict:
    """A metrics.csv-like row; metrics not given are 0."""
    base = {"case": case, "frame": None, "study": case, "phase": phase, "group": group, "label": label}
    return {**base, **{m: metrics.get(m, 0.0) for m in E.METRICS}}


# ---------------------------------------------------------------------------- pairing


@pytest.mark.parametrize(
    ("preds", "refs", "ref_suffix"),
    [
        (["a_seg", "b_seg"], ["a_gt", "b_gt", "a", "b"], "_gt"),  # images beside _gt labels are not refs
        (["a", "b"], ["a_gt", "b_gt"], "_gt"),
        (["a_pred", "b_pred"], ["a_seg", "b_seg"], "_seg"),
        (["a_seg", "b_seg"], ["a", "b"], ""),
    ],
)
def test_pair_files_suffix_conventions(tmp_path, preds, refs, ref_suffix):
    touch(tmp_path / "pred", *(f"{n}.nii.gz" for n in preds))
    touch(tmp_path / "ref", *(f"{n}.nii.gz" for n in refs))
    pairing = E.pair_files(tmp_path / "pred", tmp_path / "ref")
    assert [c.key for c in pairing.cases] == ["a", "b"]
    assert [c.ref.name for c in pairing.cases] == [f"a{ref_suffix}.nii.gz", f"b{ref_suffix}.nii.gz"]
    assert pairing.unmatched_pred == [] and pairing.unmatched_ref == []


@pytest.fixture
def acdc_tree(tmp_path: Path) -> tuple[Path, Path]:
    """An ACDC-like reference tree and a flat prediction folder (with strays and hidden files)."""
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    p = ref / "patient001"
    touch(p, "patient001_frame01.nii.gz", "patient001_frame01_gt.nii.gz", "patient001_frame12.nii.gz",
          "patient001_frame12_gt.nii.gz", "patient001_4d.nii.gz")  # fmt: skip
    (p / "Info.cfg").write_text("ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n")
    touch(ref / "patient003", "patient003_frame01_gt.nii.gz")
    touch(pred, "patient001_frame01_seg.nii.gz", "patient001_frame12_seg.nii.gz", "patient002_frame01_seg.nii.gz",
          ".patient001_frame01_seg.nii.gz.x.tmp.nii.gz", ".hidden/patient009_frame01_seg.nii.gz")  # fmt: skip
    return pred, ref


def test_pair_files_acdc_tree(acdc_tree):
    pred, ref = acdc_tree
    pairing = E.pair_files(pred, ref)
    assert [c.key for c in pairing.cases] == ["patient001_frame01", "patient001_frame12"]
    assert all(c.ref.name.endswith("_gt.nii.gz") and c.pred.parent == pred for c in pairing.cases)
    assert pairing.unmatched_pred == [pred / "patient002_frame01_seg.nii.gz"]
    assert pairing.unmatched_ref == [ref / "patient003" / "patient003_frame01_gt.nii.gz"]


def test_pair_files_custom_suffixes_and_single_files(tmp_path):
    put(tmp_path / "p" / "a-mask.nii", heart())
    touch(tmp_path / "r", "a-manual.nii.gz", "a.nii.gz")
    pairing = E.pair_files(tmp_path / "p", tmp_path / "r", ("-mask",), ("-manual",))
    assert [(c.key, c.ref.name) for c in pairing.cases] == [("a", "a-manual.nii.gz")]
    # two single files are paired whatever their names
    touch(tmp_path, "foo.nii.gz", "bar.nii.gz", "x_seg.nii.gz")
    assert [c.key for c in E.pair_files(tmp_path / "foo.nii.gz", tmp_path / "bar.nii.gz").cases] == ["foo"]
    single = E.pair_files(tmp_path / "x_seg.nii.gz", tmp_path / "bar.nii.gz").cases
    assert [(c.key, c.ref.name) for c in single] == [("x", "bar.nii.gz")]


def test_pair_files_errors(tmp_path):
    touch(tmp_path / "dup", "x/a_seg.nii.gz", "y/a_seg.nii.gz")
    touch(tmp_path / "ref", "a_gt.nii.gz")
    touch(tmp_path / "other", "zzz_seg.nii.gz")
    with pytest.raises(ConfigError, match='two prediction files have the name "a"'):
        E.pair_files(tmp_path / "dup", tmp_path / "ref")
    with pytest.raises(ConfigError, match="zzz.*--pred-suffix/--ref-suffix"):
        E.pair_files(tmp_path / "other", tmp_path / "ref")
    with pytest.raises(InputFileNotFoundError, match="absent"):
        E.pair_files(tmp_path / "absent", tmp_path / "ref")
    with pytest.raises(ConfigError, match="two files or two folders"):
        E.pair_files(tmp_path / "ref" / "a_gt.nii.gz", tmp_path / "other")


# ---------------------------------------------------------------------------- describe_cases


def test_describe_cases_info_cfg_and_phase_suffixes(acdc_tree, tmp_path):
    cases = E.describe_cases(E.pair_files(*acdc_tree).cases)
    got = [(c.key, c.study, c.phase, c.group, c.ed_frame, c.es_frame) for c in cases]
    assert got == [(f"patient001_frame{n}", "patient001", p, "DCM", 0, 11) for n, p in (("01", "ED"), ("12", "ES"))]
    ref = put(tmp_path / "flat" / "r.nii.gz", heart())
    named = E.describe_cases([E.Case(k, ref, ref) for k in ("s1_ED", "s1-es", "plain")])
    assert [(c.study, c.phase) for c in named] == [("s1", "ED"), ("s1", "ES"), ("plain", None)]


def test_pairs_csv_overrides_info_cfg(acdc_tree, tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("study,ed,es,group\nP1,patient001_frame01.nii.gz,patient001_frame12,HCM\n")
    pairs = E.read_pairs_csv(path)
    assert pairs == {"patient001_frame01": ("P1", "ED", "HCM"), "patient001_frame12": ("P1", "ES", "HCM")}
    cases = E.describe_cases(E.pair_files(*acdc_tree).cases, pairs)
    assert [(c.study, c.phase, c.group) for c in cases] == [("P1", "ED", "HCM"), ("P1", "ES", "HCM")]
    path.write_text("study,ed\nP1,a\n")
    with pytest.raises(ConfigError, match="missing: es"):
        E.read_pairs_csv(path)
    with pytest.raises(InputFileNotFoundError):
        E.read_pairs_csv(tmp_path / "absent.csv")


# ---------------------------------------------------------------------------- one case


def test_identical_masks(tmp_path):
    rows = by_label(one_case(tmp_path, heart(), heart()))
    assert list(rows) == ["rv", "myo", "lv"]
    for label, n in (("rv", 20), ("myo", 32), ("lv", 18)):
        r = rows[label]
        assert r["dice"] == 1.0 and r["jaccard"] == 1.0 and r["vol_diff_ml"] == 0.0
        assert r["hd_mm"] == r["hd95_mm"] == r["assd_mm"] == r["msd_mm"] == 0.0
        assert r["vol_ref_ml"] == pytest.approx(n * VOXEL_ML, abs=1e-12)


@pytest.mark.parametrize(("affine", "axis"), [(AFF, 2), (OBLIQUE, 0)], ids=["diagonal", "permuted-oblique"])
def test_one_slice_shift_is_10_mm(tmp_path, affine, axis):
    ref = heart(axis)
    rows = by_label(one_case(tmp_path, np.roll(ref, 1, axis=axis), ref, affine))
    for r in rows.values():
        assert r["hd_mm"] == pytest.approx(10.0, rel=1e-5) and r["hd95_mm"] == pytest.approx(10.0, rel=1e-5)
        assert r["dice"] == pytest.approx(0.5) and r["vol_diff_ml"] == pytest.approx(0.0, abs=1e-9)


def test_absent_structures(tmp_path):
    ref = heart()
    ref[ref == 1] = 0  # no RV anywhere
    pred = ref.copy()
    pred[pred == 3] = 0  # LV missed by the prediction
    rows = by_label(one_case(tmp_path, pred, ref))
    for m in ("dice", "jaccard", "hd_mm", "hd95_mm", "assd_mm", "msd_mm"):
        assert math.isnan(rows["rv"][m]), m
    assert rows["lv"]["dice"] == 0.0 and rows["lv"]["vol_pred_ml"] == 0.0
    assert all(rows["lv"][m] == INF for m in ("hd_mm", "hd95_mm", "assd_mm", "msd_mm"))
    assert rows["myo"]["dice"] == 1.0


def shifted(mm: float) -> np.ndarray:
    return AFF + np.pad(np.array([[0, 0, 0, mm]]), ((0, 3), (0, 0)))


BAD = {  # (pred path, ref path) -> writes a broken pair
    "shape": lambda p, r: put(p, heart()[..., :3]),
    "affine": lambda p, r: put(p, heart(), shifted(0.5)),
    "float-ref": lambda p, r: save_nifti(r, np.random.default_rng(0).random((10, 10, 4)).astype(np.float32), AFF),
    "values": lambda p, r: put(p, np.where(heart() == 1, 7, heart())),
    "truncated": lambda p, r: p.write_bytes(p.read_bytes()[:60]),
}


@pytest.mark.parametrize(
    ("bad", "needle"),
    [("shape", "shape (10, 10, 3) of the prediction != (10, 10, 4)"), ("affine", "affine differs"),
     ("float-ref", "r.nii.gz\" is not a label map"), ("values", "label values [7] outside the acdc label map"),
     ("truncated", "could not be read as NIfTI")],
)  # fmt: skip
def test_case_errors_are_recorded(tmp_path, bad, needle):
    pred, ref = put(tmp_path / "p.nii.gz", heart()), put(tmp_path / "r.nii.gz", heart())
    BAD[bad](pred, ref)
    result = E.evaluate_case(E.Case("c", pred, ref))
    assert needle in (result.error or ""), result.error
    assert result.frames == []


def test_affine_within_tolerance(tmp_path):
    ref = put(tmp_path / "r.nii.gz", heart())
    pred = put(tmp_path / "p.nii.gz", heart(), shifted(1e-4))
    assert E.evaluate_case(E.Case("c", pred, ref)).error is None


def test_label_presets(tmp_path):
    ref = heart()
    mnms = np.where(ref == 1, 3, np.where(ref == 3, 1, ref))  # 1 LV, 3 RV
    assert {k: r["dice"] for k, r in by_label(one_case(tmp_path, mnms, ref, pred_labels=MNMS)).items()} == {
        "rv": 1.0, "myo": 1.0, "lv": 1.0}  # fmt: skip
    wrong_case = one_case(tmp_path, mnms, ref)  # read as ACDC: RV and LV swapped
    wrong = by_label(wrong_case)
    assert wrong["rv"]["dice"] == 0.0 and wrong["lv"]["dice"] == 0.0
    assert wrong_case.swapped == ["predicted LV in the reference RV", "predicted RV in the reference LV"]
    assert one_case(tmp_path, mnms, ref, pred_labels=MNMS).swapped == []
    assert by_label(one_case(tmp_path, ref, mnms, ref_labels=MNMS))["lv"]["dice"] == 1.0


@pytest.mark.parametrize(("affine", "axis"), [(AFF, 2), (OBLIQUE, 0)], ids=["diagonal", "permuted-oblique"])
def test_regional_dice(tmp_path, affine, axis):
    ref = np.zeros((6, 6, 8), np.uint8)
    ref[2:4, 2:4, 1:7] = 3  # LV in slices 1..6 -> apical 0-2, mid 3-4, basal 5-7
    ref[1:5, 1:5, 5:7] = 3  # larger at the base
    pred = ref.copy()
    pred[..., 1] = 0  # apical slice 1 missed: apical Dice 2*4/(4+8)
    ref, pred = np.moveaxis(ref, 2, axis), np.moveaxis(pred, 2, axis)
    lv = by_label(one_case(tmp_path, pred, ref, affine))["lv"]
    assert lv["dice_apical"] == pytest.approx(2 / 3) and lv["dice_mid"] == 1.0 and lv["dice_basal"] == 1.0
    assert lv["dice"] == pytest.approx(88 / 92)
    assert math.isnan(by_label(one_case(tmp_path, pred, ref, affine))["rv"]["dice_mid"])
    off = by_label(one_case(tmp_path, pred, ref, affine, regional=False))["lv"]
    assert all(math.isnan(off[f"dice_{r}"]) for r in ("apical", "mid", "basal"))


def test_4d_pair_evaluates_labelled_frames(tmp_path):
    big, small = heart(), heart()
    small[small == 3] = 2
    small[4, 4, 1:3] = 3  # LV of 2 voxels
    ref = np.zeros((10, 10, 4, 5), np.uint8)
    ref[..., 1], ref[..., 3] = small, big
    pred = ref.copy()
    pred[..., 0] = big  # an unlabelled reference frame is not evaluated
    case = E.Case("cine", put(tmp_path / "cine_seg.nii.gz", pred), put(tmp_path / "cine_gt.nii.gz", ref))
    ev = E.evaluate(E.describe_cases([case]))
    (res,) = ev.results
    assert [(f.frame, f.phase) for f in res.frames] == [(1, "ES"), (3, "ED")]
    assert all(r["dice"] == 1.0 for f in res.frames for r in f.rows)
    (clin,) = ev.clinical
    assert clin["study"] == "cine"
    assert (clin["lv_edv_ml_ref"], clin["lv_esv_ml_ref"]) == pytest.approx((18 * VOXEL_ML, 2 * VOXEL_ML))


def test_sheared_affine_volumes_agree_with_clinical(tmp_path):
    sheared = np.array([[1.25, 0, 5.0, 0], [0, 1.25, 0, 0], [0, 0, 10.0, 0], [0, 0, 0, 1]])
    res = one_case(tmp_path, heart(), heart(), sheared)
    assert by_label(res)["lv"]["vol_ref_ml"] == pytest.approx(res.frames[0].ref_volumes.lv_ml)


# ---------------------------------------------------------------------------- clinical agreement


@pytest.fixture
def phantom_folders(tmp_path: Path) -> dict:
    """refs of study s1 (ED + ES) and s2 (ED only); predictions equal, and edited at s1 ED."""
    spec = PhantomSpec(shape=(40, 40, 4), spacing_mm=(2.5, 2.5, 10.0), n_frames=8)
    aff = np.diag([-2.5, -2.5, 10.0, 1.0])
    ed, es = heart_labels(spec, 0), heart_labels(spec, spec.n_frames // 2)
    edited = ed.copy().ravel()
    edited[np.flatnonzero(ed.ravel() == 0)[:7]] = 3  # +7 LV voxels
    edited[np.flatnonzero(ed.ravel() == 2)[:5]] = 0  # -5 myocardium voxels
    for name, data in (("s1_ED", ed), ("s1_ES", es), ("s2_ED", ed)):
        put(tmp_path / "ref" / f"{name}_gt.nii.gz", data, aff)
        put(tmp_path / "same" / f"{name}_seg.nii.gz", data, aff)
        put(tmp_path / "edit" / f"{name}_seg.nii.gz", edited.reshape(ed.shape) if name == "s1_ED" else data, aff)
    return {"root": tmp_path, "ed": ed, "es": es, "voxel_ml": 2.5 * 2.5 * 10.0 / 1000.0}


def _run(root: Path, pred: str, density: float = 1.05) -> E.Evaluation:
    return E.evaluate(E.describe_cases(E.pair_files(root / pred, root / "ref").cases), myo_density_g_ml=density)


def test_clinical_agreement_perfect(phantom_folders):
    ph = phantom_folders
    ev = _run(ph["root"], "same")
    assert [r["study"] for r in ev.clinical] == ["s1"]  # s2 has no ES
    row = ev.clinical[0]
    v = ph["voxel_ml"]
    assert row["lv_edv_ml_ref"] == pytest.approx((ph["ed"] == 3).sum() * v)
    assert row["lv_esv_ml_ref"] == pytest.approx((ph["es"] == 3).sum() * v)
    assert row["lv_mass_g_ref"] == pytest.approx((ph["ed"] == 2).sum() * v * 1.05)
    assert set(ev.summary["clinical"]) == set(E.CLINICAL_KEYS)
    for k, a in ev.summary["clinical"].items():
        assert a["n"] == 1 and a["bias"] == 0.0 and a["mae"] == 0.0, k


@pytest.mark.parametrize("density", [1.05, 1.10])
def test_clinical_known_edit(phantom_folders, density):
    ph = phantom_folders
    v = ph["voxel_ml"]
    (row,) = _run(ph["root"], "edit", density).clinical
    assert row["lv_edv_ml_diff"] == pytest.approx(7 * v, abs=1e-9)
    assert row["lv_sv_ml_diff"] == pytest.approx(7 * v, abs=1e-9)
    assert row["lv_esv_ml_diff"] == 0.0 and row["rv_edv_ml_diff"] == 0.0
    assert row["lv_mass_g_ref"] == pytest.approx((ph["ed"] == 2).sum() * v * density)
    assert row["lv_mass_g_diff"] == pytest.approx(-5 * v * density, abs=1e-9)
    edv, esv = row["lv_edv_ml_pred"], row["lv_esv_ml_pred"]
    assert row["lv_ef_pct_pred"] == pytest.approx((edv - esv) / edv * 100)


# ---------------------------------------------------------------------------- summaries


def test_describe_and_summarize():
    d = E.describe([1.0, NAN, INF, 3.0])
    assert d == {"n": 2, "mean": 2.0, "std": pytest.approx(math.sqrt(2)), "median": 2.0, "min": 1.0, "max": 3.0,
                 "n_nan": 1, "n_inf": 1}  # fmt: skip
    assert math.isnan(E.describe([NAN])["mean"]) and math.isnan(E.describe([5.0])["std"])
    rows = [
        mrow("a", "rv", "ED", "G1", dice=0.8), mrow("a", "myo", "ED", "G1", dice=0.6),
        mrow("a", "lv", "ED", "G1", dice=NAN, hd_mm=NAN),
        mrow("b", "rv", "ES", "G2", dice=0.4), mrow("b", "myo", "ES", "G2", dice=1.0),
        mrow("b", "lv", "ES", "G2", dice=0.0, hd_mm=INF),
        mrow("c", "rv", None, None, dice=0.2),
    ]  # fmt: skip
    by_phase = E.summarize(rows, lambda r: r["phase"] or "unknown")
    assert list(by_phase) == ["ED", "ES", "unknown"]
    assert list(by_phase["ED"]) == ["rv", "myo", "lv", E.AVERAGE]
    lv_ed, lv_es = by_phase["ED"]["lv"], by_phase["ES"]["lv"]
    assert lv_ed["dice"]["n"] == 0 and lv_ed["dice"]["n_nan"] == 1 and math.isnan(lv_ed["dice"]["mean"])
    assert lv_es["hd_mm"]["n_inf"] == 1 and lv_es["hd_mm"]["n"] == 0
    assert by_phase["ED"][E.AVERAGE]["dice"]["mean"] == pytest.approx(0.7)  # NaN structure left out
    assert by_phase["ES"][E.AVERAGE]["dice"]["mean"] == pytest.approx(1.4 / 3)
    assert by_phase["ES"][E.AVERAGE]["hd_mm"]["n_inf"] == 1  # an inf structure makes the average inf
    every = E.summarize(rows, lambda r: "all")["all"]
    assert every["rv"]["dice"]["mean"] == pytest.approx(1.4 / 3) and every["rv"]["dice"]["n"] == 3
    by_group = E.summarize(rows, lambda r: r["group"])
    assert list(by_group) == ["G1", "G2"] and by_group["G2"]["myo"]["dice"]["mean"] == 1.0


# ---------------------------------------------------------------------------- compare


def _method_rows(worse: float = 0.0, n: int = 10, skip: int | None = None) -> list[dict]:
    return [
        mrow(f"c{i}", label, "ED" if i % 2 else "ES", dice=0.9 + 0.005 * i - worse * (1 + i / 10), hd_mm=2.0 + i)
        for i in range(n) if i != skip for label in ("rv", "myo", "lv")
    ]  # fmt: skip


def test_compare_rows_wilcoxon():
    a, b = _method_rows(), _method_rows(worse=0.05)
    out = {(r["label"], r["phase"], r["metric"]): r for r in E.compare_rows(a, b)}
    assert {k[1] for k in out} == {"ED", "ES", "all"}
    assert {k[0] for k in out} == {"rv", "myo", "lv", E.AVERAGE}
    r = out[("lv", "all", "dice")]
    xa = [x["dice"] for x in a if x["label"] == "lv"]
    xb = [x["dice"] for x in b if x["label"] == "lv"]
    assert r["n_pairs"] == 10 and r["mean_a"] > r["mean_b"]
    assert r["p_value"] < 0.01
    assert r["p_value"] == pytest.approx(wilcoxon(xa, xb).pvalue, rel=1e-12)
    assert out[("lv", "all", "hd_mm")]["p_value"] == 1.0  # equal distances
    assert out[("lv", "ED", "dice")]["n_pairs"] == 5
    fewer = E.compare_rows(a, _method_rows(worse=0.05, skip=3))  # only the cases both have
    assert {r["n_pairs"] for r in fewer if r["phase"] == "all"} == {9}
    assert all(r["p_value"] == 1.0 for r in E.compare_rows(a, a))


# ---------------------------------------------------------------------------- writing


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _strict_json(text: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_write_evaluation(tmp_path, phantom_folders):
    ref = heart()
    pred = ref.copy()
    pred[pred == 3] = 0  # LV missed: inf distances
    ref_no_rv = np.where(ref == 1, 0, ref)  # RV absent in both: NaN
    put(tmp_path / "p" / "k_seg.nii.gz", pred)
    put(tmp_path / "r" / "k_gt.nii.gz", ref)
    put(tmp_path / "p" / "n_seg.nii.gz", ref_no_rv)
    put(tmp_path / "r" / "n_gt.nii.gz", ref_no_rv)
    ev = E.evaluate(E.describe_cases(E.pair_files(tmp_path / "p", tmp_path / "r").cases))
    out = tmp_path / "out"
    written = E.write_evaluation(ev, out, {"note": "x"})
    assert sorted(p.name for p in written) == ["metrics.csv", "summary.json"]  # no study with ED + ES
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "summary.json"]  # no temporary leftovers
    with open(out / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == (*E.CASE_COLUMNS, *E.METRICS)
        rows = {(r["case"], r["label"]): r for r in reader}
    assert len(rows) == 2 * 3
    assert rows[("k", "lv")]["hd_mm"] == "inf" and rows[("k", "lv")]["dice"] == "0"
    assert rows[("n", "rv")]["dice"] == "nan" and rows[("n", "rv")]["assd_mm"] == "nan"
    assert rows[("n", "lv")]["dice"] == "1" and rows[("n", "lv")]["frame"] == ""
    summary = _strict_json((out / "summary.json").read_text())
    assert summary["note"] == "x" and summary["n_cases"] == 2 and summary["errors"] == {}
    assert summary["all"]["lv"]["dice"]["n"] == 2 and summary["all"]["rv"]["dice"]["mean"] == 1.0
    assert summary["all"]["rv"]["dice"]["n_nan"] == 1 and summary["all"]["lv"]["hd_mm"]["n_inf"] == 1
    assert summary["clinical"] == {} and set(summary["by_phase"]) == {"unknown"}
    # with a full study: clinical.csv, strict JSON even though r is NaN for one study
    out2 = tmp_path / "out2"
    E.write_evaluation(_run(phantom_folders["root"], "edit"), out2)
    assert sorted(p.name for p in out2.iterdir()) == ["clinical.csv", "metrics.csv", "summary.json"]
    clin = read_csv(out2 / "clinical.csv")
    assert [r["study"] for r in clin] == ["s1"] and "lv_mass_g_diff" in clin[0]
    assert _strict_json((out2 / "summary.json").read_text())["clinical"]["lv_ef_pct"]["pearson_r"] is None


# ---------------------------------------------------------------------------- command line


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """pred/ and ref/ with an ED/ES study (case1) and a 3D case without a phase."""
    small = heart()
    small[small == 3] = 2
    small[4, 4, 1:3] = 3
    for name, data in (("case1_ED", heart()), ("case1_ES", small), ("other", heart())):
        put(tmp_path / "pred" / f"{name}_seg.nii.gz", data)
        put(tmp_path / "ref" / f"{name}_gt.nii.gz", data)
    return tmp_path / "pred", tmp_path / "ref"


def cli(*args: object):
    return runner.invoke(app, ["evaluate", *(str(a) for a in args)])


def test_cli_evaluate_good_pair(tmp_path, folders):
    out = tmp_path / "out"
    result = cli(*folders, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["clinical.csv", "metrics.csv", "summary.json"]
    summary = _strict_json((out / "summary.json").read_text())
    assert summary["n_cases"] == 3 and summary["pred"] == str(folders[0]) and summary["errors"] == {}
    assert set(summary["by_phase"]) == {"ED", "ES", "unknown"}


def test_cli_case_error_keeps_other_cases(tmp_path, folders):
    put(folders[0] / "other_seg.nii.gz", heart()[..., :3])
    out = tmp_path / "out"
    result = cli(*folders, "-o", out, "-q")
    assert result.exit_code == 1
    assert "cardioseg: error: other:" in result.stderr and "shape" in result.stderr
    assert "Traceback" not in result.stderr
    cases = {r["case"] for r in read_csv(out / "metrics.csv")}
    assert cases == {"case1_ED", "case1_ES"}
    assert "other" in _strict_json((out / "summary.json").read_text())["errors"]


def test_cli_case_error_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    key = "a_rather_long_case_name_" * 3
    put(tmp_path / "pred" / f"{key}_seg.nii.gz", heart()[..., :3])
    put(tmp_path / "ref" / f"{key}_gt.nii.gz", heart())
    result = cli(tmp_path / "pred", tmp_path / "ref", "-o", tmp_path / "out", "-q")
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"cardioseg: error: {key}: shape"), result.stderr


def test_cli_missing_pred(tmp_path, folders):
    result = cli(tmp_path / "nowhere", folders[1], "-o", tmp_path / "out", "-q")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f'cardioseg: error: File not found: "{tmp_path / "nowhere"}"']
    assert not (tmp_path / "out").exists()


def test_cli_compare(tmp_path, folders):
    worse = tmp_path / "worse"
    for p in folders[0].iterdir():
        data = np.asarray(nib.load(str(p)).dataobj)
        data[data == 3] = 2  # LV cavity labelled myocardium
        put(worse / p.name, data)
    out = tmp_path / "out"
    result = cli(*folders, "-o", out, "--compare", worse)  # not quiet: the tables are printed too
    assert result.exit_code == 0, result.output
    assert "Wilcoxon" in result.stdout
    rows = {(r["label"], r["phase"], r["metric"]): r for r in read_csv(out / "compare.csv")}
    dice_lv = rows[("lv", "all", "dice")]
    assert dice_lv["n_pairs"] == "3" and float(dice_lv["mean_a"]) == 1.0 and float(dice_lv["mean_b"]) == 0.0
    assert _strict_json((out / "summary.json").read_text())["compare_with"] == str(worse)


def test_cli_plots(tmp_path, folders):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    result = cli(*folders, "-o", out, "-q", "--plots")
    assert result.exit_code == 0, result.output
    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert pngs == ["bland_altman_lv_ef_pct.png", "bland_altman_lv_mass_g.png", "bland_altman_rv_ef_pct.png",
                    "dice_boxplot.png"]  # fmt: skip
    assert all((out / "plots" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in pngs)


@pytest.mark.parametrize(
    ("args", "needles"),
    [(["--labels", "nonsense"], ["nonsense", "acdc, mnms, ukbb"]), (["--myo-density", "0"], ["--myo-density"]),
     (["--plots"], ["matplotlib", "pip install"])],
)  # fmt: skip
def test_cli_bad_options(tmp_path, folders, monkeypatch, args, needles):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if matplotlib were not installed
    result = cli(*folders, "-o", tmp_path / "out", "-q", *args)
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("cardioseg: error:") and all(n in result.stderr for n in needles)
    assert not (tmp_path / "out").exists()


def test_the_label_trap_mnms_predictions_against_acdc_references(tmp_path):
    """``--labels mnms`` no longer drags the references along (they default to ACDC); cardioseg's
    own reports say which convention their masks use; a swapped convention is named."""
    ref = heart()
    mnms = np.where(ref == 1, 3, np.where(ref == 3, 1, ref))
    put(tmp_path / "pred" / "c_seg.nii.gz", mnms)
    put(tmp_path / "ref" / "c_gt.nii.gz", ref)
    runner = CliRunner()
    args = ["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref")]
    good = runner.invoke(app, [*args, "-o", str(tmp_path / "e1"), "--labels", "mnms"])
    assert good.exit_code == 0, good.output
    rows = list(csv.DictReader((tmp_path / "e1" / "metrics.csv").read_text().splitlines()))
    assert {r["label"]: float(r["dice"]) for r in rows} == {"rv": 1.0, "myo": 1.0, "lv": 1.0}
    swapped = runner.invoke(app, [*args, "-o", str(tmp_path / "e2")])  # read as ACDC: a warning, not silence
    assert "labels look swapped in 1 of 1 case(s) (predicted LV in the reference RV; predicted RV in the reference LV" in swapped.stderr
    (tmp_path / "pred" / "c_report.json").write_text(json.dumps({"study": "c", "label_map": MNMS.as_dict()}))
    auto = runner.invoke(app, [*args, "-o", str(tmp_path / "e3")])  # the report says: M&Ms labels
    assert auto.exit_code == 0 and "labels look swapped" not in auto.stderr
    assert "read with the mnms label map their cardioseg reports record" in auto.stderr
    rows = list(csv.DictReader((tmp_path / "e3" / "metrics.csv").read_text().splitlines()))
    assert {r["label"]: float(r["dice"]) for r in rows} == {"rv": 1.0, "myo": 1.0, "lv": 1.0}


# ---------------------------------------------------------------------------- what is printed


def test_worst_cases_rank_dice_and_ef_errors():
    rows = [mrow("a", "rv", dice=0.9), mrow("a", "lv", dice=0.4, hd_mm=12.0), mrow("b", "rv", dice=NAN),
            mrow("b", "myo", dice=0.0), mrow("c", "lv", dice=0.95), {**mrow("c", E.AVERAGE), "dice": 0.1}]  # fmt: skip
    clinical = [{"study": s, "lv_ef_pct_pred": p, "lv_ef_pct_ref": 60.0, "lv_ef_pct_diff": p - 60.0,
                 "rv_ef_pct_pred": NAN, "rv_ef_pct_ref": 50.0, "rv_ef_pct_diff": NAN}
                for s, p in (("s1", 58.0), ("s2", 75.0), ("s3", 50.0))]  # fmt: skip
    worst = E.worst_cases(rows, clinical, n=3)
    # Dice 0 (missing on one side) first, NaN (absent on both) and the average never ranked
    assert [(r["case"], r["label"], r["dice"]) for r in worst["dice"]] == [("b", "myo", 0.0), ("a", "lv", 0.4), ("a", "rv", 0.9)]
    assert worst["dice"][1]["hd_mm"] == 12.0
    assert [(r["study"], r["diff"]) for r in worst["lv_ef_pct"]] == [("s2", 15.0), ("s3", -10.0), ("s1", -2.0)]
    assert worst["rv_ef_pct"] == []  # no finite RV EF


def _printed(tmp_path: Path, pred: Path, ref: Path, *extra: object):
    result = runner.invoke(app, ["evaluate", str(pred), str(ref), "-o", str(tmp_path / "out"), *map(str, extra)],
                           env={"COLUMNS": "100"})  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.stdout


def test_printed_worst_cases_and_no_statistics_from_too_few(tmp_path, folders):
    """One study: no r; three pairs: no Wilcoxon p; each says why; the worst cases are listed."""
    worse = tmp_path / "worse"
    for p in folders[0].iterdir():
        data = np.asarray(nib.load(str(p)).dataobj)
        data[data == 3] = 2
        put(worse / p.name, data)
    shown = _printed(tmp_path, *folders, "--compare", worse)
    assert f"r not shown for fewer than {E.MIN_N_CORRELATION} studies" in shown and "+nan" not in shown  # one study: no limits
    assert f"p not shown for fewer than {E.MIN_N_WILCOXON} pairs" in shown
    assert "lowest Dice (frame, structure)" in shown and "largest EF errors" in shown
    assert "A = pred vs B = worse" in " ".join(shown.split())
    summary = _strict_json((tmp_path / "out" / "summary.json").read_text())
    assert [r["dice"] for r in summary["worst"]["dice"]] == [1.0] * 5


def test_printed_statistics_with_enough_cases(tmp_path):
    for i in range(E.MIN_N_CORRELATION):
        ref, pred = heart(), heart()
        small = heart()
        small[small == 3] = 2
        small[4, 4, 1:3] = 3
        pred_es = small.copy()
        pred_es[4, 5, 1:3] = 3 if i % 2 else 2  # EF errors of both signs
        for phase, p, r in (("ED", pred, ref), ("ES", pred_es, small)):
            put(tmp_path / "pred" / f"s{i}_{phase}_seg.nii.gz", p)
            put(tmp_path / "ref" / f"s{i}_{phase}_gt.nii.gz", r)
    shown = _printed(tmp_path, tmp_path / "pred", tmp_path / "ref")
    assert "r not shown" not in shown and "clinical agreement" in shown
    assert "largest EF errors" in shown


def test_inf_footnote_only_when_a_star_is_shown(tmp_path, folders):
    assert "* some frames miss a structure" not in _printed(tmp_path, *folders)
    no_rv = heart()
    no_rv[no_rv == 1] = 0
    put(folders[0] / "other_seg.nii.gz", no_rv)  # RV missing on one side: its distances are inf
    for side, suffix in ((folders[0], "seg"), (folders[1], "gt")):
        put(side / f"more_{suffix}.nii.gz", heart())  # ... and finite in a second frame of that phase
    shown = _printed(tmp_path, *folders)
    assert "* some frames miss a structure" in " ".join(shown.split()) and "*" in shown.split("some frames")[0]


def test_bland_altman_names_all_points_of_a_small_set_and_outliers_of_a_large_one():
    from cardioseg.plots import LABEL_ALL_UP_TO, N_LABELLED, _labelled

    small = np.arange(5.0)
    assert _labelled(small, -1.0, 1.0) == [0, 1, 2, 3, 4]
    rng = np.random.default_rng(0)
    diff = rng.normal(0, 1, LABEL_ALL_UP_TO + 20)
    diff[[3, 30]] = (9.0, -9.0)
    picked = _labelled(diff, -2.5, 2.5)
    assert {3, 30} <= set(picked) and len(picked) >= N_LABELLED
    assert set(picked) == set(np.flatnonzero(np.abs(diff) > 2.5)) | set(np.argsort(-np.abs(diff))[:N_LABELLED])


def test_boxplot_shows_both_methods_with_compare(tmp_path, folders, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    calls = []
    real = Axes.boxplot

    def spy(self, data, *args, **kwargs):
        calls.append(len(data))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Axes, "boxplot", spy)
    worse = tmp_path / "worse"
    for p in folders[0].iterdir():
        put(worse / p.name, np.asarray(nib.load(str(p)).dataobj))
    ev = E.run_evaluation(*folders, tmp_path / "out", compare=worse, plots=True)
    assert ev.other is not None and len(calls) == 2 and calls[0] == calls[1] > 0  # one set of boxes per method
    calls.clear()
    E.run_evaluation(*folders, tmp_path / "out1", plots=True)
    assert len(calls) == 1
