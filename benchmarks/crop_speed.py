"""Seconds per frame of the segmentation options on real ACDC frames, in one process.

    python benchmarks/crop_speed.py [--data ../shared/data/acdc] [--patients 10] [--threads 2] [--out FILE.json]
        [--weights W] [--variants "crop 128 + tta" ...] [--no-fold]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/crop_speed.py ...  # AVX2's code path

For each variant (full field; ``--crop-px 160``/``128``, which add stage 1 on the coarse grid;
``--tta``) the shipped default network segments the ED and ES frames of the first N patients
(``Predictor.predict`` on arrays already read: network, resampling and clean-up, no file I/O),
best of two passes after a warm-up frame. Prints one line per variant with the CPU class.
``--no-fold`` measures the network with its batch norms (before they were folded into
the convolutions at load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, dict[str, object]] = {  # every option explicit (the weights recommend their own)
    "full field": {"crop_px": 0, "tta": False},
    "crop 160": {"crop_px": 160, "tta": False},
    "crop 128": {"crop_px": 128, "tta": False},
    "full field + tta": {"crop_px": 0, "tta": True},
    "crop 160 + tta": {"crop_px": 160, "tta": True},
    "crop 128 + tta": {"crop_px": 128, "tta": True},
}


def cpu_class() -> str:
    """The CPU's class; with an instruction-set cap in the environment (``bench.py --isa``), the cap on it
    (torch and OpenVINO follow the cap, ONNX Runtime does not)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return f"{cap.upper()} cap on {_cpu_class()}" if cap else _cpu_class()


def _cpu_class() -> str:
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").is_file() else []
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512-BF16"
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    return "ARM" if platform.machine().lower() in ("arm64", "aarch64") else "other"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "acdc")
    ap.add_argument("--patients", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--weights", default=None, help="weights name or path (default: the shipped default)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT")
    ap.add_argument("--no-fold", action="store_true", help="keep the batch norms (the network before they were folded)")
    args = ap.parse_args()
    if args.no_fold:
        import cardioseg.inference

        cardioseg.inference.fold_batch_norm = lambda model: 0  # type: ignore[assignment]
    if not args.data.is_dir():
        print(f"no ACDC data at {args.data}")
        return 0
    import cardioseg
    from cardioseg.io import read_patient_folder

    frames = []
    for folder in sorted(args.data.glob("patient*"))[: args.patients]:
        f = read_patient_folder(folder)
        frames += [cardioseg.read_volume(p) for p in (f.ed_path, f.es_path) if p is not None]
    results = {}
    for name in args.variants:
        predictor = cardioseg.load_predictor(args.weights, threads=args.threads, device="cpu", **VARIANTS[name])
        predictor.predict(frames[0].data, frames[0].affine)  # warm-up
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            for v in frames:
                predictor.predict(v.data, v.affine)
            best = min(best, (time.perf_counter() - t0) / len(frames))
        results[name] = {"s_per_frame": round(best, 4), "precision": predictor.precision, "batch_norm_folded": not args.no_fold}
        print(f"{name:18s} {best:.3f} s/frame ({predictor.precision}, {args.threads} threads, {cpu_class()} CPU)", flush=True)
    if args.out:
        record = {"cpu_class": cpu_class(), "weights": args.weights or "default", "frames": len(frames), "results": results}
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
