"""The ``cardioseg`` command line: a thin Typer adapter over the engine.

Heavy imports (torch, the engine) happen inside the commands, so ``--help`` is instant.
Engine errors (``CardiosegError``) become one line on stderr and exit code 1.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from cardioseg._version import __version__
from cardioseg.errors import DEBUG_HINT, CardiosegError
from cardioseg.runtime import CLEAN_UPS, DEFAULT_CLEAN_UP, DEFAULT_CROP_PX
from cardioseg.train import (
    ARCHES,
    ARCHES_3D,
    LOSSES,
    OPTIMIZERS,
    PAPER_RECIPE,
    REGULARIZERS,
    SHIPPED_RECIPE,
    WEIGHTINGS,
    describe_choices,
    recipe_text,
)


class _PlainHelp:
    """-h/--help without a type in the help's second column (Typer shows ``<bool>`` there)."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class _Command(_PlainHelp, TyperCommand):
    pass


class _Group(_PlainHelp, TyperGroup):
    pass


app = typer.Typer(
    name="cardioseg",
    cls=_Group,
    help="Segment short-axis cardiac cine MRI and report volumes, EF and myocardial mass.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class EnsembleMode(str, Enum):
    vote = "vote"
    mean = "mean"


# --debug: predict prints its studies' tracebacks; for the command itself ``main`` reads it from sys.argv
Debug = Annotated[bool, typer.Option("--debug", metavar="", help="Show the traceback of an unexpected error (a bug) instead of one line.")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"cardioseg: error: {message}", err=True)
    return typer.Exit(code=1)


def _command_line() -> str:
    """The command line as typed (quoted where needed), for the reports' provenance."""
    import shlex

    return shlex.join(["cardioseg", *sys.argv[1:]])


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


@app.command(cls=_Command)
def predict(
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(help="NIfTI 3D frames or 4D cines, DICOM series folders, ACDC-style patient folders (with Info.cfg), folders of those (expanded one level), or quoted glob patterns such as \"data/**/*_4d.nii.gz\".", show_default=False),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", rich_help_panel="Output", help="Output folder (created if needed).")] = Path("cardioseg_out"),
    ed: Annotated[Path | None, typer.Option("--ed", rich_help_panel="Input", help="End-diastolic 3D frame of a study (with --es).")] = None,
    es: Annotated[Path | None, typer.Option("--es", rich_help_panel="Input", help="End-systolic 3D frame of a study (with --ed).")] = None,
    study: Annotated[str | None, typer.Option("--study", rich_help_panel="Input", help="Name of the --ed/--es study (default: their common stem).")] = None,
    weights: Annotated[list[str] | None, typer.Option("--weights", "-w", metavar="NAME|PATH", rich_help_panel="Model and hardware", help="Registered weights name or a checkpoint path; repeat it for an ensemble.")] = None,
    ensemble: Annotated[EnsembleMode, typer.Option("--ensemble", rich_help_panel="Model and hardware", help="With several --weights: vote (per-voxel majority) | mean (mean probabilities).")] = EnsembleMode.vote,
    device: Annotated[str, typer.Option("--device", rich_help_panel="Model and hardware", help="auto | cpu | cuda | cuda:N")] = "auto",
    precision: Annotated[str, typer.Option("--precision", rich_help_panel="Model and hardware", help="auto (bf16 where the hardware has it) | bf16 | fp32")] = "auto",
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, rich_help_panel="Model and hardware", help="2D slices per forward pass (default: 16 on a CPU, 256 on a GPU).", show_default=False)] = None,
    batch_studies: Annotated[bool | None, typer.Option("--batch-studies/--no-batch-studies", metavar="", rich_help_panel="Model and hardware", help="In a batch, segment the slices of several studies in one forward pass (default: on a GPU only).", show_default=False)] = None,
    compile_model: Annotated[bool, typer.Option("--compile", metavar="", rich_help_panel="Model and hardware", help="torch.compile the network (a slow first batch; for long GPU runs; a CPU needs a C++ compiler).")] = False,
    threads: Annotated[int, typer.Option("--threads", min=0, rich_help_panel="Model and hardware", help="CPU threads (0: $OMP_NUM_THREADS, else $SLURM_CPUS_PER_TASK, else the usable physical cores).")] = 0,
    ed_frame: Annotated[int | None, typer.Option("--ed-frame", min=0, rich_help_panel="Input", help="0-based ED frame of a 4D cine (default: largest LV volume).")] = None,
    es_frame: Annotated[int | None, typer.Option("--es-frame", min=0, rich_help_panel="Input", help="0-based ES frame of a 4D cine (default: smallest LV volume).")] = None,
    myo_density: Annotated[float, typer.Option("--myo-density", rich_help_panel="Clinical", help="Myocardial density in g/mL for LV mass.")] = 1.05,
    height_cm: Annotated[float | None, typer.Option("--height-cm", rich_help_panel="Clinical", help="Height for BSA indexing (overrides Info.cfg).")] = None,
    weight_kg: Annotated[float | None, typer.Option("--weight-kg", rich_help_panel="Clinical", help="Weight for BSA indexing (overrides Info.cfg).")] = None,
    no_postprocess: Annotated[bool, typer.Option("--no-postprocess", metavar="", rich_help_panel="Model and hardware", help="Skip the clean-up of the masks.")] = False,
    clean_up: Annotated[str, typer.Option("--clean-up", rich_help_panel="Model and hardware", help="; ".join(f"{k}: {v}" for k, v in CLEAN_UPS.items()) + ".")] = DEFAULT_CLEAN_UP,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", metavar="", rich_help_panel="Model and hardware", help="Average the in-plane rotations by 0/90/180/270 degrees (4x the network's time; default: as the weights recommend).", show_default=False)] = None,
    tta_frames: Annotated[str, typer.Option("--tta-frames", rich_help_panel="Model and hardware", help="Which frames of a cine get the rotations: key (ED and ES, found on a first pass without them: EF and mass as with all, a 30-frame cine in 38 passes instead of 120) | all.")] = "key",
    crop_px: Annotated[int | None, typer.Option("--crop-px", min=0, rich_help_panel="Model and hardware", help="Find the heart on a coarse grid, then segment an N-pixel crop around it (multiple of 16; 0: the whole field in one stage; default: as the weights recommend).", show_default=False)] = DEFAULT_CROP_PX,
    max_voxels: Annotated[int | None, typer.Option("--max-voxels", min=1, rich_help_panel="Input", help="Refuse images with more voxels (X*Y*Z*T) than this, before reading them (default: $CARDIOSEG_MAX_VOXELS or 536870912).")] = None,
    series_uid: Annotated[str | None, typer.Option("--series-uid", rich_help_panel="Input", help="SeriesInstanceUID to read from a DICOM folder that holds several series (the error lists them).")] = None,
    strict: Annotated[bool, typer.Option("--strict", metavar="", rich_help_panel="Quality control", help="Treat any quality-control flag as an error: the study gets exit code 1 and no outputs.")] = False,
    overlay: Annotated[bool, typer.Option("--overlay", metavar="", rich_help_panel="Output", help="Also write DIR/<study>_overlay.png: every ED/ES slice with the mask contours, and the volume curve of a cine (needs matplotlib: pip install 'cardioseg\\[plots]').")] = False,
    dicom_seg: Annotated[bool, typer.Option("--dicom-seg", metavar="", rich_help_panel="Output", help="For DICOM input, also write DIR/<study>_seg.dcm: a DICOM Segmentation of the ED and ES frames referencing the source images, for PACS and web viewers (needs highdicom: pip install 'cardioseg\\[dicom-seg]').")] = False,
    html: Annotated[bool, typer.Option("--html", metavar="", rich_help_panel="Output", help="Also keep DIR/report.html: one page over every study in DIR (table with flagged studies first, overlays, volume curves, links), rebuilt like summary.csv; opens offline.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", metavar="", rich_help_panel="Output", help="Print the plan (studies, their inputs and outputs, what would be skipped or recomputed and why) and exit; nothing is read, loaded or written.")] = False,
    skip_existing: Annotated[bool | None, typer.Option("--skip-existing/--overwrite", metavar="", rich_help_panel="Batch and cluster", help="Skip studies an earlier run finished (all outputs there; the report is written last) or recompute them (default: skip for a batch of several studies or parts, overwrite for one study).", show_default=False)] = None,
    num_parts: Annotated[int | None, typer.Option("--num-parts", min=1, metavar="N", rich_help_panel="Batch and cluster", help="Split the studies into N parts (every N-th study in name order) and run one of them (default: $SLURM_ARRAY_TASK_COUNT, else 1).", show_default=False)] = None,
    part_id: Annotated[int | None, typer.Option("--part-id", min=0, metavar="I", rich_help_panel="Batch and cluster", help="Which part to run, 0..N-1 (default: $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN).", show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", rich_help_panel="Output", help="No progress bar, notes or table.")] = False,
    debug: Debug = False,
) -> None:
    """Segment images and write DIR/X_seg.nii.gz, DIR/X_report.json and DIR/summary.csv.

    Every report carries quality-control flags (missing structures, implausible EF or mass,
    uneven slices, heart at the edge of the field of view, ...); --strict makes them errors.
    Batches: give many inputs, folders or patterns; rerunning skips finished studies, and
    --num-parts/--part-id (or a Slurm job array) split the studies between processes."""
    from cardioseg import console
    from cardioseg.api import predict as run

    if not inputs and ed is None and es is None:
        typer.echo("cardioseg predict: give INPUT files/folders or --ed FILE --es FILE (see --help)", err=True)
        raise typer.Exit(code=2)
    try:
        with console.study_progress(quiet) as (on_frame, on_result, on_start, on_plan):
            results = run(
                list(inputs or []), out, ed=ed, es=es, study=study, weights=weights, threads=threads,
                skip_existing=skip_existing, num_parts=num_parts, part_id=part_id, dry_run=dry_run,
                on_frame=on_frame, on_result=on_result, on_start=on_start, on_plan=on_plan, on_note=None if quiet else console.note,
                ensemble=ensemble.value, device=device, precision=precision, batch_size=batch_size,
                postprocess=not no_postprocess, clean_up=clean_up, crop_px=crop_px, tta=tta, tta_frames=tta_frames, compile=compile_model, batch_studies=batch_studies,
                myo_density_g_ml=myo_density, ed_frame=ed_frame, es_frame=es_frame, height_cm=height_cm,
                weight_kg=weight_kg, max_voxels=max_voxels, strict=strict, overlay=overlay, html=html, dicom_seg=dicom_seg, series_uid=series_uid, command=_command_line(),
            )  # fmt: skip
    except CardiosegError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt as exc:  # noqa: B036 - the batch's own KeyboardInterrupt subclass carries the counts
        done, total = getattr(exc, "done", None), getattr(exc, "total", None)
        counts = f"{done} of {total} studies done; " if done is not None else ""
        typer.echo(f"\ncardioseg: interrupted: {counts}rerun the same command to finish", err=True)
        raise typer.Exit(code=130) from None
    if dry_run:
        console.print_plan(results, out)
        return
    ran = [r for r in results if not r.skipped]
    for r in ran:
        for text in r.warnings:
            console.warning(f"{r.study.name}: {text}")
    failed = [r for r in ran if r.error]
    for r in failed:
        if debug and r.traceback:
            typer.echo(r.traceback, err=True)
        console.error(f"{r.study.name}: {r.error}")
    if not quiet:
        console.print_predict_results([r for r in ran if r.report], out)
    if failed:
        raise typer.Exit(code=1)


@app.command(cls=_Command)
def measure(
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(help="Label masks (3D, or 4D for a cine; NIfTI), ACDC patient folders (the masks of the ED/ES frames Info.cfg names: _gt, else _seg), cardioseg predict output folders (one study per report), folders of masks (X_ED/X_ES masks pair up), or quoted glob patterns.", show_default=False),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", rich_help_panel="Output", help="Output folder for the reports and summary.csv (created if needed).")] = Path("cardioseg_measure"),
    ed: Annotated[Path | None, typer.Option("--ed", rich_help_panel="Input", help="End-diastolic 3D mask of a study (with --es).")] = None,
    es: Annotated[Path | None, typer.Option("--es", rich_help_panel="Input", help="End-systolic 3D mask of a study (with --ed).")] = None,
    study: Annotated[str | None, typer.Option("--study", rich_help_panel="Input", help="Name of the --ed/--es study (default: their common stem).")] = None,
    labels: Annotated[str | None, typer.Option("--labels", rich_help_panel="Input", help="Label preset of the masks: acdc | mnms | ukbb (default: the label map in cardioseg's reports beside them, else acdc).", show_default=False)] = None,
    ed_frame: Annotated[int | None, typer.Option("--ed-frame", min=0, rich_help_panel="Input", help="0-based ED frame of a 4D mask (default: largest LV volume).")] = None,
    es_frame: Annotated[int | None, typer.Option("--es-frame", min=0, rich_help_panel="Input", help="0-based ES frame of a 4D mask (default: smallest LV volume).")] = None,
    myo_density: Annotated[float, typer.Option("--myo-density", rich_help_panel="Clinical", help="Myocardial density in g/mL for LV mass.")] = 1.05,
    height_cm: Annotated[float | None, typer.Option("--height-cm", rich_help_panel="Clinical", help="Height for BSA indexing (overrides Info.cfg).")] = None,
    weight_kg: Annotated[float | None, typer.Option("--weight-kg", rich_help_panel="Clinical", help="Weight for BSA indexing (overrides Info.cfg).")] = None,
    strict: Annotated[bool, typer.Option("--strict", metavar="", rich_help_panel="Quality control", help="Treat any quality-control flag as an error: the study gets exit code 1 and no report.")] = False,
    overlay: Annotated[bool, typer.Option("--overlay", metavar="", rich_help_panel="Output", help="Also write DIR/<study>_bullseye.png: the AHA wall thickness (needs matplotlib).")] = False,
    html: Annotated[bool, typer.Option("--html", metavar="", rich_help_panel="Output", help="Also keep DIR/report.html: one page over every study in DIR, rebuilt like summary.csv.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", rich_help_panel="Output", help="No notes or table.")] = False,
    debug: Debug = False,
) -> None:
    """The clinical report of existing label masks (cardioseg's, nnU-Net's, an expert's): the
    same volumes, EF, mass, QC flags, report and summary.csv as predict, with no network."""
    from cardioseg import console
    from cardioseg.api import measure as run

    if not inputs and ed is None:
        raise _fail("give masks to measure (files, folders or patterns), or --ed and --es")
    try:
        results = run(
            inputs or [], out, ed=ed, es=es, study=study, labels=labels, myo_density_g_ml=myo_density,
            ed_frame=ed_frame, es_frame=es_frame, height_cm=height_cm, weight_kg=weight_kg, strict=strict,
            overlay=overlay, html=html, command=_command_line(), on_note=None if quiet else console.note,
        )  # fmt: skip
    except CardiosegError as exc:
        raise _fail(str(exc)) from None
    for r in results:
        for text in r.warnings:
            console.warning(f"{r.study.name}: {text}")
    failed = [r for r in results if r.error]
    for r in failed:
        if debug and r.traceback:
            typer.echo(r.traceback, err=True)
        console.error(f"{r.study.name}: {r.error}")
    if not quiet:
        console.print_predict_results([r for r in results if r.report], out, "measure")
    if failed:
        raise typer.Exit(code=1)


@app.command("weights", cls=_Command)
def list_weights() -> None:
    """The shipped models: name, file, sha256, training data, license and cross-validation figures."""
    from cardioseg.weights import describe_registered, weights_dir

    try:
        rows = describe_registered()
    except CardiosegError as exc:
        raise _fail(str(exc)) from None
    if not rows:
        raise _fail(f"no registered weights in {weights_dir()}")
    for row in rows:
        typer.echo(f"{row['name']}\n  file      {row['file']}\n  sha256    {row['sha256']}\n  training  {row['training']}"
                   f"\n  license   {row['license']}\n  defaults  {row.get('defaults', '')}\n  CV        {row['cv']}\n")  # fmt: skip
    typer.echo("Use one with --weights NAME (or a checkpoint path); model cards: cardioseg/weights/README.md")


@app.command(cls=_Command)
def preprocess(
    data: Annotated[Path, typer.Argument(help="ACDC root (patientNNN/ with Info.cfg) or a folder with images/ and labels/.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Cache folder to write (replaced if it exists).")],
    spacing_mm: Annotated[float, typer.Option("--spacing-mm", help="In-plane pixel size of the model grid.")] = 1.5625,
    fov_px: Annotated[int, typer.Option("--fov-px", min=32, help="Model grid size in pixels (square).")] = 256,
    truncation_px: Annotated[float, typer.Option("--truncation-px", help="T of the truncated signed distance maps.")] = 250.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress bar.")] = False,
    debug: Debug = False,
) -> None:
    """Resample, crop/pad and normalise labelled frames into a memory-mapped training cache
    with truncated signed distance maps per structure (DMR paper, Eq. 2)."""
    from cardioseg import console
    from cardioseg.dataset import build_cache, find_frames
    from cardioseg.preprocess import PreprocessConfig

    try:
        frames = find_frames(data)
        cfg = PreprocessConfig(spacing_mm=spacing_mm, fov_px=fov_px)
        with console.progress_bar(quiet, "preprocessing", len(frames)) as advance:
            path = build_cache(frames, out, cfg, truncation_px=truncation_px, progress=lambda f: advance())
    except CardiosegError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{path}: {len(frames)} frames")


@app.command(cls=_Command)
def train(
    cache: Annotated[Path, typer.Argument(help="Cache folder from cardioseg preprocess.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: checkpoints, log.csv, exported weights.")],
    fold: Annotated[int, typer.Option("--fold", min=0, help="Validation fold k of the 5 patient-level folds.")] = 0,
    all_folds: Annotated[bool, typer.Option("--all-folds", metavar="", help="Train every fold, one after the other, in OUT/foldK.")] = False,
    all_patients: Annotated[bool, typer.Option("--all-patients", metavar="", help="Train on every patient (the shipped model): no validation, the last epoch exported.")] = False,
    arch: Annotated[str, typer.Option("--arch", help=f"{describe_choices(ARCHES)}.")] = "unet2d",
    context_slices: Annotated[int, typer.Option("--context-slices", min=1, help="2D networks: this many neighbouring slices of the frame (odd; edge slices replicated) as input channels, the centre one predicted (Qure.ai's multi-slice 2D U-Net).")] = 1,
    paper: Annotated[bool, typer.Option("--paper", metavar="", help=f"Start from the DMR paper's settings ({recipe_text(PAPER_RECIPE)}) instead of the shipped default's ({recipe_text(SHIPPED_RECIPE)}); options given still win.")] = False,
    dmr: Annotated[bool | None, typer.Option("--dmr/--no-dmr", metavar="", help="Add the distance-map regulariser (training only; default: on for 2D networks without --regularizer).", show_default=False)] = None,
    loss: Annotated[str | None, typer.Option("--loss", help=f"{describe_choices(LOSSES)} (default: dice_ce).", show_default=False)] = None,
    weighting: Annotated[str, typer.Option("--weighting", help=f"With --dmr: {describe_choices(WEIGHTINGS)}")] = "uncertainty",
    dm_weight: Annotated[float, typer.Option("--dm-weight", help="Fixed (or initial) weight of the distance-map loss.")] = 1.0,
    regularizer: Annotated[str, typer.Option("--regularizer", help=f"Training-only regulariser, never exported: {describe_choices(REGULARIZERS)}. {'/'.join(k for k, v in REGULARIZERS.items() if v.shape_autoencoder)} first pre-train a shape autoencoder on the training labels (OUT/shape_ae.pt).")] = "none",
    reg_weight: Annotated[float, typer.Option("--reg-weight", min=0.0, help=f"Weight of the regulariser's term; 0: its default ({', '.join(f'{k} {v.default_weight:g}' for k, v in REGULARIZERS.items() if v.default_weight)}).")] = 0.0,
    position_weight: Annotated[float, typer.Option("--position-weight", min=0.0, help="scn/srscn: weight of the slice-position loss (positions in [0, 1]).")] = 0.1,
    shape_epochs: Annotated[int, typer.Option("--shape-epochs", min=1, help="srnn/srscn/acnn: pre-training epochs of the shape autoencoder.")] = 20,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help=f"{describe_choices(OPTIMIZERS)} (default: adamw).", show_default=False)] = None,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate; 0: 1e-3 with AdamW, the paper's 5e-4 with RMSprop and --dmr (1e-4 without).")] = 0.0,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help=f"Default: {SHIPPED_RECIPE['epochs']} ({PAPER_RECIPE['epochs']} with --paper).", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Slices per batch (frames for unet3d).")] = 15,
    crop_px: Annotated[int, typer.Option("--crop-px", min=16, help="Training crop (multiple of 16).")] = 160,
    scale_min: Annotated[float | None, typer.Option("--scale-min", help=f"Smallest random scale of a crop (below 1: more field of view at coarser pixels; default {SHIPPED_RECIPE['scale_min']}).", show_default=False)] = None,
    scale_max: Annotated[float | None, typer.Option("--scale-max", help=f"Largest random scale of a crop (default {SHIPPED_RECIPE['scale_max']}).", show_default=False)] = None,
    intensity_aug: Annotated[float | None, typer.Option("--intensity-aug", min=0.0, max=1.0, help=f"Probability of each of gamma, contrast, bias field, blur and low-resolution simulation per crop (other scanners; 0: off; default {SHIPPED_RECIPE['intensity_aug']}).", show_default=False)] = None,
    hard_slices: Annotated[float, typer.Option("--hard-slices", min=0.01, help="Sampling weight of the basal and apical slices (the outer fifth of each stack at either end) against the others (1: uniform).")] = 1.0,
    keep: Annotated[str, typer.Option("--keep", help="Checkpoint to export: best (highest held-out Dice: an optimistic score for that fold) or last (the last epoch: what cross-validation should score).")] = "best",
    val_every: Annotated[int, typer.Option("--val-every", min=1, help="Validate on the held-out patients every this many epochs (and after the last).")] = 1,
    base_width: Annotated[int, typer.Option("--base-width", min=1, help="Channels at full resolution.")] = 16,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[int, typer.Option("--threads", min=0, help="Torch CPU threads (0: torch's default).")] = 0,
    name: Annotated[str, typer.Option("--name", help="Weights name (default e.g. dmr-unet2d-acdc-fold0, unet2d-ctx3-qure_hybrid-acdc-fold0).")] = "",
    init: Annotated[str, typer.Option("--init", help="Start the network from these trained weights (a registered name or an exported .pt; fine-tuning) instead of random ones. They must be of the same network, preprocessing and labels, and must not have seen the fold's validation patients.")] = "",
    resume: Annotated[bool, typer.Option("--resume", metavar="", help="Continue the run in OUT from its last checkpoint.")] = False,
    export_only: Annotated[bool, typer.Option("--export-only", metavar="", help="Only export the best checkpoint of OUT.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress bar.")] = False,
    debug: Debug = False,
) -> None:
    """Train a segmentation network on a cache and export self-describing weights.

    Under torchrun (``torchrun --nproc_per_node N -m cardioseg train ...``) each process
    trains a shard of every batch with DistributedDataParallel.
    """
    from cardioseg import console
    from cardioseg.train import TrainConfig, export_run, fold_configs, load_config
    from cardioseg.train import train as run_training
    from cardioseg.train.distributed import init_process_group, set_threads

    given = {"dmr": dmr, "loss": loss, "optimizer": optimizer, "epochs": epochs, "scale_min": scale_min,
             "scale_max": scale_max, "intensity_aug": intensity_aug}  # fmt: skip
    recipe: dict[str, Any] = {k: v if v is not None else (PAPER_RECIPE if paper else SHIPPED_RECIPE)[k] for k, v in given.items()}
    if dmr is None and (arch in ARCHES_3D or regularizer != "none"):
        recipe["dmr"] = False  # the distance-map decoder is 2D, and the other regularisers replace it
    cfg = TrainConfig(
        cache=str(cache), out=str(out), arch=arch, context_slices=context_slices,
        base_width=base_width, weighting=weighting, dm_weight=dm_weight, lr=lr,
        batch_size=batch_size, crop_px=crop_px, fold=fold, all_patients=all_patients, seed=seed, threads=threads, name=name,
        hard_slices=hard_slices, keep=keep, val_every=val_every, **recipe,
        regularizer=regularizer, reg_weight=reg_weight, position_weight=position_weight, shape_epochs=shape_epochs,
        init=init,
    )  # fmt: skip
    try:
        cfg.check()
        if all_folds and all_patients:
            raise _fail("--all-folds and --all-patients exclude each other (folds hold patients out; --all-patients holds none out)")
        configs = fold_configs(cfg) if all_folds else [cfg]
        rank = 0
        if not export_only:  # the process-wide settings are the command's, not the engine's
            rank, _ = init_process_group()
            set_threads(cfg.threads)
        for c in configs:
            if export_only:
                path = export_run(load_config(Path(c.out)), log=lambda m: typer.echo(m, err=True))
            else:
                progress = console.TrainProgress(not quiet and sys.stderr.isatty() and rank == 0)
                with progress.bar:
                    path = run_training(c, resume=resume, callbacks=progress)
            typer.echo(str(path))
    except CardiosegError as exc:
        raise _fail(str(exc)) from None


