"""benchmarks/bench.py: its pure helpers (tables, README sections, agreement, targets), the
thread-count choice it reports, and the fast pre/post-processing paths it times, which must give
exactly the results of the straightforward reference computations."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT
from scipy import ndimage

from cardioseg.geometry import ModelSpace
from cardioseg.postprocess import _dilate, keep_largest_components, largest_component
from cardioseg.runtime import choose_num_threads, physical_cores


def _load_bench():
    spec = importlib.util.spec_from_file_location("cardioseg_bench", REPO_ROOT / "benchmarks" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC   9654 96-Core Processor
flags\t\t: fpu avx512f avx512_bf16
"""


def _results(**over: object) -> dict:
    r = {
        "machine": {"cpu": "AMD EPYC", "physical_cores": 2, "torch_threads": 2, "torch": "2.13.0", "load_avg_1min": 0.1},
        "settings": {"device": "cpu", "precision": "bf16", "batch_size": 16, "shape": [256, 216, 10], "spacing_mm": [1.4, 1.4, 10.0]},
        "synthetic": {
            "single": {"frames": 30, "s_per_frame": 0.2, "breakdown_s_per_frame": {"read": 0.01, "network": 0.17}},
            "batch": {"studies": 4, "frames": 120, "s_per_frame": 0.25, "frames_per_s": 4.0},
            "network_only": {"s_per_frame": 0.15},
            "ratio_single": 0.2 / 0.15,
            "ratio_batch": 0.25 / 0.15,
            "cli": {"frames": 30, "wall_s": 9.0, "max_rss_gb": 0.9},
        },
        "flops": {"per_frame": 2.4e10, "achieved_gflops": 160.0, "peak_gflops": {"bf16": 400.0, "fp32": 100.0}, "fraction_of_peak": 0.4},
        "agreement": {"synthetic": {"frames": 2, "same_label_fraction": 0.99995, "dice_rv": 0.999, "dice_myo": 0.998, "dice_lv": None}},
        "help_s": {"cardioseg --help": 0.15},
    }  # fmt: skip
    r.update(over)
    return r


def test_cpu_model_and_machine_name():
    assert bench.cpu_model(CPUINFO) == "AMD EPYC 9654 96-Core Processor"
    assert bench.cpu_model("") == ""
    assert bench.machine_name({"cpu": "X", "physical_cores": 8}) == "X, 8 cores"
    assert bench.machine_name({"cpu": "X", "physical_cores": 2, "cpu_class": "AVX2"}) == "X, 2 cores (AVX2)"
    assert bench.cpu_class({"avx2", "avx512f"}, "x86_64") == "AVX-512"
    assert bench.machine_name({"cpu": "X", "physical_cores": 16, "gpu": "NVIDIA H200"}) == "X, 16 cores, NVIDIA H200"


def test_agreement_pools_counts_over_frames():
    a = np.zeros((4, 4, 2), np.uint8)
    b = a.copy()
    a[0, :2, 0] = 1  # 2 voxels of label 1 in a, 1 of them in b
    b[0, 0, 0] = 1
    a[3, 3, 1] = b[3, 3, 1] = 3
    structures = {"rv": 1, "myo": 2, "lv": 3}
    counts = [bench.agreement(a, b, structures), bench.agreement(b, b, structures)]
    pooled = bench.pooled_agreement(counts, list(structures))
    assert pooled["frames"] == 2
    assert pooled["same_label_fraction"] == pytest.approx(63 / 64)
    assert pooled["dice_rv"] == pytest.approx(2 * (1 + 1) / (2 + 1 + 1 + 1))
    assert pooled["dice_myo"] is None  # absent from both
    assert pooled["dice_lv"] == 1.0
    with pytest.raises(ValueError):
        bench.agreement(a, b[:2], structures)


def test_gflops_and_number_format():
    assert bench.gflops(2e9, 0.5) == 4.0
    assert bench.gflops(1.0, 0.0) is None
    assert bench._fmt(None) == "–"
    assert bench._fmt(0.123456) == "0.123"
    assert bench._fmt(1234.5) == "1234"
    assert bench._fmt(7) == "7"


