"""Training: the ACDC data split, a model-space slice cache, augmentation, loop, export.

The baseline recipe (issue 2): 2D U-Net, cross-entropy + soft Dice, Adam with cosine decay,
random similarity transforms (rotation 0-360 deg, scale 0.8-1.2, translation) on 2D slices
cropped around the heart, bf16 autocast + channels_last. Resumable: the last state is saved
every epoch and the best (validation Dice) model kept.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cardioseg.errors import ConfigError, InputFileNotFoundError
from cardioseg.geometry import ModelSpace
from cardioseg.io import read_info_cfg, read_volume
from cardioseg.labels import ACDC
from cardioseg.preprocess import PreprocessConfig, normalize_intensity

ACDC_LICENSE = (
    "Trained on ACDC data (CC BY-NC-SA 4.0): non-commercial use only, share-alike. Cite "
    "O. Bernard et al., IEEE TMI 37(11):2514-2525, 2018, doi:10.1109/TMI.2018.2837502."
)


@dataclass(frozen=True)
class Patient:
    name: str
    group: str
    folder: Path
    ed: int
    es: int


def acdc_patients(root: Path) -> list[Patient]:
    """Every ``patientNNN`` folder with an Info.cfg under ``root``, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise InputFileNotFoundError(f'Folder not found: "{root}"')
    patients = []
    for folder in sorted(root.iterdir()):
        if (folder / "Info.cfg").is_file():
            info = read_info_cfg(folder / "Info.cfg")
            if info.ed is None or info.es is None:
                continue
            patients.append(Patient(folder.name, info.group or "unknown", folder, info.ed, info.es))
    if not patients:
        raise ConfigError(f'No ACDC patient folders (with Info.cfg) in "{root}"')
    return patients


