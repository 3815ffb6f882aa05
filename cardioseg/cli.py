"""The ``cardioseg`` command line: a thin Typer adapter over the engine.

Heavy imports (torch, the engine) happen inside the commands, so ``--help`` is instant.
Engine errors (``CardiosegError``) become one line on stderr and exit code 1.
"""

from __future__ import annotations

import math
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cardioseg import __version__
from cardioseg.errors import CardiosegError

app = typer.Typer(
    name="cardioseg",
    help="Segment short-axis cardiac cine MRI and report volumes, EF and myocardial mass.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class EnsembleMode(str, Enum):
    vote = "vote"
    mean = "mean"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"cardioseg: error: {message}", err=True)
    return typer.Exit(code=1)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cardioseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = None,
) -> None:
    """cardioseg: short-axis cardiac cine MRI -> masks + clinical report."""


@app.command()
def predict(
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(help="NIfTI 3D frames or 4D cines, DICOM series folders, ACDC-style patient folders (with Info.cfg), folders of those (expanded one level), or quoted glob patterns such as \"data/**/*_4d.nii.gz\".", show_default=False),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created if needed).")] = Path("cardioseg_out"),
    ed: Annotated[Path | None, typer.Option("--ed", help="End-diastolic 3D frame of a study (with --es).")] = None,
    es: Annotated[Path | None, typer.Option("--es", help="End-systolic 3D frame of a study (with --ed).")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Name of the --ed/--es study (default: their common stem).")] = None,
    weights: Annotated[list[str] | None, typer.Option("--weights", "-w", metavar="NAME|PATH", help="Registered weights name or a checkpoint path; repeat it for an ensemble.")] = None,
    ensemble: Annotated[EnsembleMode, typer.Option("--ensemble", help="With several --weights: vote (per-voxel majority) | mean (mean probabilities).")] = EnsembleMode.vote,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 where the hardware has it) | bf16 | fp32")] = "auto",
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="2D slices per forward pass (default: 16 on a CPU, 256 on a GPU).", show_default=False)] = None,
    batch_studies: Annotated[bool | None, typer.Option("--batch-studies/--no-batch-studies", help="In a batch, segment the slices of several studies in one forward pass (default: on a GPU only).", show_default=False)] = None,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the network: a slow first batch, then faster on a GPU (needs a C++ compiler on a CPU).")] = False,
    threads: Annotated[int, typer.Option("--threads", min=0, help="CPU threads for the network (0: $OMP_NUM_THREADS, else $SLURM_CPUS_PER_TASK, else the physical cores this process may use).")] = 0,
    ed_frame: Annotated[int | None, typer.Option("--ed-frame", min=0, help="0-based ED frame of a 4D cine (default: largest LV volume).")] = None,
    es_frame: Annotated[int | None, typer.Option("--es-frame", min=0, help="0-based ES frame of a 4D cine (default: smallest LV volume).")] = None,
    myo_density: Annotated[float, typer.Option("--myo-density", help="Myocardial density in g/mL for LV mass.")] = 1.05,
    height_cm: Annotated[float | None, typer.Option("--height-cm", help="Height for BSA indexing (overrides Info.cfg).")] = None,
    weight_kg: Annotated[float | None, typer.Option("--weight-kg", help="Weight for BSA indexing (overrides Info.cfg).")] = None,
    no_postprocess: Annotated[bool, typer.Option("--no-postprocess", help="Skip the largest-connected-component clean-up.")] = False,
    max_voxels: Annotated[int | None, typer.Option("--max-voxels", min=1, help="Refuse images with more voxels (X*Y*Z*T) than this, before reading them (default: $CARDIOSEG_MAX_VOXELS or 536870912).")] = None,
    series_uid: Annotated[str | None, typer.Option("--series-uid", help="SeriesInstanceUID to read from a DICOM folder that holds several series (the error lists them).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Treat any quality-control flag as an error: the study gets exit code 1 and no outputs.")] = False,
    overlay: Annotated[bool, typer.Option("--overlay", help="Also write DIR/<study>_overlay.png: every ED/ES slice with the mask contours, and the volume curve of a cine (needs matplotlib: pip install 'cardioseg\\[plots]').")] = False,
    skip_existing: Annotated[bool | None, typer.Option("--skip-existing/--overwrite", help="Skip studies an earlier run finished (all outputs there; the report is written last) or recompute them (default: skip for a batch of several studies or parts, overwrite for one study).", show_default=False)] = None,
    num_parts: Annotated[int | None, typer.Option("--num-parts", min=1, metavar="N", help="Split the studies into N parts (every N-th study in name order) and run one of them (default: $SLURM_ARRAY_TASK_COUNT, else 1).", show_default=False)] = None,
    part_id: Annotated[int | None, typer.Option("--part-id", min=0, metavar="I", help="Which part to run, 0..N-1 (default: $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN).", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, notes or table.")] = False,
) -> None:
    """Segment images and write DIR/X_seg.nii.gz, DIR/X_report.json and DIR/summary.csv.

    Every report carries quality-control flags (missing structures, implausible EF or mass,
    uneven slices, heart at the edge of the field of view, ...); --strict makes them errors.
    Batches: give many inputs, folders or patterns; rerunning skips finished studies, and
    --num-parts/--part-id (or a Slurm job array) split the studies between processes."""
    import os

    from cardioseg.io import max_voxels_default
    from cardioseg.pipeline import (
        StudyOptions,
        clean_stale_temps,
        plan_studies,
        prepare_out_dir,
        refresh_summary,
        resolve_parts,
        shard,
        split_finished,
    )

    if not inputs and ed is None and es is None:
        typer.echo("cardioseg predict: give INPUT files/folders or --ed FILE --es FILE (see --help)", err=True)
        raise typer.Exit(code=2)
    created = False
    try:
        if myo_density <= 0:
            raise _fail(f"--myo-density must be positive, got {myo_density}")
        n_parts, part, from_slurm = resolve_parts(num_parts, part_id, os.environ)
        studies = plan_studies(list(inputs or []), ed, es, study)
        mine = shard(studies, n_parts, part)
        skip = skip_existing if skip_existing is not None else (len(studies) > 1 or n_parts > 1)
        options = StudyOptions(myo_density, ed_frame, es_frame, height_cm, weight_kg, strict=strict, overlay=overlay, series_uid=series_uid,
                               max_voxels=max_voxels if max_voxels is not None else max_voxels_default())  # fmt: skip
        if overlay:
            from cardioseg.overlay import require_matplotlib

            require_matplotlib()
        created = prepare_out_dir(out, mine)
        clean_stale_temps(out, mine)
        done, todo = split_finished(mine, out, options) if skip else ([], mine)
        if not quiet and n_parts > 1:
            how = ", from the Slurm job array" if from_slurm else ""
            _note(f"part {part} of {n_parts} (0-based{how}): {len(mine)} of {len(studies)} studies")
        if not quiet and done:
            _note(f"{len(done)} of {len(mine)} studies done before, skipped (--overwrite recomputes them)")
        if todo:
            results = _predict(todo, out, options, weights or [None], ensemble.value, device, precision, batch_size,
                               not no_postprocess, quiet, len(done), threads,
                               compile_model=compile_model, batch_studies=batch_studies)  # fmt: skip
        else:
            results = []
            refresh_summary(out)
    except CardiosegError as exc:
        _remove_if_empty(out, created)
        raise _fail(str(exc)) from None
    _remove_if_empty(out, created)
    for r in results:
        for warning in r.warnings:
            typer.echo(f"cardioseg: warning: {r.study.name}: {warning}", err=True)
    failed = [r for r in results if r.error]
    for r in failed:
        typer.echo(f"cardioseg: error: {r.study.name}: {r.error}", err=True)
    if not quiet:
        _print_results([r for r in results if r.report], out)
    if failed:
        raise typer.Exit(code=1)


def _note(message: str) -> None:
    typer.echo(f"cardioseg: note: {message}", err=True)


def _remove_if_empty(folder: Path, created: bool) -> None:
    """Remove an output folder this run created if nothing was written into it."""
    if created and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _predict(studies, out, options, weights, ensemble, device, precision, batch_size, postprocess, quiet, skipped=0, threads=0, compile_model=False, batch_studies=None):  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from cardioseg.inference import Ensemble, PredictOptions, Predictor, set_num_threads
    from cardioseg.pipeline import run_predict
    from cardioseg.weights import load_weights

    set_num_threads(threads or None)  # before the first forward pass (torch fixes its pool then)

    members = [load_weights(w) for w in weights]  # each model is loaded once, for every study
    popts = PredictOptions(device=device, precision=precision, batch_size=batch_size, postprocess=postprocess,
                           ensemble=ensemble, compile=compile_model, batch_studies=batch_studies)  # fmt: skip
    predictor = Predictor(members[0], popts) if len(members) == 1 else Ensemble(members, popts)
    show = not quiet and sys.stderr.isatty()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not show, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("segmenting", total=len(studies), note=f"({skipped} skipped)" if skipped else "")

        def progress(study, t):  # type: ignore[no-untyped-def]
            bar.update(task, description=f"{study.name} frame {t}")

        return run_predict(studies, predictor, out, options, progress, on_result=lambda r: bar.advance(task))


TABLE_ROWS = 40
"""Longer batches get the first rows of the table and a pointer to summary.csv."""


def _print_results(results, out: Path) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.table import Table

    if not results:
        return
    more = len(results) - TABLE_ROWS if len(results) > TABLE_ROWS else 0
    results = results[:TABLE_ROWS] if more else results
    table = Table(title=f"cardioseg predict -> {out}", show_lines=False,
                  caption=f"... and {more} more studies: see {out / 'summary.csv'}" if more else None)  # fmt: skip
    cols = [("study", "study"), ("ED/ES", None), ("LV EDV mL", "lv_edv_ml"), ("LV ESV mL", "lv_esv_ml"),
            ("LV EF %", "lv_ef_pct"), ("RV EDV mL", "rv_edv_ml"), ("RV EF %", "rv_ef_pct"),
            ("LV mass g", "lv_mass_g"), ("QC", None)]  # fmt: skip
    for title, _ in cols:
        table.add_column(title, justify="left" if title in {"study", "QC"} else "right", no_wrap=title == "study")

    def fmt(v: object) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:.1f}" if isinstance(v, float) else str(v))

    for r in results:
        rep = r.report
        row = []
        for title, key in cols:
            if title == "ED/ES":
                row.append("-" if rep["ed_frame"] is None else f"{rep['ed_frame']}/{rep['es_frame']}")
            elif title == "QC":
                codes = list(dict.fromkeys(rep["qc_flags"]))
                row.append("ok" if not codes else codes[0] if len(codes) == 1 else f"{codes[0]} +{len(codes) - 1}")
            else:
                row.append(fmt(rep.get(key)))
        table.add_row(*row)
    Console().print(table)


