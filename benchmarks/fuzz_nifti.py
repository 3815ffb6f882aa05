"""Fuzz the NIfTI reader and mask writer with randomly damaged copies of one good file.

Each copy gets one to three faults drawn from the NIfTI-1 header fields that decide how a
file is read (dims, pixdim, datatype/bitpix, vox_offset, scl_slope/scl_inter, the xform codes,
the quaternion and offsets, the sform rows), a truncation of the file, or a flipped bit; half
are gzipped, some with a damaged gzip byte. Every copy must either be read and its mask
written back on exactly the grid it was read on (shape and affine), or be refused with a
one-line cardioseg error. Anything else (a traceback) is a failure, printed with its faults.

    python benchmarks/fuzz_nifti.py ../shared/data/acdc/patient001/patient001_frame01.nii.gz \\
        --n 1000 --seed 1 [--keep DIR]

``--keep DIR`` writes the damaged copies there (to feed a whole batch to ``cardioseg predict``).
The test suite runs the same generator on a small synthetic file (tests/io/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import random
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

# (name, byte offset in the NIfTI-1 header, numpy type, count)
FIELDS = (
    ("dim", 40, "i2", 8),
    ("datatype", 70, "i2", 1),
    ("bitpix", 72, "i2", 1),
    ("pixdim", 76, "f4", 8),
    ("vox_offset", 108, "f4", 1),
    ("scl_slope", 112, "f4", 1),
    ("scl_inter", 116, "f4", 1),
    ("qform_code", 252, "i2", 1),
    ("sform_code", 254, "i2", 1),
    ("quatern", 256, "f4", 6),  # b, c, d, qoffset x, y, z
    ("srow", 280, "f4", 12),
)
VALUES = (0, -1, 1, 2, 3, 4, 5, 7, 9999, -352, 348, 352, 1e-30, 1e40, -1e40, float("nan"), float("inf"), 0.5, 255, 32767, -32768)


def damage(raw: bytes, rng: random.Random) -> tuple[bytes, list[str]]:
    """One to three faults applied to an uncompressed NIfTI-1 file's bytes; returns the damaged
    bytes and a description of each fault."""
    buf, faults = bytearray(raw), []
    for _ in range(rng.randint(1, 3)):
        kind = rng.random()
        if kind < 0.75:
            name, offset, kind_t, count = rng.choice(FIELDS)
            i, value = rng.randrange(count), rng.choice(VALUES)
            size = np.dtype(kind_t).itemsize
            with np.errstate(all="ignore"):  # 1e40 as float32 is inf, nan as int16 is whatever: both wanted
                encoded = np.array([value], dtype=np.float64).astype("<" + kind_t).tobytes()
            buf[offset + i * size : offset + (i + 1) * size] = encoded
            faults.append(f"{name}[{i}]={value:g}")
        elif kind < 0.9:
            cut = rng.randrange(len(buf))
            del buf[cut:]
            faults.append(f"truncated to {cut} bytes")
        elif buf:
            pos = rng.randrange(len(buf))
            buf[pos] ^= 1 << rng.randrange(8)
            faults.append(f"bit flipped at byte {pos}")
    return bytes(buf), faults


def damaged_copy(raw: bytes, rng: random.Random, folder: Path, name: str) -> tuple[Path, list[str]]:
    """Write one damaged copy of ``raw`` into ``folder`` (``.nii`` or ``.nii.gz``)."""
    data, faults = damage(raw, rng)
    gz = rng.random() < 0.5
    if gz:
        data = gzip.compress(data, mtime=0)
        if rng.random() < 0.1:
            data = bytearray(data)
            data[rng.randrange(len(data))] ^= 0xFF
            data = bytes(data)
            faults.append("gzip byte damaged")
    path = folder / f"{name}.nii{'.gz' if gz else ''}"
    path.write_bytes(data)
    return path, faults


def check_one(path: Path, out: Path) -> str:
    """``"read"`` (read, mask written back on its grid) or ``"refused"`` (one-line cardioseg
    error); raises anything else, or AssertionError when the mask's grid differs."""
    import nibabel as nib

    from cardioseg.errors import CardiosegError
    from cardioseg.io import read_volume, write_mask

    try:
        vol = read_volume(path)
    except CardiosegError as exc:
        assert "\n" not in str(exc), str(exc)
        return "refused"
    write_mask(np.zeros(vol.data.shape, np.uint8), vol, out)
    back = nib.load(out)
    assert back.shape == vol.data.shape, (back.shape, vol.data.shape)
    assert np.allclose(back.affine, vol.affine, atol=1e-4), (back.affine, vol.affine)
    out.unlink()
    return "read"


def read_raw(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.name.lower().endswith(".gz") else raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("nifti", type=Path, help="a good NIfTI-1 file to damage")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="write the damaged copies into this folder")
    args = parser.parse_args(argv)
    raw = read_raw(args.nifti)
    rng = random.Random(args.seed)
    counts: collections.Counter[str] = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(args.n):
            path, faults = damaged_copy(raw, rng, folder, f"damaged{k:04d}")
            try:
                counts[check_one(path, Path(tmp) / "mask.nii.gz")] += 1
            except Exception as exc:  # noqa: BLE001 - what the fuzzer is looking for
                counts["traceback"] += 1
                print(f"{path.name} {faults}: {type(exc).__name__}: {exc}", file=sys.stderr)
                traceback.print_exc()
            if args.keep is None:
                path.unlink()
    print(f"{args.n} damaged copies of {args.nifti.name} (seed {args.seed}): {counts['read']} read and written back "
          f"on their grid, {counts['refused']} refused with one line, {counts['traceback']} tracebacks")  # fmt: skip
    return 1 if counts["traceback"] else 0


if __name__ == "__main__":
    sys.exit(main())