def test_targets_on_cpu_and_gpu():
    rows = [r["ok"] for r in bench.target_rows(_results())]
    # s per frame 0.25 <= 0.3 (a CPU of no known class: the fp32 target); no ACDC run; batch ratio 1.67 and
    # one-study ratio 1.33 > 1.3; RSS 0.9 <= 1.5 GB; the cine process 9 <= 10 s; frames/s: GPU only
    assert rows == [True, None, False, False, True, True, None]
    fast = _results(acdc={"frames": 20, "s_per_frame": 0.09})
    fast["machine"]["cpu_class"] = "AMX"  # native bf16: 0.1 s per frame
    assert [r["ok"] for r in bench.target_rows(fast)][:2] == [False, True]
    capped = _results()
    capped["machine"]["cpu_class"] = "AVX2 cap on AMX"  # the cap's code path: fp32, 0.3 s
    assert bench.target_rows(capped)[0]["ok"] is True
    gpu = _results(settings={"device": "cuda", "precision": "bf16", "batch_size": 16})
    gpu["synthetic"]["batch"]["frames_per_s"] = 600.0
    rows = bench.target_rows(gpu)
    assert rows[0]["ok"] is None and rows[-1]["ok"] is True
    short = _results()
    short["synthetic"]["cli"]["frames"] = 2  # the memory target is for a 30-frame cine
    assert [r["ok"] for r in bench.target_rows(short) if r["metric"].startswith("peak RSS")] == [None]


def test_markdown_table_lists_targets_and_breakdown():
    table = bench.markdown_table(_results())
    assert table.startswith("cpu · bf16 · 2 torch threads")
    assert "| target | measured | target | met |" in table
    assert "| end to end / network only, batch | 1.67 | <= 1.3 | **no** |" in table
    assert "· read, s per frame" in table and "(5 %)" in table
    assert "0.99995" in table  # agreement keeps its digits


def test_replace_section_appends_then_replaces():
    text = bench.replace_section("", "CPU A, 2 cores", "| a |\n")
    assert text.startswith("# Benchmarks") and "## Results" in text and "### CPU A, 2 cores\n\n| a |\n" in text
    text = bench.replace_section(text, "GPU B, 16 cores", "| b |\n")
    text = bench.replace_section(text, "CPU A, 2 cores", "| a2 |\n")
    assert "| a |" not in text and "| a2 |" in text and "| b |" in text
    assert text.index("### CPU A") < text.index("### GPU B")  # replaced in place
    assert text.count("### CPU A, 2 cores") == 1
    other = bench.replace_section("# Mine\n\nintro\n", "M", "x")
    assert other.startswith("# Mine\n\nintro\n") and other.endswith("## Results\n\n### M\n\nx\n")


def test_acdc_frames_are_spread(tmp_path: Path):
    for p in range(1, 5):
        for f in (1, 12):
            d = tmp_path / f"patient{p:03d}"
            d.mkdir(exist_ok=True)
            (d / f"patient{p:03d}_frame{f:02d}.nii.gz").touch()
            (d / f"patient{p:03d}_frame{f:02d}_gt.nii.gz").touch()
    picked = bench.acdc_frames(tmp_path, 4)  # two patients, both frames of each: studies as predict runs them
    assert [p.name for p in picked] == [f"patient{p:03d}_frame{f:02d}.nii.gz" for p in (1, 3) for f in (1, 12)]
    assert [p.name for p in bench.acdc_frames(tmp_path, 1)] == ["patient001_frame01.nii.gz", "patient001_frame12.nii.gz"]
    assert bench.acdc_frames(tmp_path, 0) == [] and bench.acdc_frames(tmp_path / "none", 3) == []


# ---------------------------------------------------------------------------- threads