@app.command()
def preprocess(
    data: Annotated[Path, typer.Argument(help="ACDC root (patientNNN/ with Info.cfg) or a folder with images/ and labels/.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Cache folder to write (replaced if it exists).")],
    spacing_mm: Annotated[float, typer.Option("--spacing-mm", help="In-plane pixel size of the model grid.")] = 1.5625,
    fov_px: Annotated[int, typer.Option("--fov-px", min=32, help="Model grid size in pixels (square).")] = 256,
    truncation_px: Annotated[float, typer.Option("--truncation-px", help="T of the truncated signed distance maps.")] = 250.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Resample, crop/pad and normalise labelled frames into a memory-mapped training cache
    with truncated signed distance maps per structure (DMR paper, Eq. 2)."""
    from cardioseg.dataset import build_cache, find_frames
    from cardioseg.preprocess import PreprocessConfig

    try:
        frames = find_frames(data)
        cfg = PreprocessConfig(spacing_mm=spacing_mm, fov_px=fov_px)
        with _progress_bar(quiet, "preprocessing", len(frames)) as advance:
            path = build_cache(frames, out, cfg, truncation_px=truncation_px, progress=lambda f: advance())
    except CardiosegError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{path}: {len(frames)} frames")


def _progress_bar(quiet: bool, description: str, total: int):  # type: ignore[no-untyped-def]
    import contextlib

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextlib.contextmanager
    def bar():  # type: ignore[no-untyped-def]
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=Console(stderr=True), disable=quiet or not sys.stderr.isatty(), transient=True,
        ) as p:  # fmt: skip
            task = p.add_task(description, total=total)
            yield lambda: p.advance(task)

    return bar()


@app.command()
def train(
    cache: Annotated[Path, typer.Argument(help="Cache folder from cardioseg preprocess.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: checkpoints, log.csv, exported weights.")],
    fold: Annotated[int, typer.Option("--fold", min=0, help="Validation fold k of the 5 patient-level folds.")] = 0,
    all_folds: Annotated[bool, typer.Option("--all-folds", help="Train every fold, one after the other, in OUT/foldK.")] = False,
    arch: Annotated[str, typer.Option("--arch", help="unet2d | segnet2d | usegnet2d | unet3d (Qure.ai's 3D U-Net, 1x2x2 pooling: whole stacks of a frame; --batch-size then counts frames).")] = "unet2d",
    context_slices: Annotated[int, typer.Option("--context-slices", min=1, help="2D networks: this many neighbouring slices of the frame (odd; edge slices replicated) as input channels, the centre one predicted (Qure.ai's multi-slice 2D U-Net).")] = 1,
    dmr: Annotated[bool, typer.Option("--dmr", help="Add the distance-map regulariser (training only).")] = False,
    loss: Annotated[str, typer.Option("--loss", help="ce | dice | logdice | dice_ce | mapdice (Li et al.'s shape-aware Dice) | explog (SRSCN Eq. 1) | wce (weighted CE) | qure_logdice (Qure.ai's weighted log-Dice) | qure_hybrid (wce + qure_logdice).")] = "ce",
    weighting: Annotated[str, typer.Option("--weighting", help="With --dmr: uncertainty (learned, Eq. 7) | fixed")] = "uncertainty",
    dm_weight: Annotated[float, typer.Option("--dm-weight", help="Fixed (or initial) weight of the distance-map loss.")] = 1.0,
    regularizer: Annotated[str, typer.Option("--regularizer", help="Training-only regulariser, never exported: none | lrnet (Li et al.'s LR-Net, in tandem) | srnn (SRSCN shape reconstruction, Eq. 2) | scn (slice position, Eq. 5) | srscn (both, Eq. 6) | acnn (shape-code L2) | gan (discriminator). srnn/srscn/acnn first pre-train a shape autoencoder on the training labels (OUT/shape_ae.pt).")] = "none",
    reg_weight: Annotated[float, typer.Option("--reg-weight", min=0.0, help="Weight of the regulariser's term; 0: its default (lrnet 1, srnn/srscn 5e-4, acnn 0.01, gan 0.01).")] = 0.0,
    position_weight: Annotated[float, typer.Option("--position-weight", min=0.0, help="scn/srscn: weight of the slice-position loss (positions in [0, 1]).")] = 0.1,
    shape_epochs: Annotated[int, typer.Option("--shape-epochs", min=1, help="srnn/srscn/acnn: pre-training epochs of the shape autoencoder.")] = 20,
    optimizer: Annotated[str, typer.Option("--optimizer", help="rmsprop (paper) | adamw")] = "rmsprop",
    lr: Annotated[float, typer.Option("--lr", help="Learning rate; 0: the paper's (1e-4, or 5e-4 with --dmr).")] = 0.0,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 100,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Slices per batch (frames for unet3d).")] = 15,
    crop_px: Annotated[int, typer.Option("--crop-px", min=16, help="Training crop (multiple of 16).")] = 160,
    base_width: Annotated[int, typer.Option("--base-width", min=1, help="Channels at full resolution.")] = 16,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[int, typer.Option("--threads", min=0, help="Torch CPU threads (0: torch's default).")] = 0,
    name: Annotated[str, typer.Option("--name", help="Weights name (default e.g. dmr-unet2d-acdc-fold0, unet2d-ctx3-qure_hybrid-acdc-fold0).")] = "",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUT from its last checkpoint.")] = False,
    export_only: Annotated[bool, typer.Option("--export-only", help="Only export the best checkpoint of OUT.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a segmentation network on a cache and export self-describing weights.

    Under torchrun (``torchrun --nproc_per_node N -m cardioseg train ...``) each process
    trains a shard of every batch with DistributedDataParallel.
    """
    from cardioseg.train import TrainConfig, export_run, fold_configs, load_config
    from cardioseg.train import train as run_training

    cfg = TrainConfig(
        cache=str(cache), out=str(out), arch=arch, context_slices=context_slices,
        dmr=dmr, base_width=base_width, loss=loss,
        weighting=weighting, dm_weight=dm_weight, optimizer=optimizer, lr=lr, epochs=epochs,
        batch_size=batch_size, crop_px=crop_px, fold=fold, seed=seed, threads=threads, name=name,
        regularizer=regularizer, reg_weight=reg_weight, position_weight=position_weight, shape_epochs=shape_epochs,
    )  # fmt: skip
    try:
        cfg.check()
        configs = fold_configs(cfg) if all_folds else [cfg]
        for c in configs:
            if export_only:
                path = export_run(load_config(Path(c.out)), log=lambda m: typer.echo(m, err=True))
            else:
                path = run_training(c, resume=resume,
                                    log=lambda m: typer.echo(m, err=True), show_progress=not quiet and sys.stderr.isatty())  # fmt: skip
            typer.echo(str(path))
    except CardiosegError as exc:
        raise _fail(str(exc)) from None


@app.command()
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Predicted mask, or a folder of them (searched recursively).")],
    ref: Annotated[Path, typer.Argument(help="Reference mask, or a folder of them (e.g. an ACDC root).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for metrics.csv, summary.json, ...")] = Path("cardioseg_eval"),
    labels: Annotated[str, typer.Option("--labels", help="Label preset of the predictions: acdc | mnms | ukbb.")] = "acdc",
    ref_labels: Annotated[str | None, typer.Option("--ref-labels", help="Label preset of the references (default: --labels).")] = None,
    pred_suffix: Annotated[list[str] | None, typer.Option("--pred-suffix", help="Name suffix of prediction files before .nii.gz (repeatable; default: _seg, _pred, none).")] = None,
    ref_suffix: Annotated[list[str] | None, typer.Option("--ref-suffix", help="Name suffix of reference files (repeatable; default: _gt, _seg, _label, none).")] = None,
    pairs: Annotated[Path | None, typer.Option("--pairs", help="CSV with columns study,ed,es[,group] naming the ED/ES cases of each study.")] = None,
    compare: Annotated[Path | None, typer.Option("--compare", help="A second method's predictions: adds paired Wilcoxon tests (compare.csv).")] = None,
    plots: Annotated[bool, typer.Option("--plots", help="Bland-Altman and Dice box plots as PNG (needs matplotlib).")] = False,
    myo_density: Annotated[float, typer.Option("--myo-density", help="Myocardial density in g/mL for LV mass.")] = 1.05,
    no_regional: Annotated[bool, typer.Option("--no-regional", help="Skip apical/mid/basal Dice.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")] = False,
) -> None:
    """Score masks against references: Dice, Jaccard, HD, HD95, ASSD, MSD per structure and
    phase, apical/mid/basal Dice, per-group summaries and clinical agreement (EF, volumes, mass).
    """
    from cardioseg.evaluation import PRED_SUFFIXES, REF_SUFFIXES

    try:
        if myo_density <= 0:
            raise _fail(f"--myo-density must be positive, got {myo_density}")
        if plots:
            from cardioseg.plots import require_matplotlib

            require_matplotlib()
        code = _evaluate(
            pred, ref, out, labels, ref_labels or labels, tuple(pred_suffix or PRED_SUFFIXES),
            tuple(ref_suffix or REF_SUFFIXES), pairs, compare, plots, myo_density, not no_regional, quiet,
        )  # fmt: skip
    except CardiosegError as exc:
        raise _fail(str(exc)) from None
    if code:
        raise typer.Exit(code=code)


