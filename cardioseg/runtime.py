"""Where and how the network runs: CPU threads, device, precision and forward-pass batch size;
and the registry of clean-ups (light: the command line reads its choices from here).

Each choice is resolved once, with a one-line error for an impossible request; nothing here
changes global state except :func:`set_num_threads` (which the caller invokes on purpose).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from cardioseg.errors import ConfigError


def physical_cores(cpus: Sequence[int] | None = None, sysfs: str = "/sys/devices/system/cpu") -> int:
    """Physical cores among ``cpus`` (default: the CPUs this process may run on).

    Hyper-threads of one core share its vector units, so convolution throughput stops growing
    at one thread per core. Falls back to the number of CPUs when the topology is unreadable.
    """
    if cpus is None:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        try:
            with open(f"{sysfs}/cpu{cpu}/topology/physical_package_id") as f:
                package = f.read().strip()
            with open(f"{sysfs}/cpu{cpu}/topology/core_id") as f:
                core = f.read().strip()
        except OSError:
            return max(len(cpus), 1)
        cores.add((package, core))
    return max(len(cores), 1)


def choose_num_threads(requested: int | None = None, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """(torch intra-op threads for inference, where the number came from).

    In order: ``requested`` (``--threads N``, N > 0); ``$OMP_NUM_THREADS`` (torch honours it
    too); ``$SLURM_CPUS_PER_TASK`` (a Slurm job's CPUs, which torch does not look at: without
    CPU binding it would start one thread per core of the whole node); otherwise the physical
    cores this process may run on (its CPU affinity, e.g. ``taskset`` or a cgroup cpuset).
    """
    env = os.environ if env is None else env
    if requested is not None and requested > 0:
        return int(requested), "--threads"
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        raw = env.get(name, "").strip().split(",")[0]  # OMP_NUM_THREADS may be a list per nesting level
        if raw.isdigit() and int(raw) > 0:
            return int(raw), f"${name}"
    return physical_cores(), "physical cores"


def set_num_threads(requested: int | None = None, env: Mapping[str, str] | None = None) -> int:
    """Apply :func:`choose_num_threads` to torch (CPU inference); returns the thread count."""
    import torch

    n, _ = choose_num_threads(requested, env)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def resolve_device(spec: str = "auto") -> str:
    """``auto|cpu|cuda|cuda:N`` -> a torch device string, with a clear error if unavailable."""
    import torch

    spec = spec.strip().lower()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: no CUDA GPU is available to this torch build")
        if ":" in spec:
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise ConfigError(f"--device {spec}: expected cuda:N with N a number") from None
            if not 0 <= index < torch.cuda.device_count():
                raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible")
        return spec
    raise ConfigError(f"--device {spec!r}: choose auto, cpu, cuda or cuda:N")


# caps below AVX-512, where bf16 is emulated (about 0.3 GFLOP/s on AVX2): exact names, prefixes
_NO_BF16_ISAS = ("default", "avx")
_NO_BF16_ISA_PREFIXES = ("sse", "avx2")


def isa_limited(env: Mapping[str, str] | None = None) -> bool:
    """True when the environment caps torch's CPU kernels below AVX-512 (``ATEN_CPU_CAPABILITY``
    or oneDNN's ``ONEDNN_MAX_CPU_ISA``), so that native bf16 is out of reach whatever the CPU has.

    >>> isa_limited({"ONEDNN_MAX_CPU_ISA": "AVX2"}), isa_limited({"ATEN_CPU_CAPABILITY": "avx512"}), isa_limited({})
    (True, False, False)
    """
    env = os.environ if env is None else env
    for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = env.get(key, "").strip().lower()
        if value in _NO_BF16_ISAS or value.startswith(_NO_BF16_ISA_PREFIXES):
            return True
    return False


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 (AVX-512 BF16 or AMX), where bf16 autocast pays off,
    and the environment does not cap the instruction set below it (``isa_limited``)."""
    import torch

    if isa_limited():
        return False
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001, S112 - a missing probe means "unknown": be conservative
            continue
    return False


def resolve_batch_size(requested: int | None, device: str) -> int:
    """``--batch-size`` (None: the device's default) -> 2D slices per forward pass."""
    if requested is None:
        return GPU_BATCH_SIZE if device.startswith("cuda") else CPU_BATCH_SIZE
    if requested < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {requested}")
    return int(requested)


def resolve_precision(spec: str, device: str) -> str:
    """``auto|bf16|fp32`` -> ``bf16`` or ``fp32`` for this device."""
    spec = spec.lower()
    if spec not in {"auto", "bf16", "fp32"}:
        raise ConfigError(f"--precision {spec!r}: choose auto, bf16 or fp32")
    if spec != "auto":
        return spec
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_supports_bf16() else "fp32"


CPU_BATCH_SIZE = 16
"""2D slices per forward pass on a CPU: about one ACDC frame; larger batches gain nothing there."""
GPU_BATCH_SIZE = 256
"""2D slices per forward pass on a GPU: many frames (and, in batch mode, several studies) at once."""


CLEAN_UPS: dict[str, str] = {
    "largest": "the largest 3D component of each structure",
    "anatomy": "the components that make a heart (LV and myocardium of the largest LV+myocardium component, "
    "the RV beside the myocardium; holes in the LV filled)",
}
DEFAULT_CLEAN_UP = "anatomy"
"""The clean-up ``cardioseg predict`` and :class:`cardioseg.inference.PredictOptions` use by default."""
DEFAULT_CROP_PX: int | None = None
"""The default of ``--crop-px``: None, what the weights recommend (0: the whole field of view in one stage)."""