def test_thread_count_choice():
    assert choose_num_threads(3, {"OMP_NUM_THREADS": "8"}) == (3, "--threads")
    assert choose_num_threads(0, {"OMP_NUM_THREADS": "6,2", "SLURM_CPUS_PER_TASK": "4"}) == (6, "$OMP_NUM_THREADS")
    assert choose_num_threads(None, {"SLURM_CPUS_PER_TASK": "4"}) == (4, "$SLURM_CPUS_PER_TASK")
    n, source = choose_num_threads(None, {"OMP_NUM_THREADS": "", "SLURM_CPUS_PER_TASK": "x"})
    assert source == "physical cores" and n == physical_cores() >= 1


def test_physical_cores_counts_hyperthreads_once(tmp_path: Path):
    for cpu, core in enumerate([0, 1, 0, 1]):  # 4 logical CPUs on 2 cores
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text("0\n")
        (topo / "core_id").write_text(f"{core}\n")
    assert physical_cores([0, 1, 2, 3], sysfs=str(tmp_path)) == 2
    assert physical_cores([0, 2], sysfs=str(tmp_path)) == 1
    assert physical_cores([0, 9], sysfs=str(tmp_path)) == 2  # unreadable topology: count CPUs


# ---------------------------------------------------------------------------- fast paths = reference


def _ball(radii: list[int]) -> np.ndarray:
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    return sum((g / max(r, 1)) ** 2 for g, r in zip(grids, radii)) <= 1.0


def test_row_dilation_equals_binary_dilation():
    rng = np.random.default_rng(0)
    for _ in range(60):
        shape = tuple(int(s) for s in rng.integers(1, 24, 3))
        mask = rng.random(shape) < rng.uniform(0.005, 0.2)
        radii = [int(r) for r in rng.integers(0, 7, 3)]
        ball = _ball(radii)
        assert np.array_equal(_dilate(mask, ball), ndimage.binary_dilation(mask, structure=ball))


