"""The shipped network under each CPU runtime, side by side on the same slices: eager PyTorch
fp32 (channels_last or not), eager bf16 autocast (where the CPU has bf16), each also with the
batch norms folded into the convolutions (since issue 16), bf16 weights with each convolution and
its ReLU one oneDNN call (``cardioseg.models.fusion``: what ``cardioseg predict`` runs in bf16),
torch.compile (inductor), ONNX Runtime (CPU execution provider), OpenVINO (CPU, fp32 and, where
the CPU has bf16, bf16). Reports ms per 2D slice of stage 2 (the
heart-centred crop), the speed-up over eager fp32 and the label agreement with it.

    python benchmarks/runtimes.py ../shared/data/acdc --threads 1 --out benchmarks/results/runtimes.json

ONNX Runtime and OpenVINO are optional (``pip install onnxruntime onnx openvino``); a runtime
that is missing or fails is reported as such. The slices are real: the stage-2 crops of ACDC ED frames (the crop
centred on the heart found by stage 1), as ``cardioseg predict`` makes them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from crop_speed import cpu_class  # the CPU's class, with an ISA cap named (benchmarks/ on sys.path)


def real_slices(acdc: Path, n_patients: int) -> np.ndarray:
    """Stage-2 model-space slices (S, crop, crop) of the ED frames of the first patients."""
    from cardioseg.inference import PredictOptions, Predictor
    from cardioseg.io import read_info_cfg, read_volume
    from cardioseg.stages import crop_centre
    from cardioseg.weights import load_weights

    predictor = Predictor(load_weights(), PredictOptions(device="cpu", precision="fp32"))
    out = []
    for folder in sorted(p for p in acdc.iterdir() if (p / "Info.cfg").is_file())[:n_patients]:
        info = read_info_cfg(folder / "Info.cfg")
        vol = read_volume(folder / f"{folder.name}_frame{info.ed:02d}.nii.gz")
        loc = predictor.localise(vol.data, vol.affine)
        _, slices = predictor.to_model(vol.data, vol.affine, crop_centre(loc))
        out.append(slices)
    return np.concatenate(out).astype(np.float32)


def timed(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int, repeats: int) -> tuple[float, np.ndarray]:
    """Best-of-``repeats`` seconds per slice over all of ``x`` in batches, and the logits."""
    outs = [run(x[i : i + batch]) for i in range(0, len(x), batch)]  # warm-up (and the outputs)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(x), batch):
            run(x[i : i + batch])
        best = min(best, time.perf_counter() - t0)
    return best / len(x), np.concatenate(outs)


def main(argv: list[str] | None = None) -> int:
    import torch

    from cardioseg.weights import load_weights

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("acdc", type=Path)
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    x = real_slices(args.acdc, args.patients)[:, None]
    model = load_weights().build_model().eval().float()
    results: dict[str, Any] = {"cpu_class": cpu_class(), "threads": args.threads, "slices": len(x),
                               "slice_px": list(x.shape[2:]), "batch": args.batch, "torch": torch.__version__}  # fmt: skip

    import copy

    from cardioseg.models.folding import fold_batch_norm

    folded_model = copy.deepcopy(model)
    fold_batch_norm(folded_model)

    def eager(channels_last: bool, bf16: bool = False, net: Any = model) -> Callable[[np.ndarray], np.ndarray]:
        m = net.to(memory_format=torch.channels_last) if channels_last else net.to(memory_format=torch.contiguous_format)

        def run(b: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(b)
            if channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return m(t).float().numpy()

        return run

    def fused_bf16() -> Callable[[np.ndarray], np.ndarray]:
        from cardioseg.models.fusion import bf16_cpu_network

        net = bf16_cpu_network(folded_model, torch.zeros(1, 1, 64, 64))
        if net is None:
            raise RuntimeError("the fused convolution does not run here")

        def run(b: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(b).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                return net(t).float().numpy()

        return run

    bf16_cpu = results["cpu_class"] in ("AMX", "AVX-512-BF16")  # not under an AVX2 cap: bf16 is emulated there
    runtimes: dict[str, Callable[[], Callable[[np.ndarray], np.ndarray]]] = {
        "eager fp32": lambda: eager(False),
        "eager fp32 channels_last": lambda: eager(True),
        "eager fp32 channels_last, batch norm folded": lambda: eager(True, net=folded_model),
    }
    if bf16_cpu:
        runtimes["eager bf16 channels_last"] = lambda: eager(True, bf16=True)
        runtimes["eager bf16 channels_last, batch norm folded"] = lambda: eager(True, bf16=True, net=folded_model)
        runtimes["eager bf16 weights, batch norm folded, conv + ReLU one oneDNN call (cardioseg's bf16 path)"] = fused_bf16


    def compiled() -> Callable[[np.ndarray], np.ndarray]:
        m = torch.compile(model.to(memory_format=torch.contiguous_format))

        def run(b: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return m(torch.from_numpy(b)).float().numpy()

        return run

    def onnxruntime() -> Callable[[np.ndarray], np.ndarray]:
        import onnxruntime as ort

        path = Path(tempfile.mkdtemp()) / "model.onnx"
        dummy = torch.from_numpy(x[: args.batch])
        torch.onnx.export(model.to(memory_format=torch.contiguous_format), (dummy,), str(path), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)  # fmt: skip
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return lambda b: session.run(["y"], {"x": b})[0]

    def openvino(precision: str) -> Callable[[np.ndarray], np.ndarray]:
        import openvino as ov

        converted = ov.convert_model(model.to(memory_format=torch.contiguous_format),
                                     example_input=torch.from_numpy(x[: args.batch]),
                                     input=[(-1, 1, x.shape[2], x.shape[3])])  # fmt: skip
        compiled_model = ov.Core().compile_model(converted, "CPU", {
            "INFERENCE_NUM_THREADS": args.threads, "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY"})  # fmt: skip
        request = compiled_model.create_infer_request()
        return lambda b: np.array(request.infer({0: b})[0])

    def torchscript(bf16: bool) -> Callable[[np.ndarray], np.ndarray]:
        # traced, frozen and optimised for inference: batch norm folded and conv + ReLU fused by oneDNN
        net = copy.deepcopy(model).to(memory_format=torch.channels_last).requires_grad_(False)
        dummy = torch.from_numpy(x[: args.batch]).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(net, dummy)))

        def run(b: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(b).contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return frozen(t).float().numpy()

        return run

    runtimes["TorchScript frozen fp32 (conv + ReLU fused)"] = lambda: torchscript(False)
    if bf16_cpu:
        runtimes["TorchScript frozen bf16 (conv + ReLU fused)"] = lambda: torchscript(True)
    runtimes["torch.compile (inductor)"] = compiled
    runtimes["ONNX Runtime (CPU EP)" + (", not capped: the CPU's own ISA" if "cap" in results["cpu_class"] else "")] = onnxruntime
    runtimes["OpenVINO fp32"] = lambda: openvino("f32")
    if bf16_cpu:
        runtimes["OpenVINO bf16"] = lambda: openvino("bf16")
    reference: np.ndarray | None = None
    rows = {}
    for name, make in runtimes.items():
        try:
            start = time.perf_counter()  # conversion, tracing or compiling (the first call's part is in the warm-up)
            run = make()
            build_s = time.perf_counter() - start
            seconds, logits = timed(run, x, args.batch, args.repeats)
        except Exception as exc:  # noqa: BLE001 - a runtime that is missing or fails is reported, not fatal
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
            print(f"{name}: {rows[name]['error']}")
            continue
        labels = logits.argmax(axis=1)
        if reference is None:
            reference = labels
        rows[name] = {"ms_per_slice": 1000 * seconds, "build_s": build_s, "same_labels": float((labels == reference).mean())}
        print(f"{name}: {1000 * seconds:.2f} ms per slice (built in {build_s:.2f} s), labels equal to eager fp32 on "
              f"{100 * rows[name]['same_labels']:.4f} % of pixels", flush=True)  # fmt: skip
    base = rows["eager fp32"].get("ms_per_slice")
    for row in rows.values():
        if "ms_per_slice" in row and base:
            row["speedup_vs_eager_fp32"] = base / row["ms_per_slice"]
    results["runtimes"] = rows
    print(f"\n{results['cpu_class']}, {args.threads} thread(s), {len(x)} slices of {x.shape[2]}x{x.shape[3]} px, batch {args.batch}")
    print("| runtime | ms per slice | speed-up vs eager fp32 | built in s | labels equal to eager fp32 |\n|---|---|---|---|---|")
    for name, row in rows.items():
        if "error" in row:
            print(f"| {name} | – | – | – | {row['error']} |")
        else:
            print(f"| {name} | {row['ms_per_slice']:.2f} | {row['speedup_vs_eager_fp32']:.2f} | {row['build_s']:.2f} | {100 * row['same_labels']:.4f} % |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
