"""benchmarks/cv_evaluate.py and benchmarks/cv_table.py: the helpers that pick each fold's
weights (ensembles included) and build the one-row-per-variant summary, on a tiny fake RUNS."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
from conftest import REPO_ROOT


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cv_evaluate = _load("cv_evaluate")
cv_table = _load("cv_table")


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_variant_weights_pairs_the_folds_that_every_run_has(tmp_path):
    u0 = _touch(tmp_path / "unet" / "fold0" / "unet2d-acdc-fold0.pt")
    _touch(tmp_path / "unet" / "fold1" / "unet2d-acdc-fold1.pt")
    _touch(tmp_path / "dmr" / "fold0" / "last.pt")  # checkpoints are not exported weights
    _touch(tmp_path / "dmr" / "fold0" / "best.pt")
    _touch(tmp_path / "dmr" / "fold0" / "shape_ae.pt")  # a pre-trained shape autoencoder (srnn, acnn)
    d0 = _touch(tmp_path / "dmr" / "fold0" / "dmr-unet2d-acdc-fold0.pt")
    _touch(tmp_path / "dmr" / "fold2" / "last.pt")  # unfinished
    assert cv_evaluate.variant_weights(tmp_path, "unet") == {
        0: [u0],
        1: [u0.parents[1] / "fold1" / "unet2d-acdc-fold1.pt"],
    }
    assert cv_evaluate.variant_weights(tmp_path, "unet+dmr") == {0: [u0, d0]}
    assert cv_evaluate.variant_weights(tmp_path, "dmr+missing") == {}


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _fake_eval(runs: Path, variant: str, dice: dict[str, float], ef_err: dict[str, float], seconds: float) -> None:
    metrics, clinical = [], []
    for study, d in dice.items():
        for phase in ("ED", "ES"):
            for label in ("lv", "rv", "myo"):
                metrics.append({"study": study, "phase": phase, "label": label, "dice": d, "hd95_mm": 2.0})
            metrics.append({"study": study, "phase": phase, "label": "average", "dice": 0.0, "hd95_mm": 99.0})
        metrics.append({"study": study, "phase": "ES", "label": "rv", "dice": d, "hd95_mm": "inf"})
        clinical.append(
            {"study": study, "lv_ef_pct_diff": -ef_err[study], "rv_ef_pct_diff": 1.0, "lv_mass_g_diff": 2.0}
        )
    _write_csv(runs / f"eval_{variant}" / "metrics.csv", metrics)
    _write_csv(runs / f"eval_{variant}" / "clinical.csv", clinical)
    _write_csv(runs / variant / "fold0" / "log.csv", [{"epoch": e, "seconds": seconds} for e in (1, 2, 3)])


def test_summary_table_rows_means_and_paired_p(tmp_path):
    studies = [f"patient{i:03d}" for i in range(1, 9)]
    _fake_eval(tmp_path, "unet", {s: 0.80 for s in studies}, {s: 4.0 for s in studies}, seconds=20.0)
    _fake_eval(
        tmp_path, "explog", {s: 0.80 + 0.01 * i for i, s in enumerate(studies, 1)}, {s: 2.0 for s in studies}, 30.0
    )
    lines = cv_table.summary_table(tmp_path, ["unet", "explog"], ["U-Net", "U-Net, exp-log loss"])
    rows = [line.split(" | ") for line in lines if line.startswith("| U-Net")]
    assert len(rows) == 2
    ref, other = rows
    # Dice: the mean over the structures of each patient, then over patients ("average" rows ignored)
    assert ref[1] == "0.800" and other[1] == f"{0.80 + 0.045:.3f}"
    # HD95: infinite values are left out, so every patient's mean is 2 mm
    assert ref[3] == "2.00" and other[3] == "2.00"
    assert ref[2] == "–" and other[4] == "1"  # the reference has no p; identical HD95: p = 1 (metrics.wilcoxon_p)
    assert float(other[2]) == pytest.approx(0.0078, abs=1e-4)  # 8 paired improvements: exact Wilcoxon
    assert ref[5] == "4.0" and other[5] == "2.0"  # LV EF absolute error
    assert other[-2] == "30.0" and other[-1].rstrip(" |") == "3"  # s/epoch, epochs


def test_wall_thickness_benchmark_on_a_tiny_acdc_tree(tmp_path, small_phantom, capsys):
    """By group from the expert labels, and predicted vs expert agreement (here the same masks)."""
    import json

    from conftest import save_nifti

    wall = _load("wall_thickness")
    p = small_phantom
    for name, group in (("patient001", "HCM"), ("patient002", "NOR")):
        folder = tmp_path / "acdc" / name
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text(f"ED: 1\nES: 5\nGroup: {group}\nHeight: 170\nWeight: 70\n")
        for n, t in ((1, 0), (5, 4)):
            save_nifti(folder / f"{name}_frame{n:02d}_gt.nii.gz", p.labels[..., t], p.affine)
    out = tmp_path / "wall"
    # the expert reports are written first, so they can stand in for a predict output folder
    assert wall.main([str(tmp_path / "acdc"), "--pred", str(out / "expert"), "--out", str(out)]) == 0
    result = json.loads((out / "wall.json").read_text())
    assert set(result["by_group"]) == {"HCM", "NOR"} and result["by_group"]["HCM"]["n"] == 1
    assert result["max_thickness"]["n"] == 2 and result["max_thickness"]["mae"] == 0.0
    assert "| HCM | 1 |" in capsys.readouterr().out


def _write_eval(folder: Path, dice: dict[tuple[str, str, str], float], ef: dict[str, tuple[float, float]]) -> Path:
    """A ``cardioseg evaluate`` folder with the columns cv_paired reads (HD = 10 x (1 - Dice))."""
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["study", "phase", "label", "dice", "hd_mm", "hd95_mm"])
        for (study, phase, label), d in dice.items():
            w.writerow([study, phase, label, d, 10 * (1 - d), 5 * (1 - d)])
        w.writerow(["patient001", "ED", "average", 0.0, 0.0, 0.0])  # not a structure: ignored
    with open(folder / "clinical.csv", "w", newline="") as f:
        w = csv.writer(f)
        keys = ("lv_ef_pct", "rv_ef_pct", "lv_mass_g")
        w.writerow(["study", "group", *[f"{k}_{s}" for k in keys for s in ("pred", "ref")]])
        for study, (pred, ref) in ef.items():
            w.writerow([study, "NOR", *[v for _ in keys for v in (pred, ref)]])
    return folder


def test_cv_paired_means_worst_dice_gross_frames_and_clinical_errors(tmp_path):
    cv_paired = _load("cv_paired")
    frames = [(f"patient{i:03d}", ph, lab) for i in range(1, 7) for ph in ("ED", "ES") for lab in ("lv", "myo", "rv")]
    a = {k: 0.9 for k in frames}
    a[("patient002", "ES", "rv")] = 0.6  # one gross failure in A
    b = {k: 0.95 for k in frames}
    a_dir = _write_eval(tmp_path / "a", a, {f"patient{i:03d}": (50.0 + i, 50.0) for i in range(1, 7)})
    b_dir = _write_eval(tmp_path / "b", b, {f"patient{i:03d}": (50.0, 50.0) for i in range(1, 8)})
    text = cv_paired.table(a_dir, b_dir, "old", "new")
    assert text.startswith("6 patients in both")
    mean_a = (0.9 * 35 + 0.6) / 36
    assert f"| mean Dice | {sum(v for k, v in a.items() if k[0] <= 'patient006') / 36:.4f} | 0.9500 |" in text
    assert f"{mean_a:.4f}" in text and "| worst structure Dice | 0.850 | 0.950 |" in text
    assert "| frames with a structure Dice < 0.70 | 1 | 0 | |" in text and "old: patient002 ES; new: none" in text
    assert "| RV | ES | 0.850 | 0.950 |" in text  # mean over the 6 patients' ES RV
    assert "| LV EF % | old | " in text and "| +3.5 | 3.50 | – |" in text  # bias and MAE of 1..6
    assert "| LV EF % | new | nan | +0.0 | 0.00 | 0.031 |" in text  # constant: r undefined; p over 6 pairs
    rows = cv_paired.worst_rows(a_dir, b_dir)
    assert rows[1] == ["patient002", "0.6000", "ES rv", "0.9500", "ED lv"] and len(rows) == 6


def test_cv_merge_joins_disjoint_folds_and_refuses_a_study_scored_twice(tmp_path):
    cv_merge = _load("cv_merge")
    for name, studies in (("a", ["patient003", "patient001"]), ("b", ["patient002"])):
        _write_csv(tmp_path / name / "metrics.csv", [{"study": s, "phase": "ED", "label": "lv", "dice": 0.9} for s in studies])
        _write_csv(tmp_path / name / "clinical.csv", [{"study": s, "lv_ef_pct_pred": 55.0} for s in studies])
    counts = cv_merge.merge([tmp_path / "a", tmp_path / "b"], tmp_path / "ab")
    assert counts == {str(tmp_path / "a"): 2, str(tmp_path / "b"): 1}
    with open(tmp_path / "ab" / "clinical.csv", newline="") as f:
        assert [r["study"] for r in csv.DictReader(f)] == ["patient001", "patient002", "patient003"]
    with open(tmp_path / "ab" / "metrics.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 3
    with pytest.raises(SystemExit, match="patient002 is in both"):
        cv_merge.merge([tmp_path / "b", tmp_path / "b"], tmp_path / "bb")
    _write_csv(tmp_path / "c" / "metrics.csv", [{"study": "patient009", "phase": "ED", "dice": 0.9}])
    with pytest.raises(SystemExit, match="other columns"):
        cv_merge.merge([tmp_path / "a", tmp_path / "c"], tmp_path / "ac")


def test_inference_args_name_every_option_and_take_any_crop():
    assert cv_evaluate.inference_args("e120@crop112,tta") == ["--crop-px", "112", "--tta", "--clean-up", "largest"]
    assert cv_evaluate.inference_args("cur") == ["--clean-up", "largest", "--crop-px", "0", "--no-tta"]
    with pytest.raises(SystemExit, match="unknown inference option"):
        cv_evaluate.inference_args("cur@cropX")


def test_qc_structures_judges_each_structure_against_its_usual_uncertainty(tmp_path):
    qc_structures = _load("qc_structures")
    base = {f"confidence_{k}_{ph}": "" for ph in ("ed", "es") for k in ("rv", "myo", "lv")}

    def row(study, fold, worst, **conf):
        return {"study": study, "fold": fold, "worst_dice": worst, **base, **{f"confidence_{k}": v for k, v in conf.items()}}

    # good training studies: myocardium usually 0.10 unsure, LV 0.01; one failure with an unsure LV at ES
    rows = [row(f"g{i}", 0, 0.9, rv_ed=0.98, myo_ed=0.90, lv_ed=0.99, rv_es=0.98, myo_es=0.90, lv_es=0.99) for i in range(4)]
    rows.append(row("fail", 0, 0.5, rv_ed=0.98, myo_ed=0.90, lv_ed=0.99, rv_es=0.98, myo_es=0.90, lv_es=0.95))
    rows.append(row("thin", 1, 0.9, rv_ed=0.98, myo_ed=0.85, lv_ed=0.99, rv_es=0.98, myo_es=0.90, lv_es=0.99))
    path = tmp_path / "scores.csv"
    _write_csv(path, rows)
    read = qc_structures.read_scores([path], 0.70)
    assert [r["study"] for r in read if r["gross"]] == ["fail"]
    s = qc_structures.scores(read, [r for r in read if int(r["fold"]) == 0])
    # the worst confidence ranks the thin myocardium (0.85) below the failure (0.95)...
    assert s["worst"]["thin"] < s["worst"]["fail"]
    # ...each structure against its usual value does not: LV 0.05 / 0.01 = 5 x, myocardium 0.15 / 0.10 = 1.5 x
    assert s["ratio"]["fail"] == pytest.approx(-5.0) and s["ratio"]["thin"] == pytest.approx(-1.5)