def _largest_component_reference(mask, spacing, slice_axis=2, tolerance_mm=8.0):  # the whole-volume original
    radii = [0 if a == slice_axis else round(tolerance_mm / spacing[a]) for a in range(3)]
    if not mask.any():
        return mask.copy()
    probe = ndimage.binary_dilation(mask, structure=_ball(radii)) if any(radii) else mask
    components, n = ndimage.label(probe, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(components[mask], minlength=n + 1)
    sizes[0] = 0
    return mask & (components == int(np.argmax(sizes)))


def test_cropped_largest_component_equals_whole_volume():
    rng = np.random.default_rng(1)
    for k in range(25):
        shape = (int(rng.integers(20, 50)), int(rng.integers(20, 50)), int(rng.integers(2, 8)))
        blobs = ndimage.binary_opening(rng.random(shape) < 0.15 + 0.01 * k, np.ones((2, 2, 1), bool))
        spacing = (float(rng.uniform(0.8, 2.0)), float(rng.uniform(0.8, 2.0)), 8.0)
        for tol in (0.0, 4.0, 8.0):
            expected = _largest_component_reference(blobs, spacing, 2, tol)
            assert np.array_equal(largest_component(blobs, spacing, 2, tol), expected)
        labels = (rng.integers(1, 4, shape) * blobs).astype(np.uint8)
        for tol in (0.0, 8.0):
            out = keep_largest_components(labels, spacing, (1, 2, 3), tolerance_mm=tol)
            ref = np.zeros_like(labels)
            for v in (1, 2, 3):
                ref[_largest_component_reference(labels == v, spacing, tolerance_mm=tol)] = v
            assert np.array_equal(out, ref)


@pytest.mark.parametrize(
    "shape, spacing",
    [((60, 52, 5), (1.4, 1.4, 10.0)), ((47, 71, 3), (2.3, 1.7, 8.0)), ((200, 180, 2), (0.6, 0.6, 6.0))],
)
def test_windowed_argmax_equals_full_resampling(shape, spacing):
    """``probabilities_to_labels`` (only near the heart, per slice) == argmax of the full
    resampling, including blobs at the border of the model grid and argmax ties."""
    rng = np.random.default_rng(2)
    affine = np.diag([*spacing, 1.0])
    space = ModelSpace.for_image(affine, shape, 1.5625, 64)
    n_slices = shape[2]
    logits = rng.normal(0, 1, (n_slices, 4, 64, 64)).astype(np.float32)
    logits[:, 0] += 4.0 * (
        ndimage.gaussian_filter(rng.random((n_slices, 64, 64)), (0, 6, 6)) < 0.5
    )  # background most places
    logits[0, 1, :5, :] += 8.0  # foreground at the model grid's border
    logits[-1, 3, 20:30, -3:] += 8.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probs[1, 2, 30:34, 30:34] = probs[1, 0, 30:34, 30:34]  # exact ties with background
    probs = probs.astype(np.float32)
    expected = np.argmax(space.probabilities_to_native(probs), axis=0).astype(np.uint8)
    assert np.array_equal(space.probabilities_to_labels(probs), expected)
    probs[-1, 1, 10, 10] = np.nan  # non-finite input takes the general path
    expected = np.argmax(space.probabilities_to_native(probs), axis=0).astype(np.uint8)
    assert np.array_equal(space.probabilities_to_labels(probs), expected)


def test_native_window_reproduces_whole_grid_coordinates():
    """A window found by ``native_window`` resamples with exactly the whole grid's coordinates
    (float64 data shows even a 1-ulp difference)."""
    rng = np.random.default_rng(3)
    for _ in range(40):
        n = int(rng.integers(40, 300))
        space = ModelSpace.for_image(np.diag([float(rng.uniform(0.5, 2.5))] * 2 + [10.0, 1.0]), (n, n, 1), 1.5625, 128)
        grid = space.grid
        scale, offset = grid._scale_offset()
        zoom = 1.0 / scale
        full_offset = -offset * zoom  # as InPlaneGrid.to_native
        src = rng.random((128, 128))
        lo, hi = sorted(int(x) for x in rng.integers(0, 128, 2))
        start, stop, win_offset = grid.native_window(0, lo, hi)
        if stop <= start:
            continue
        kw = {"order": 1, "mode": "constant", "prefilter": False}
        whole = ndimage.affine_transform(src, zoom, full_offset, output_shape=(n, n), **kw)
        part = ndimage.affine_transform(src, zoom, (win_offset, full_offset[1]), output_shape=(stop - start, n), **kw)
        assert np.array_equal(part, whole[start:stop])


def test_stage_timer_sees_the_network_on_the_path_predict_takes(tmp_path, small_phantom, tiny_weights_path):
    """Every stage exists, and the network's share is measured whatever the path (two stages,
    test-time rotations, fp32): the profile once gave it 0 %."""
    from conftest import save_nifti

    import cardioseg

    cine = save_nifti(tmp_path / "c.nii.gz", small_phantom.image[..., :2], small_phantom.affine)
    with bench.StageTimer() as timer:
        (result,) = cardioseg.predict(cine, tmp_path / "out", weights=tiny_weights_path, device="cpu",
                                      precision="fp32", tta=True, crop_px=32)  # fmt: skip
    assert result.error is None and timer.missing == []
    assert timer.seconds["network (+ softmax, copy back)"] > 0
    assert timer.seconds["read"] > 0 and timer.seconds["write NIfTI"] > 0


def test_isa_cap_is_recorded_and_turns_auto_to_fp32(monkeypatch):
    """``--isa avx2`` runs the bench again with the caps in the environment: the machine record
    names the cap, and ``auto`` precision no longer picks bf16 (emulated under AVX2)."""
    assert bench.isa_capped("avx2", {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"})
    assert not bench.isa_capped("avx2", {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    for key, value in zip(bench.ISA_ENV, bench.ISA_CAPS["avx2"]):
        monkeypatch.setenv(key, value)
    info = bench.machine_info("cpu")
    assert info["isa_cap"] == {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    assert info["cpu_class"].startswith("AVX2 cap on ")
    from cardioseg.runtime import resolve_precision

    assert resolve_precision("auto", "cpu") == "fp32"