def stratified_folds(patients: list[Patient], n_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Patient name -> fold index, patient-level and stratified by group.

    Within each group patients are shuffled with ``seed`` and dealt round-robin, continuing
    the count across groups, so folds differ in size by at most one overall.
    """
    rng = random.Random(seed)
    by_group: dict[str, list[str]] = {}
    for p in patients:
        by_group.setdefault(p.group, []).append(p.name)
    folds: dict[str, int] = {}
    i = 0
    for group in sorted(by_group):
        names = sorted(by_group[group])
        rng.shuffle(names)
        for name in names:
            folds[name] = i % n_folds
            i += 1
    return folds


# ---------------------------------------------------------------------------- cache


def prepare_frame(image_path: Path, label_path: Path, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """One labelled 3D frame -> model-space (S, fov, fov) float16 image and uint8 labels."""
    vol = read_volume(image_path)
    lab = read_volume(label_path)
    norm, floor = normalize_intensity(vol.data, cfg.clip_low_pct, cfg.clip_high_pct)
    space = ModelSpace.for_image(vol.affine, vol.data.shape, cfg.spacing_mm, cfg.fov_px)
    img = space.image_to_model(norm, cval=floor)
    seg = space.labels_to_model(np.asarray(lab.data).astype(np.uint8))
    return img.astype(np.float16), seg


def build_cache(patients: list[Patient], cfg: PreprocessConfig, path: Path) -> dict[str, np.ndarray]:
    """Model-space slices of every ED/ES frame, saved to ``path`` (npz) and reused if present."""
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            cached = {k: z[k] for k in z.files}
        if list(cached["patients"]) == [p.name for p in patients] and json.loads(str(cached["cfg"])) == cfg.to_dict():
            return cached
    images, labels, frame_of_slice, frame_names = [], [], [], []
    for p in patients:
        for phase, number in (("ED", p.ed), ("ES", p.es)):
            stem = p.folder / f"{p.name}_frame{number:02d}"
            img, seg = prepare_frame(Path(f"{stem}.nii.gz"), Path(f"{stem}_gt.nii.gz"), cfg)
            frame_of_slice += [len(frame_names)] * img.shape[0]
            frame_names.append(f"{p.name}:{phase}")
            images.append(img)
            labels.append(seg)
    cache = {
        "images": np.concatenate(images),
        "labels": np.concatenate(labels),
        "frame_of_slice": np.array(frame_of_slice, dtype=np.int32),
        "frame_names": np.array(frame_names),
        "patients": np.array([p.name for p in patients]),
        "cfg": np.array(json.dumps(cfg.to_dict())),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **cache)
    tmp.replace(path)
    return cache


# ---------------------------------------------------------------------------- augmentation


def augment_batch(
    images: Any, labels: Any, centres: np.ndarray, crop: int, rng: np.random.Generator
) -> tuple[Any, Any]:
    """Random similarity transform + crop of (N, 1, H, W) images and (N, H, W) labels.

    ``centres`` (N, 2) are (row, col) crop centres in pixels; rotation is 0-360 deg, scale
    0.8-1.2 (DMR paper II-E). Images are sampled bilinearly, labels by nearest neighbour.
    """
    import torch
    import torch.nn.functional as F

    n, _, h, w = images.shape
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi, n)
    scale = rng.uniform(0.8, 1.2, n)
    half = crop / 2
    for i in range(n):
        a = half / (w / 2) / scale[i]
        c, s = math.cos(angle[i]), math.sin(angle[i])
        theta[i] = [
            [a * c, -a * s * (h / w), (centres[i, 1] - (w - 1) / 2) / (w / 2)],
            [a * s * (w / h), a * c, (centres[i, 0] - (h - 1) / 2) / (h / 2)],
        ]
    grid = F.affine_grid(torch.from_numpy(theta), [n, 1, crop, crop], align_corners=False)
    out_img = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out_lab = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    # intensity: global gain/offset and mild noise
    gain = torch.from_numpy(rng.uniform(0.85, 1.15, (n, 1, 1, 1)).astype(np.float32))
    bias = torch.from_numpy(rng.uniform(-0.15, 0.15, (n, 1, 1, 1)).astype(np.float32))
    noise = torch.from_numpy(rng.uniform(0, 0.1, (n, 1, 1, 1)).astype(np.float32))
    out_img = out_img * gain + bias + noise * torch.randn_like(out_img)
    return out_img, out_lab[:, 0].long()


# ---------------------------------------------------------------------------- loss / metrics


def dice_ce_loss(logits: Any, target: Any, n_classes: int) -> Any:
    """Cross-entropy + (1 - mean soft Dice over the foreground classes)."""
    import torch
    import torch.nn.functional as F

    logits = logits.float()
    ce = F.cross_entropy(logits, target)
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, n_classes).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1e-5) / (denom + 1e-5)
    return ce + (1 - dice[1:].mean())


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: tuple[int, ...] = (1, 2, 3)) -> list[float]:
    """3D Dice per label (NaN when both masks are empty)."""
    out = []
    for k in labels:
        a, b = pred == k, ref == k
        denom = int(a.sum()) + int(b.sum())
        out.append(float("nan") if denom == 0 else 2.0 * int((a & b).sum()) / denom)
    return out


# ---------------------------------------------------------------------------- loop


@dataclass(frozen=True)
class TrainConfig:
    data: str  # ACDC root with patientNNN folders
    out: str  # run folder: checkpoints, log.csv, the exported weights
    cache: str = "cache/acdc_model_space.npz"
    val_fold: int = 0  # which of the 5 stratified folds is held out
    n_folds: int = 5
    epochs: int = 100
    batch_size: int = 16
    crop_px: int = 160
    lr: float = 1e-3
    weight_decay: float = 1e-4
    base_width: int = 16
    seed: int = 0
    val_every: int = 2
    threads: int = 0  # 0: torch's default
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    name: str = "unet2d-acdc"


def architecture(cfg: TrainConfig) -> dict[str, Any]:
    """The registry name and constructor arguments of the network a config trains."""
    return {"name": "unet2d", "kwargs": {"in_channels": 1, "num_classes": 4, "base": cfg.base_width, "depth": 4}}


def _predict_slices(model: Any, slices: np.ndarray, device: str, batch: int = 32) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
        for i in range(0, len(slices), batch):
            x = torch.from_numpy(slices[i : i + batch].astype(np.float32))[:, None].to(device)
            x = x.contiguous(memory_format=torch.channels_last)
            out.append(model(x).float().argmax(1).cpu().numpy().astype(np.uint8))
    return np.concatenate(out)


def validate(model: Any, cache: dict[str, np.ndarray], frames: list[int], device: str) -> dict[str, float]:
    """Mean model-space 3D Dice per label over the given frames (ED and ES separately)."""
    model.eval()
    scores: dict[str, list[list[float]]] = {"ED": [], "ES": []}
    for f in frames:
        idx = np.nonzero(cache["frame_of_slice"] == f)[0]
        pred = _predict_slices(model, cache["images"][idx], device)
        phase = str(cache["frame_names"][f]).split(":")[1]
        scores[phase].append(dice_per_label(pred, cache["labels"][idx]))
    result = {}
    for phase, rows in scores.items():
        arr = np.array(rows)
        for j, name in enumerate(("rv", "myo", "lv")):
            result[f"dice_{name}_{phase.lower()}"] = float(np.nanmean(arr[:, j]))
    result["dice_mean"] = float(np.mean(list(result.values())))
    return result


def train(cfg: TrainConfig, log: Any = print) -> Path:
    """Train (or resume) the baseline U-Net; returns the path of the exported best weights."""
    import torch

    from cardioseg.models import build_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    patients = acdc_patients(Path(cfg.data))
    folds = stratified_folds(patients, cfg.n_folds, seed=0)
    t0 = time.time()
    cache = build_cache(patients, cfg.preprocess, Path(cfg.cache))
    log(f"cache: {len(cache['images'])} slices from {len(cache['frame_names'])} frames ({time.time() - t0:.0f} s)")
    val_names = {p.name for p in patients if folds[p.name] == cfg.val_fold}
    frame_patient = [str(n).split(":")[0] for n in cache["frame_names"]]
    val_frames = [i for i, n in enumerate(frame_patient) if n in val_names]
    train_slices = np.array([i for i, f in enumerate(cache["frame_of_slice"]) if frame_patient[f] not in val_names])
    labels_all = cache["labels"]
    centres = np.full((len(labels_all), 2), np.nan, dtype=np.float32)
    for i in train_slices:
        rows, cols = np.nonzero(labels_all[i])
        if len(rows):
            centres[i] = (rows.mean(), cols.mean())
    images_t = torch.from_numpy(cache["images"].astype(np.float32))[:, None]
    labels_t = torch.from_numpy(labels_all)

    arch = architecture(cfg)
    model = build_model(arch["name"], **arch["kwargs"]).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train_slices) // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )
    state_path, best_path = out / "last.pt", out / "best.pt"
    start_epoch, best = 0, {"dice_mean": -1.0}
    if state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        rng = np.random.default_rng(cfg.seed + start_epoch)
        torch.manual_seed(cfg.seed + start_epoch)
        log(f"resumed at epoch {start_epoch}, best so far {best['dice_mean']:.4f}")
    log_path = out / "log.csv"
    if start_epoch == 0:
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(["epoch", "loss", "lr", "seconds", "val_dice_mean", "val_json"])
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t_epoch = time.time()
        order = rng.permutation(train_slices)
        losses = []
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            c = centres[idx].copy()
            missing = np.isnan(c[:, 0]) | (rng.random(len(idx)) < 0.2)
            h = images_t.shape[-1]
            c[missing] = rng.uniform(cfg.crop_px / 2 - 16, h - cfg.crop_px / 2 + 16, (int(missing.sum()), 2))
            c[~missing] += rng.uniform(-40, 40, (int((~missing).sum()), 2))
            x, y = augment_batch(images_t[idx], labels_t[idx], c, cfg.crop_px, rng)
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            y = y.to(device)
            with torch.autocast(device, dtype=torch.bfloat16):
                logits = model(x)
            loss = dice_ce_loss(logits, y, 4)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        seconds = time.time() - t_epoch
        val: dict[str, float] = {}
        if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
            val = validate(model, cache, val_frames, device)
            if val["dice_mean"] > best["dice_mean"]:
                best = {**val, "epoch": epoch + 1}
                torch.save({"model": model.state_dict(), "best": best}, best_path)
        torch.save(
            {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "epoch": epoch, "best": best},
            out / "last.tmp.pt",
        )
        (out / "last.tmp.pt").replace(state_path)
        with open(log_path, "a", newline="") as f:
            csv.writer(f).writerow(
                [epoch + 1, f"{np.mean(losses):.4f}", f"{sched.get_last_lr()[0]:.2e}", f"{seconds:.1f}",
                 f"{val.get('dice_mean', float('nan')):.4f}", json.dumps(val)]
            )
        log(f"epoch {epoch + 1}/{cfg.epochs} loss {np.mean(losses):.4f} {seconds:.0f}s "
            + (f"val dice {val['dice_mean']:.4f} (best {best['dice_mean']:.4f})" if val else ""))

    return export_run(cfg, log)


def export_run(cfg: TrainConfig, log: Any = print) -> Path:
    """Export the best checkpoint of a (finished or interrupted) run as shipped-format weights."""
    import torch

    from cardioseg.models import build_model
    from cardioseg.weights import export_weights

    out = Path(cfg.out)
    best_path = out / "best.pt"
    if not best_path.is_file():
        raise ConfigError(f'No best checkpoint in "{out}" yet')
    patients = acdc_patients(Path(cfg.data))
    folds = stratified_folds(patients, cfg.n_folds, seed=0)
    val_names = {p.name for p in patients if folds[p.name] == cfg.val_fold}
    arch = architecture(cfg)
    model = build_model(arch["name"], **arch["kwargs"])
    best_state = torch.load(best_path, map_location="cpu", weights_only=False)
    best = best_state["best"]
    model.load_state_dict(best_state["model"])
    exported = out / f"{cfg.name}.pt"
    export_weights(
        model.cpu(),
        exported,
        name=cfg.name,
        architecture=arch,
        preprocess=cfg.preprocess,
        label_map=ACDC,
        training={
            "data": "ACDC training set, 80 patients available here (ED+ES frames, expert labels)",
            "train_patients": sorted(p.name for p in patients if p.name not in val_names),
            "val_patients": sorted(val_names),
            "split": f"fold {cfg.val_fold} of {cfg.n_folds} patient-level folds stratified by group (seed 0)",
            "recipe": {k: v for k, v in asdict(cfg).items() if k not in {"data", "out", "cache", "preprocess"}},
            "loss": "cross-entropy + soft Dice",
            "best_epoch": best.get("epoch"),
        },
        validation={"model_space": {k: v for k, v in best.items() if k != "epoch"}},
        license=ACDC_LICENSE,
    )
    log(f"exported {exported} (best epoch {best.get('epoch')}, val dice {best['dice_mean']:.4f})")
    return exported