@app.command(cls=_Command)
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Predicted mask, or a folder of them (searched recursively).")],
    ref: Annotated[Path, typer.Argument(help="Reference mask, or a folder of them (e.g. an ACDC root).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for metrics.csv, summary.json, ...")] = Path("cardioseg_eval"),
    labels: Annotated[str | None, typer.Option("--labels", help="Label preset of the predictions: acdc | mnms | ukbb (default: the label map in cardioseg's reports beside them, else acdc).", show_default=False)] = None,
    ref_labels: Annotated[str, typer.Option("--ref-labels", help="Label preset of the references: acdc | mnms | ukbb (never follows --labels).")] = "acdc",
    pred_suffix: Annotated[list[str] | None, typer.Option("--pred-suffix", help="Name suffix of prediction files before .nii.gz (repeatable; default: _seg, _pred, none).")] = None,
    ref_suffix: Annotated[list[str] | None, typer.Option("--ref-suffix", help="Name suffix of reference files (repeatable; default: _gt, _seg, _label, none).")] = None,
    pairs: Annotated[Path | None, typer.Option("--pairs", help="CSV with columns study,ed,es[,group] naming the ED/ES cases of each study.")] = None,
    compare: Annotated[Path | None, typer.Option("--compare", help="A second method's predictions: adds paired Wilcoxon tests (compare.csv).")] = None,
    plots: Annotated[bool, typer.Option("--plots", metavar="", help="Bland-Altman and Dice box plots as PNG (needs matplotlib).")] = False,
    myo_density: Annotated[float, typer.Option("--myo-density", help="Myocardial density in g/mL for LV mass.")] = 1.05,
    no_regional: Annotated[bool, typer.Option("--no-regional", metavar="", help="Skip apical/mid/basal Dice.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress bar or table.")] = False,
    debug: Debug = False,
) -> None:
    """Score masks against references: Dice, Jaccard, HD, HD95, ASSD, MSD per structure and
    phase, apical/mid/basal Dice, per-group summaries and clinical agreement (EF, volumes, mass).
    """
    from cardioseg import console
    from cardioseg.api import evaluate as run

    try:
        with console.progress_bar(quiet, "evaluating") as tick:
            ev = run(
                pred, ref, out, labels=labels, ref_labels=ref_labels, pred_suffixes=pred_suffix, ref_suffixes=ref_suffix,
                pairs=pairs, compare=compare, plots=plots, myo_density_g_ml=myo_density, regional=not no_regional,
                progress=tick, on_note=console.note,
            )  # fmt: skip
    except CardiosegError as exc:
        raise _fail(str(exc)) from None
    for key, error in ev.compare_errors.items():
        console.error(f"{compare}: {key}: {error}")
    for r in ev.errors:
        console.error(f"{r.case.key}: {r.error}")
    if not quiet:
        console.print_evaluation(ev, out)
    if ev.errors or ev.compare_errors:
        raise typer.Exit(code=1)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: object = None, line: str | None = None) -> None:
    """Library warnings (numpy, nibabel, SimpleITK, torch) as one ``cardioseg: warning:`` line
    naming the library, once each, instead of Python's two-line form with a source line."""
    origin = Path(filename).parts
    library = next((p for p in ("numpy", "nibabel", "scipy", "SimpleITK", "torch") if p in origin), "cardioseg")
    text = " ".join(str(message).split())
    key = (category.__name__, text)
    if key not in _SEEN_WARNINGS:
        _SEEN_WARNINGS.add(key)
        typer.echo(f"cardioseg: warning: {category.__name__} from {library}: {text}", err=True)


_SEEN_WARNINGS: set[tuple[str, str]] = set()


def main() -> None:
    """The ``cardioseg`` command: an exception nobody foresaw (a bug) is one line and exit
    code 1 unless ``--debug`` asks for the traceback; library warnings are one line each."""
    import warnings

    warnings.showwarning = _one_line_warning
    try:
        app()
    except Exception as exc:  # the last line of defence; --debug re-raises
        if "--debug" in sys.argv:
            raise
        detail = " ".join(str(exc).split())
        typer.echo(f"cardioseg: error: unexpected error: {type(exc).__name__}" + (f": {detail}" if detail else "") + DEBUG_HINT, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