def _evaluate(pred, ref, out, labels, ref_labels, pred_suffixes, ref_suffixes, pairs, compare, plots, density, regional, quiet):  # type: ignore[no-untyped-def]
    import time

    from rich.console import Console

    from cardioseg import evaluation as E
    from cardioseg.labels import get_label_map

    t0 = time.perf_counter()
    options = E.EvaluateOptions(get_label_map(labels), get_label_map(ref_labels), regional)
    pairing = E.pair_files(pred, ref, pred_suffixes, ref_suffixes)
    pairs_map = E.read_pairs_csv(pairs) if pairs is not None else None
    cases = E.describe_cases(pairing.cases, pairs_map)
    pairing_b = E.pair_files(compare, ref, pred_suffixes, ref_suffixes) if compare is not None else None
    ev_b = None
    err = Console(stderr=True)
    for side, paths in (("prediction", pairing.unmatched_pred), ("reference", pairing.unmatched_ref)):
        if paths:
            err.print(f"cardioseg: note: {len(paths)} {side} file(s) without a partner, skipped (e.g. {paths[0]})", highlight=False, markup=False, soft_wrap=True)
    n_total = len(cases) + (len(pairing_b.cases) if pairing_b else 0)
    with _progress_bar(quiet, "evaluating", n_total) as advance:
        ev = E.evaluate(cases, options, density, progress=lambda r: advance())
        if pairing_b is not None:
            ev_b = E.evaluate(E.describe_cases(pairing_b.cases, pairs_map), options, density, progress=lambda r: advance())
            ev.compare = E.compare_rows(ev.rows, ev_b.rows)
    for r in ev_b.errors if ev_b else []:
        err.print(f"cardioseg: error: {compare}: {r.case.key}: {r.error}", highlight=False, markup=False, soft_wrap=True)
    extra = {
        "pred": str(pred), "ref": str(ref), "compare_with": str(compare) if compare else None,
        "unmatched_pred": [str(p) for p in pairing.unmatched_pred],
        "unmatched_ref": [str(p) for p in pairing.unmatched_ref],
        "compare": ev.compare, "compare_errors": {r.case.key: r.error for r in ev_b.errors} if ev_b else {},
        "wall_seconds": time.perf_counter() - t0,
    }  # fmt: skip
    written = E.write_evaluation(ev, out, extra)
    if plots:
        from cardioseg.plots import write_plots

        written += write_plots(ev, out / "plots")
    for r in ev.errors:
        err.print(f"cardioseg: error: {r.case.key}: {r.error}", highlight=False, markup=False, soft_wrap=True)
    if not quiet:
        _print_evaluation(ev, out)
    return 1 if ev.errors or (ev_b is not None and ev_b.errors) else 0


