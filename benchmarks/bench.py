"""Speed, memory and precision of ``cardioseg predict`` on one machine, in one run.

    python benchmarks/bench.py                       # CPU or GPU (auto), synthetic + ACDC when present
    python benchmarks/bench.py --device cpu --threads 2 --out benchmarks/results/bench.json --write-readme
    python benchmarks/bench.py --quick               # small and fast: checks that it all runs
    make bench                                       # the same with --write-readme

Measures, on synthetic short-axis cines of ACDC size (``cardioseg.phantom``, 256 x 216 x 10
voxels of 1.4 x 1.4 x 10 mm, ``--frames`` per cine) and the shipped default weights:

- end to end (read -> masks + report written) in-process with the model already loaded:
  one study (``run_predict`` on one cine; seconds per 3D frame) and a batch (``--studies``
  cines in one ``run_predict`` call, reading ahead as ``cardioseg predict`` does; frames/s);
- the network alone: the forward passes on the model-space slices of the same frames, same
  batch size and precision (inputs already on the device; no softmax, no copies), and the
  ratio end-to-end / network-only;
- where the end-to-end time goes: read, normalisation + resampling to model space, network
  (forward + softmax + copy back), back to native + argmax, connected-component clean-up,
  measuring (volumes, ED/ES, QC), writing NIfTI, writing the report (wall-clock time inside
  those functions, wrapped with ``time.perf_counter`` for one run);
- one whole ``python -m cardioseg predict`` process on one cine: wall time (interpreter start,
  imports and weight loading included) and its peak resident memory (``wait4`` max RSS);
- the network's achieved GFLOP/s (FLOPs of a forward pass counted with
  ``torch.utils.flop_counter.FlopCounterMode``) next to the machine's best large-matmul
  GFLOP/s in bf16 and fp32;
- bf16-vs-fp32 agreement of the final masks on the same frames (fraction of voxels with the
  same label, Dice per structure);
- the same per-frame speed and agreement on ``--acdc N`` real ACDC frames (the ED and ES frames of
  N/2 patients, one study each, as ``cardioseg predict`` runs patient folders) when
  ``../shared/data/acdc`` exists;
- the wall time of ``cardioseg --help`` and ``cardioseg predict --help`` (no torch import).

Results go to ``--out`` (JSON, with the machine: CPU model, cores, torch, threads, GPU, load
average) and a markdown table with the targets of the issue "Fast on a laptop CPU, scales to
a cluster" is printed; ``--write-readme`` puts it into ``benchmarks/README.md`` under a
heading with the machine's name (replacing an earlier table of the same machine).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ACDC = ROOT.parent / "shared" / "data" / "acdc"
README = Path(__file__).resolve().parent / "README.md"

ACDC_SHAPE = (256, 216, 10)  # X, Y, Z voxels of a typical ACDC frame
ACDC_SPACING = (1.4, 1.4, 10.0)  # mm
QUICK_SHAPE = (128, 108, 4)  # --quick: same field of view, fewer voxels and slices
QUICK_SPACING = (2.8, 2.8, 10.0)

TARGETS = {  # issue 16
    "cpu_s_per_frame": 0.3,  # batch mode, end to end, 2 cores, fp32 CPUs (AVX2, AVX-512 without bf16, ARM)
    "fast_cpu_s_per_frame": 0.1,  # the same on the CPU classes with native bf16 (FAST_CPU_CLASSES)
    "ratio": 1.3,  # end to end / network only
    "peak_rss_gb": 1.5,  # one `cardioseg predict` of a 30-frame cine
    "cine_process_s": 10.0,  # the same process's wall time
    "gpu_frames_per_s": 500.0,  # batch mode on an NVIDIA H200
}
FAST_CPU_CLASSES = ("AVX-512-BF16", "AMX")


def cpu_frame_target(results: dict[str, Any]) -> float:
    """Seconds per frame the issue asks of this run's CPU class (an ISA-capped run: the cap's class)."""
    fast = results.get("machine", {}).get("cpu_class") in FAST_CPU_CLASSES
    return TARGETS["fast_cpu_s_per_frame"] if fast else TARGETS["cpu_s_per_frame"]


NETWORK_STAGE = "network (+ softmax, copy back)"

# Where the end-to-end time goes: (stage, "module[:Class]", attribute). Wall time spent inside
# these calls is summed per stage; they do not nest.
STAGES: list[tuple[str, str, str]] = [
    ("read", "cardioseg.batch.run", "read_study"),
    ("normalise + to model space", "cardioseg.preprocess", "normalize_intensity"),
    ("normalise + to model space", "cardioseg.geometry:ModelSpace", "image_to_model"),
    # every forward pass: stage 1's coarse grid, stage 2's crop, each test-time rotation, any precision
    (NETWORK_STAGE, "cardioseg.inference", "forward_probabilities"),
    ("back to native + argmax", "cardioseg.geometry:ModelSpace", "probabilities_to_labels"),
    ("clean-up (largest component)", "cardioseg.inference", "clean_up_labels"),
    ("measure (volumes, ED/ES, QC)", "cardioseg.batch.measure", "frame_volumes"),
    ("measure (volumes, ED/ES, QC)", "cardioseg.batch.measure", "detect_ed_es"),
    ("measure (volumes, ED/ES, QC)", "cardioseg.batch.measure", "clinical_measures"),
    ("measure (volumes, ED/ES, QC)", "cardioseg.batch.measure", "study_flags"),
    ("write NIfTI", "cardioseg.batch.run", "write_mask"),
    ("write report (+ summary.csv)", "cardioseg.batch.run", "build_report"),
    ("write report (+ summary.csv)", "cardioseg.batch.run", "write_report"),
    ("write report (+ summary.csv)", "cardioseg.batch.run", "refresh_summary"),
]


# ---------------------------------------------------------------------------- pure helpers


def cpu_model(cpuinfo: str) -> str:
    """The CPU's name from the text of /proc/cpuinfo ("" when not found)."""
    for key in ("model name", "Model", "cpu model", "Processor"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        if m and m.group(1).strip():
            return re.sub(r"\s+", " ", m.group(1).strip())
    return ""


ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
ISA_CAPS = {"avx2": ("AVX2", "avx2"), "avx512": ("AVX512_CORE", "avx512")}  # --isa: values of ISA_ENV


def isa_capped(isa: str, env: dict[str, str] | None = None) -> bool:
    """True when the environment already holds ``--isa``'s caps.

    >>> isa_capped("avx2", {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}), isa_capped("avx2", {})
    (True, False)
    """
    env = dict(os.environ) if env is None else env
    return all(env.get(k) == v for k, v in zip(ISA_ENV, ISA_CAPS[isa]))


def cpu_class(flags: set[str] | list[str], machine: str) -> str:
    """The CPU's class for the speed tables: AMX, AVX-512-BF16, AVX-512, AVX2, ARM or other.

    >>> cpu_class({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "x86_64"), cpu_class({"avx2"}, "x86_64")
    ('AMX', 'AVX2')
    >>> cpu_class(set(), "aarch64")
    'ARM'
    """
    flags = set(flags)
    if machine.lower() in ("arm64", "aarch64") or machine.lower().startswith("arm"):
        return "ARM"
    for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512-BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2")):
        if flag in flags:
            return name
    return "other"


def machine_name(machine: dict[str, Any]) -> str:
    """A short heading for a machine: ``AMD EPYC, 2 cores`` (+ ``, NVIDIA H200`` with a GPU)."""
    cores = machine.get("physical_cores") or machine.get("logical_cpus")
    name = f"{machine.get('cpu') or 'unknown CPU'}, {cores} cores"
    if machine.get("cpu_class"):
        name += f" ({machine['cpu_class']})"
    if machine.get("gpu"):
        name += f", {machine['gpu']}"
    return name


def agreement(a: np.ndarray, b: np.ndarray, structures: dict[str, int]) -> dict[str, Any]:
    """Counts for comparing two label volumes: voxels, equal voxels, and per structure the
    intersection and the two sizes (pool them over frames with :func:`pooled_agreement`)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    out: dict[str, Any] = {"voxels": int(a.size), "same": int((a == b).sum())}
    for name, value in structures.items():
        ma, mb = a == value, b == value
        out[name] = [int((ma & mb).sum()), int(ma.sum()), int(mb.sum())]
    return out


def pooled_agreement(counts: Sequence[dict[str, Any]], structures: Sequence[str]) -> dict[str, Any]:
    """Fraction of voxels with the same label and Dice per structure, pooled over frames
    (Dice None when the structure is absent from both)."""
    voxels = sum(c["voxels"] for c in counts)
    out: dict[str, Any] = {
        "frames": len(counts),
        "same_label_fraction": (sum(c["same"] for c in counts) / voxels) if voxels else None,
    }
    for name in structures:
        inter = sum(c[name][0] for c in counts)
        total = sum(c[name][1] + c[name][2] for c in counts)
        out[f"dice_{name}"] = (2.0 * inter / total) if total else None
    return out


def gflops(flops: float, seconds: float) -> float | None:
    return flops / seconds / 1e9 if seconds > 0 else None


def _fmt(value: Any, digits: int = 3) -> str:
    """A number for a table: ``digits`` significant digits, whole numbers from 1000 on."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"
    return str(value)


def target_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets next to the measured values: ``{metric, measured, target, ok}``
    (ok None when the target does not apply to this run)."""
    s = results.get("synthetic", {})
    device = results.get("settings", {}).get("device", "cpu")
    gpu = device.startswith("cuda")
    rows: list[dict[str, Any]] = []
    batch = s.get("batch", {})
    cores = results.get("machine", {}).get("torch_threads")
    limit = cpu_frame_target(results)
    cls = results.get("machine", {}).get("cpu_class") or "this CPU"
    for label, spf in (
        (f"s per 3D frame, end to end, batch ({device}, {cores} threads)", batch.get("s_per_frame")),
        ("s per ACDC frame (ED/ES pairs), end to end, in process", (results.get("acdc") or {}).get("s_per_frame")),
    ):
        rows.append({"metric": label, "measured": spf, "target": f"<= {limit} s on 2 cores ({cls})" if not gpu else "–",
                     "ok": (spf <= limit) if (spf is not None and not gpu) else None})  # fmt: skip
    for key, label in (
        ("ratio_batch", "end to end / network only, batch"),
        ("ratio_single", "end to end / network only, one study"),
    ):
        r = s.get(key)
        rows.append({"metric": label, "measured": r, "target": f"<= {TARGETS['ratio']}",
                     "ok": (r <= TARGETS["ratio"]) if r is not None else None})  # fmt: skip
    cli = s.get("cli", {})
    frames = cli.get("frames")
    for key, label, target in (
        ("max_rss_gb", f"peak RSS (GB), one `cardioseg predict` of a {frames}-frame cine", "peak_rss_gb"),
        ("wall_s", f"wall s, one `cardioseg predict` of a {frames}-frame cine", "cine_process_s"),
    ):
        v = cli.get(key)
        rows.append({"metric": label, "measured": v, "target": f"<= {TARGETS[target]} (30 frames)",
                     "ok": (v <= TARGETS[target]) if (v is not None and frames == 30) else None})  # fmt: skip
    fps = batch.get("frames_per_s")
    rows.append({
        "metric": "frames/s, end to end, batch",
        "measured": fps,
        "target": f">= {TARGETS['gpu_frames_per_s']:.0f} on an H200 (GPU only)",
        "ok": (fps >= TARGETS["gpu_frames_per_s"]) if (fps is not None and gpu) else None,
    })  # fmt: skip
    return rows


def markdown_table(results: dict[str, Any]) -> str:
    """The results as markdown: targets first, then the breakdown and the other numbers."""
    s = results.get("synthetic", {})
    set_ = results.get("settings", {})
    m = results.get("machine", {})
    lines = [
        f"{set_.get('device')} · {set_.get('precision')} · {m.get('torch_threads')} torch threads · batch size "
        f"{set_.get('batch_size')} · frames {set_.get('shape')} voxels of {set_.get('spacing_mm')} mm · torch "
        f"{m.get('torch')} · load average {m.get('load_avg_1min')} at start" + (" · **--quick**" if set_.get("quick") else ""),
        "",
        "| target | measured | target | met |",
        "|---|---|---|---|",
    ]  # fmt: skip
    for row in target_rows(results):
        ok = {True: "yes", False: "**no**", None: "–"}[row["ok"]]
        lines.append(f"| {row['metric']} | {_fmt(row['measured'])} | {row['target']} | {ok} |")
    lines += ["", "| measurement | value |", "|---|---|"]

    def add(label: str, value: Any, unit: str = "") -> None:
        if value is not None:
            lines.append(f"| {label} | {_fmt(value)}{(' ' + unit) if unit else ''} |")

    single, batch, net = s.get("single", {}), s.get("batch", {}), s.get("network_only", {})
    add(f"one study ({single.get('frames')} frames), end to end, s per frame", single.get("s_per_frame"))
    add(f"batch ({batch.get('studies')} studies, {batch.get('frames')} frames), s per frame", batch.get("s_per_frame"))
    add("batch, frames/s", batch.get("frames_per_s"))
    add("network only, one full-field pass (no stage 1, no rotations), s per frame", net.get("s_per_frame"))
    for stage, sec in (single.get("breakdown_s_per_frame") or {}).items():
        share = sec / single["s_per_frame"] if single.get("s_per_frame") else None
        add(f"· {stage}, s per frame", sec, f"({_fmt(100 * share, 2)} %)" if share is not None else "")
    cli = s.get("cli", {})
    add(f"`cardioseg predict` process ({cli.get('frames')}-frame cine), wall s", cli.get("wall_s"))
    add("`cardioseg predict` process, peak RSS GB", cli.get("max_rss_gb"))
    for name, sec in (results.get("help_s") or {}).items():
        add(f"`{name}`, wall s", sec)
    fl = results.get("flops", {})
    add("network GFLOP per frame", (fl.get("per_frame") or 0) / 1e9 or None)
    add("network achieved GFLOP/s", fl.get("achieved_gflops"))
    for dt in ("bf16", "fp32"):
        add(f"matmul peak {dt}, GFLOP/s", (fl.get("peak_gflops") or {}).get(dt))
    add(f"network / matmul peak ({set_.get('precision')})", fl.get("fraction_of_peak"))
    for name, ag in (results.get("agreement") or {}).items():
        if ag.get("frames"):
            dice = ", ".join(f"{k[5:]} {_fmt(v, 4)}" for k, v in ag.items() if k.startswith("dice_"))
            lines.append(
                f"| bf16 vs fp32, {name} ({ag['frames']} frames): same label / Dice {dice} | "
                f"{_fmt(ag.get('same_label_fraction'), 6)} |"
            )
    acdc = results.get("acdc") or {}
    if acdc.get("frames"):
        add(f"ACDC ({acdc['frames']} frames), end to end, s per frame", acdc.get("s_per_frame"))
        add("ACDC, network only, s per frame", acdc.get("network_s_per_frame"))
        add("ACDC, end to end / network only", acdc.get("ratio"))
    return "\n".join(lines) + "\n"


README_INTRO = """# Benchmarks

- `bench.py` (`make bench`): speed, memory and bf16-vs-fp32 agreement of `cardioseg predict`
  on one machine (see the docstring for what is measured and how). Tables below are written by
  `python benchmarks/bench.py --write-readme`, one section per machine; rerunning on the same
  machine replaces its section. Numbers are only comparable on a quiet machine (see the load
  average in each table's first line).
- `acdc_validation.py` (`make bench-acdc`): accuracy of the shipped weights on held-out ACDC
  patients.

## Results
"""


def replace_section(text: str, heading: str, body: str) -> str:
    """``text`` (a README) with the ``### heading`` section set to ``body``: replaced where it
    exists (up to the next ``##``/``###`` heading), else appended; a missing README gets the intro."""
    if not text.strip():
        text = README_INTRO
    section = f"### {heading}\n\n{body.rstrip()}\n"
    pattern = re.compile(rf"^### {re.escape(heading)}[ \t]*\n.*?(?=^##[# ]|\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    if "## Results" not in text:
        text = text.rstrip() + "\n\n## Results\n"
    return text.rstrip() + "\n\n" + section


# ---------------------------------------------------------------------------- machine


def machine_info(device: str) -> dict[str, Any]:
    import nibabel
    import scipy
    import torch

    from cardioseg.runtime import choose_num_threads, physical_cores

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    info: dict[str, Any] = {
        "cpu": cpu_model(cpuinfo) or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "physical_cores": physical_cores(),
        "torch_threads": torch.get_num_threads(),
        "recommended_threads": list(choose_num_threads()),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "nibabel": nibabel.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "gpu": None,
    }
    flags = set(re.findall(r"\b(amx_bf16|amx_tile|avx512_bf16|avx512f|avx2)\b", cpuinfo))
    info["cpu_flags"] = sorted(flags)
    info["cpu_class"] = cpu_class(flags, platform.machine())
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    if cap:  # --isa: torch's kernels capped below what the CPU has
        info["isa_cap"] = {k: os.environ.get(k) for k in ISA_ENV}
        info["cpu_class"] = f"{cap.upper()} cap on {info['cpu_class']}"
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        info["gpu"] = torch.cuda.get_device_name(index)
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


# ---------------------------------------------------------------------------- measuring


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


class StageTimer:
    """Sums the wall time spent inside the functions of ``STAGES`` while active (thread-safe:
    the read-ahead thread of ``run_predict`` reads there)."""

    def __init__(self, stages: list[tuple[str, str, str]] = STAGES) -> None:
        self.stages = stages
        self.seconds: dict[str, float] = {}
        self.missing: list[str] = []
        self._lock = threading.Lock()
        self._restore: list[tuple[Any, str, Any]] = []

    def _wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                with self._lock:
                    self.seconds[stage] = self.seconds.get(stage, 0.0) + dt

        return timed

    def __enter__(self) -> StageTimer:  # noqa: PYI034 - no typing_extensions dependency
        for stage, where, attr in self.stages:
            module_name, _, cls = where.partition(":")
            owner: Any = importlib.import_module(module_name)
            if cls:
                owner = getattr(owner, cls, None)
            original = getattr(owner, attr, None) if owner is not None else None
            if original is None:
                self.missing.append(f"{where}.{attr}")
                continue
            self._restore.append((owner, attr, original))
            setattr(owner, attr, self._wrap(stage, original))
            self.seconds.setdefault(stage, 0.0)
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, attr, original in reversed(self._restore):
            setattr(owner, attr, original)
        self._restore.clear()


def write_cine(
    path: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float], frames: int, seed: int = 0
) -> Path:
    import nibabel as nib

    from cardioseg.phantom import PhantomSpec, make_phantom

    ph = make_phantom(PhantomSpec(shape=shape, spacing_mm=spacing, n_frames=frames, seed=seed))
    nib.save(nib.Nifti1Image(ph.image, ph.affine), str(path))
    return path


def run_batch(paths: Sequence[Path], predictor: Any, out: Path) -> tuple[float, list[Any]]:
    """Wall seconds of one ``run_predict`` over these inputs (as ``cardioseg predict`` runs them)."""
    from cardioseg.batch import StudyOptions, plan_studies, run_predict

    studies = plan_studies(list(paths), None, None)
    out.mkdir(parents=True, exist_ok=True)
    _sync(predictor.device)
    t0 = time.perf_counter()
    results = run_predict(studies, predictor, out, StudyOptions())
    _sync(predictor.device)
    wall = time.perf_counter() - t0
    errors = [f"{r.study.name}: {r.error}" for r in results if r.error]
    if errors:
        raise RuntimeError("; ".join(errors))
    return wall, results


def model_slices(predictor: Any, frame: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The normalised (S, fov, fov) model-space slices the network sees for one frame."""
    from cardioseg.preprocess import image_to_model

    return image_to_model(frame, affine, predictor.config)[1]


def network_only(predictor: Any, slices: Sequence[np.ndarray], repeats: int) -> float:
    """Best-of-``repeats`` seconds per frame of the forward passes alone (batching, autocast or the
    fused bf16 network as ``Predictor.slice_probabilities``; inputs already on the device)."""
    import torch

    from cardioseg.inference import group_frames
    from cardioseg.models.fusion import is_bf16_network

    dev, bs = predictor.device, predictor.batch_size
    kind = dev.split(":")[0]
    bf16 = predictor.precision == "bf16"
    native = bf16 and is_bf16_network(predictor.model)  # the fused CPU network: bf16 inputs, no autocast
    groups = group_frames([len(s) for s in slices], bs)  # frames pooled as predict pools them
    xs = [
        torch.from_numpy(np.ascontiguousarray(np.concatenate([slices[i] for i in g])[:, None], dtype=np.float32))
        .to(dev, dtype=torch.bfloat16 if native else torch.float32)
        .contiguous(memory_format=torch.channels_last)
        for g in groups
    ]
    best = float("inf")
    with torch.inference_mode(), torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16 and not native):
        for size in sorted({min(bs, len(x) - i) for x in xs for i in range(0, len(x), bs)}):
            predictor.model(
                xs[0][:1].expand(size, -1, -1, -1).contiguous(memory_format=torch.channels_last)
            )  # warm-up: one pass per batch shape
        for _ in range(repeats):
            _sync(dev)
            t0 = time.perf_counter()
            for x in xs:
                for i in range(0, len(x), bs):
                    predictor.model(x[i : i + bs])
            _sync(dev)
            best = min(best, time.perf_counter() - t0)
    return best / len(slices)


def forward_flops(predictor: Any) -> int:
    """FLOPs of the network on one model-space slice (convolutions and matmuls; 2 per MAC)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    fov = predictor.config.fov_px
    x = torch.zeros(1, 1, fov, fov, device=predictor.device)
    # the plain network: the counter does not see inside the fused CPU convolutions (same FLOPs)
    model = predictor.weights.build_model().eval().to(predictor.device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def matmul_peak(device: str, dtype_name: str, n: int, repeats: int) -> float | None:
    """Best GFLOP/s of an n x n x n ``torch.matmul`` (None when the dtype is not supported)."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    try:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.matmul(a, b)
        _sync(device)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
    except RuntimeError:
        return None
    return 2.0 * n**3 / best / 1e9


def cli_process(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python -m cardioseg ARGS`` as a child: its wall seconds, exit code and max RSS."""
    cmd = [sys.executable, "-m", "cardioseg", *args]
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        tail = log.read().decode(errors="replace")[-2000:]
    rss_kb = usage.ru_maxrss  # kilobytes on Linux (bytes on macOS)
    rss_gb = rss_kb / 2**20 if sys.platform != "darwin" else rss_kb / 2**30
    return {
        "wall_s": round(wall, 3),
        "returncode": proc.returncode,
        "max_rss_gb": round(rss_gb, 3),
        "log_tail": tail if proc.returncode else "",
    }


def acdc_frames(data: Path, n: int) -> list[Path]:
    """The ED and ES frames of ``n // 2`` ACDC patients spread evenly over the patients (sorted):
    ``cardioseg predict`` runs a patient folder as one study of two frames, whose per-study work
    (reading, stage 1, reports) two frames share, so one-frame studies would read slower per frame."""
    files = sorted(data.glob("patient*/patient*_frame[0-9][0-9].nii.gz"))
    if n <= 0 or not files:
        return []
    patients = sorted({f.parent for f in files})
    k = max(n // 2, 1)
    picked = set(patients[:: max(len(patients) // k, 1)][:k])
    return [f for f in files if f.parent in picked]


def agreement_on(frames: Sequence[tuple[np.ndarray, np.ndarray]], bf16: Any, fp32: Any) -> dict[str, Any]:
    structures = bf16.label_map.structures
    counts = [agreement(bf16.predict_frame(f, a), fp32.predict_frame(f, a), structures) for f, a in frames]
    return pooled_agreement(counts, list(structures))


# ---------------------------------------------------------------------------- the run


@contextlib.contextmanager
def _step(name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    print(f"bench: {name} ...", file=sys.stderr, flush=True)
    yield
    print(f"bench: {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from cardioseg.inference import PredictOptions, Predictor
    from cardioseg.io import read_volume
    from cardioseg.runtime import resolve_device, resolve_precision
    from cardioseg.weights import load_weights

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    quick = args.quick
    shape, spacing = (QUICK_SHAPE, QUICK_SPACING) if quick else (ACDC_SHAPE, ACDC_SPACING)
    frames = args.frames if args.frames is not None else (2 if quick else 30)
    studies = args.studies if args.studies is not None else (2 if quick else 4)
    repeats = 1 if quick else args.repeats
    acdc_n = (min(args.acdc, 2) if quick else args.acdc) if Path(args.data).is_dir() else 0

    results: dict[str, Any] = {
        "machine": machine_info(device),
        "settings": {
            "device": device, "precision": precision, "threads": args.threads or None, "batch_size": None,
            "frames": frames, "studies": studies, "shape": list(shape), "spacing_mm": list(spacing),
            "quick": quick, "weights": args.weights or "default", "repeats": repeats,
        },
    }  # fmt: skip
    weights = load_weights(args.weights)
    options = PredictOptions(device=device, precision=precision, batch_size=args.batch_size)
    predictor = Predictor(weights, options)
    results["settings"]["weights"] = weights.name
    results["settings"]["batch_size"] = predictor.batch_size
    syn: dict[str, Any] = {}
    results["synthetic"] = syn

    with tempfile.TemporaryDirectory(prefix="cardioseg-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with _step(f"synthetic cine {shape} x {frames} frames"):
            cine = write_cine(tmp / "cine_4d.nii.gz", shape, spacing, frames)
            vol = read_volume(cine)
            predictor.predict_frame(vol.data[..., 0], vol.affine)  # warm-up (kernels, caches)

        with _step("one study, in-process"):
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(device)
            with StageTimer() as timer:
                wall, _ = run_batch([cine], predictor, tmp / "single")
            breakdown = {k: v / frames for k, v in timer.seconds.items()}
            breakdown["other (not in the stages above)"] = max(wall - sum(timer.seconds.values()), 0.0) / frames
            syn["single"] = {
                "frames": frames,
                "wall_s": wall,
                "s_per_frame": wall / frames,
                "breakdown_s_per_frame": breakdown,
            }
            if timer.missing:
                syn["single"]["stages_not_found"] = timer.missing
            if device.startswith("cuda"):
                syn["single"]["gpu_peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30

        with _step(f"batch: {studies} studies"):
            paths = []
            for k in range(studies):
                p = tmp / f"study{k:03d}_4d.nii.gz"
                os.link(cine, p)
                paths.append(p)
            wall, _ = run_batch(paths, predictor, tmp / "batch")
            n = studies * frames
            syn["batch"] = {
                "studies": studies,
                "frames": n,
                "wall_s": wall,
                "s_per_frame": wall / n,
                "frames_per_s": n / wall,
            }

        with _step("network only"):
            n_sample = frames if device.startswith("cuda") else min(frames, 10)  # a GPU pools frames
            sample = [model_slices(predictor, vol.data[..., t], vol.affine) for t in range(n_sample)]
            net = network_only(predictor, sample, repeats)
            syn["network_only"] = {"s_per_frame": net, "s_per_slice": net / shape[2], "frames": len(sample)}
            # the overhead ratios divide by the network's own time inside the run (every pass predict
            # makes: stage 1, the crop, each rotation), not by one full-field pass, which is less work
            # than the two-stage, rotated default and made the ratio read high
            in_run = syn["single"]["breakdown_s_per_frame"].get(NETWORK_STAGE) or net
            syn["network_in_run_s_per_frame"] = in_run
            syn["ratio_single"] = syn["single"]["s_per_frame"] / in_run
            syn["ratio_batch"] = syn["batch"]["s_per_frame"] / in_run

        with _step("one `cardioseg predict` process"):
            env = dict(os.environ)
            if args.threads:
                env["OMP_NUM_THREADS"] = str(args.threads)
            cli = cli_process(["predict", str(cine), "-o", str(tmp / "cli"), "-q", "--overwrite", "--device", device,
                               "--precision", precision, "--batch-size", str(predictor.batch_size)]
                              + (["--weights", args.weights] if args.weights else []), env)  # fmt: skip
            cli["frames"] = frames
            syn["cli"] = cli
            results["help_s"] = {
                "cardioseg --help": min(cli_process(["--help"])["wall_s"] for _ in range(repeats)),
                "cardioseg predict --help": min(cli_process(["predict", "--help"])["wall_s"] for _ in range(repeats)),
            }

        with _step("FLOPs and matmul peak"):
            per_slice = forward_flops(predictor)
            n_mm = args.matmul_n or (512 if quick else (8192 if device.startswith("cuda") else 2048))
            peaks = {dt: matmul_peak(device, dt, n_mm, max(repeats, 2)) for dt in ("bf16", "fp32")}
            achieved = gflops(per_slice * shape[2], net)
            peak = peaks.get(precision)
            results["flops"] = {
                "per_slice": per_slice, "per_frame": per_slice * shape[2], "achieved_gflops": achieved,
                "matmul_n": n_mm, "peak_gflops": peaks,
                "fraction_of_peak": (achieved / peak) if (achieved and peak) else None,
            }  # fmt: skip

        with _step("bf16 vs fp32"):
            bf16 = (
                predictor
                if precision == "bf16"
                else Predictor(weights, PredictOptions(device=device, precision="bf16", batch_size=args.batch_size))
            )
            fp32 = (
                predictor
                if precision == "fp32"
                else Predictor(weights, PredictOptions(device=device, precision="fp32", batch_size=args.batch_size))
            )
            k = min(frames, 1 if quick else args.agree_frames)
            picks = np.linspace(0, frames - 1, k).round().astype(int) if k else []
            results["agreement"] = {
                "synthetic": agreement_on([(vol.data[..., t], vol.affine) for t in picks], bf16, fp32)
            }

        if acdc_n:
            with _step(f"ACDC: {acdc_n} frames"):
                files = acdc_frames(Path(args.data), acdc_n)
                vols = [read_volume(f) for f in files]
                # network first: it also warms up every batch shape these slice counts need
                net_acdc = network_only(predictor, [model_slices(predictor, v.data, v.affine) for v in vols], repeats)
                with StageTimer() as timer:
                    wall, _ = run_batch(sorted({f.parent for f in files}), predictor, tmp / "acdc")  # patient folders
                results["acdc"] = {
                    "frames": len(files), "s_per_frame": wall / len(files), "network_s_per_frame": net_acdc,
                    "ratio": (wall / len(files)) / net_acdc,
                    "breakdown_s_per_frame": {k: v / len(files) for k, v in timer.seconds.items()},
                    "files": [str(f.relative_to(Path(args.data))) for f in files],
                }  # fmt: skip
                k = min(len(vols), 1 if quick else args.agree_frames)
                results["agreement"]["acdc"] = agreement_on([(v.data, v.affine) for v in vols[:k]], bf16, fp32)

    results["bench_process_max_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    results["targets"] = target_rows(results)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--precision", default="auto", help="auto | bf16 | fp32 (as cardioseg predict)")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default); the CLI child gets OMP_NUM_THREADS",
    )
    ap.add_argument(
        "--batch-size", type=int, default=None, help="2D slices per forward pass (default: as cardioseg predict)"
    )
    ap.add_argument("--frames", type=int, default=None, help="frames per synthetic cine (default 30; --quick 2)")
    ap.add_argument("--studies", type=int, default=None, help="cines in the batch run (default 4; --quick 2)")
    ap.add_argument("--acdc", type=int, default=20, help="real ACDC frames to run too when the data is there, the ED and ES frames of N/2 patients (0: none)")
    ap.add_argument("--data", default=str(ACDC), help="ACDC folder (default ../shared/data/acdc)")
    ap.add_argument("--agree-frames", type=int, default=4, help="frames per input kind for bf16-vs-fp32 agreement")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the short timings (best of)")
    ap.add_argument("--matmul-n", type=int, default=0, help="matmul size for the peak (default 2048 CPU, 8192 GPU)")
    ap.add_argument("--weights", default=None, help="weights name or path (default: the shipped default)")
    ap.add_argument("--quick", action="store_true", help="small inputs, one repeat: checks that everything runs")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--write-readme", action="store_true", help=f"put the table into {README.relative_to(ROOT)}")
    ap.add_argument(
        "--isa",
        choices=sorted(ISA_CAPS),
        default=None,
        help="cap torch's CPU kernels at this instruction set (oneDNN and ATen): an AVX2 machine's code path "
        "on a larger CPU; its clock, cores and caches stay this machine's",
    )
    args = ap.parse_args(argv)
    if args.isa and not isa_capped(args.isa):
        # the caps are read when torch loads: run again with them in the environment (the CLI child inherits it)
        os.environ.update(dict(zip(ISA_ENV, ISA_CAPS[args.isa])))
        os.execv(sys.executable, [sys.executable, str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)])

    results = run(args)
    table = markdown_table(results)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, default=str) + "\n")
        print(f"bench: results in {out}", file=sys.stderr)
    if args.write_readme:
        heading = machine_name(results["machine"])
        text = README.read_text() if README.exists() else ""
        README.write_text(replace_section(text, heading, table))
        print(f"bench: table written to {README} under '### {heading}'", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