def _print_evaluation(ev, out: Path) -> None:  # type: ignore[no-untyped-def]
    from rich import box
    from rich.console import Console
    from rich.table import Table

    def mean(d: dict, digits: int = 2) -> str:
        if not d or d["n"] == 0:
            return "-" if not d or not d["n_inf"] else "inf"
        return f"{d['mean']:.{digits}f}" + ("*" if d.get("n_inf") else "")

    console = Console()
    summary = ev.summary
    table = Table(
        title=f"cardioseg evaluate -> {out}  ({summary['n_frames']} frames)", box=box.SIMPLE,
        caption="means over frames; distances in mm; * some frames miss a structure on one side (inf, left out); "
        "SD, median and more in summary.json",
    )  # fmt: skip
    for col in ("phase", "structure", "n", "Dice", "Jaccard", "HD95", "ASSD", "MSD", "HD"):
        table.add_column(col, justify="left" if col in {"phase", "structure"} else "right")
    for phase, labels in summary["by_phase"].items():
        for label, m in labels.items():
            table.add_row(
                phase, label, str(m["dice"]["n"] + m["dice"]["n_nan"]), mean(m["dice"], 3), mean(m["jaccard"], 3),
                mean(m["hd95_mm"]), mean(m["assd_mm"]), mean(m["msd_mm"]), mean(m["hd_mm"]),
            )  # fmt: skip
    console.print(table)
    everything = summary["all"]
    if everything and any(everything[label]["dice_mid"]["n"] for label in everything):
        t = Table(title="Dice by region (all frames)", box=box.SIMPLE)
        for col in ("structure", "apical", "mid", "basal"):
            t.add_column(col, justify="left" if col == "structure" else "right")
        for label, m in everything.items():
            t.add_row(label, *(mean(m[f"dice_{r}"], 3) for r in ("apical", "mid", "basal")))
        console.print(t)
    if summary["by_group"]:
        t = Table(title="Dice by group (all frames)", box=box.SIMPLE)
        labels = list(next(iter(summary["by_group"].values())))
        for col in ("group", "frames", *labels):
            t.add_column(col, justify="left" if col == "group" else "right")
        for group, by_label in summary["by_group"].items():
            n = max(m["dice"]["n"] + m["dice"]["n_nan"] for m in by_label.values())
            t.add_row(group, str(n), *(mean(by_label[k]["dice"], 3) if k in by_label else "-" for k in labels))
        console.print(t)
    if summary["clinical"]:
        t = Table(title=f"clinical agreement, prediction - reference ({len(ev.clinical)} studies)", box=box.SIMPLE)
        for col in ("measure", "n", "r", "bias", "95 % limits", "MAE"):
            t.add_column(col, justify="left" if col == "measure" else "right")
        for key, a in summary["clinical"].items():
            t.add_row(key, str(a["n"]), f"{a['pearson_r']:.3f}", f"{a['bias']:+.2f}",
                      f"{a['loa_low']:+.1f} … {a['loa_high']:+.1f}", f"{a['mae']:.2f}")  # fmt: skip
        console.print(t)
    if ev.compare:
        t = Table(title="A vs B, paired Wilcoxon signed-rank (all metrics in compare.csv)", box=box.SIMPLE)
        for col in ("phase", "structure", "metric", "n", "mean A", "mean B", "p"):
            t.add_column(col, justify="left" if col in {"phase", "structure", "metric"} else "right")
        for r in ev.compare:
            if r["metric"] in ("dice", "hd95_mm"):
                t.add_row(r["phase"], r["label"], r["metric"], str(r["n_pairs"]), f"{r['mean_a']:.3f}",
                          f"{r['mean_b']:.3f}", f"{r['p_value']:.2g}")  # fmt: skip
        console.print(t)

def main() -> None:
    app()


if __name__ == "__main__":
    main()
