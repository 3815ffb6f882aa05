"""The Python API: what the ``cardioseg`` commands do, callable from a script.

>>> import cardioseg                                                    # doctest: +SKIP
>>> results = cardioseg.predict(["data/patient001"], "out")             # doctest: +SKIP
>>> results[0].report["lv_ef_pct"]                                      # doctest: +SKIP
>>> labels = cardioseg.segment(cardioseg.read_volume("frame.nii.gz"))   # doctest: +SKIP
>>> ev = cardioseg.evaluate("out", "data", "eval")                      # doctest: +SKIP

:func:`predict`, :func:`measure` and :func:`evaluate` write exactly the files the commands write; the CLI is a
thin shell over these functions (parse, one call, render, exit code). :func:`segment` works in
memory. Errors a user can fix raise :class:`cardioseg.errors.CardiosegError` with one line;
per-study failures of a batch are recorded in the results and never stop the others.

Nothing heavy is imported until a function is called (torch only when a network is built).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import numpy as np

    from cardioseg.batch import Study, StudyResult
    from cardioseg.ensemble import Ensemble
    from cardioseg.evaluation import Evaluation
    from cardioseg.inference import Predictor
    from cardioseg.io import Volume
    from cardioseg.labels import LabelMap
    from cardioseg.weights import LoadedWeights

PathLike = Union[str, "os.PathLike[str]"]
WeightsSpec = Union[PathLike, "LoadedWeights", None]


def load_weights(spec: WeightsSpec = None) -> LoadedWeights:
    """A registered weights name (default: the shipped default) or a checkpoint path ->
    verified weights (file checksum, parameter checksum, ``weights_only=True``)."""
    from cardioseg.weights import LoadedWeights
    from cardioseg.weights import load_weights as load

    return spec if isinstance(spec, LoadedWeights) else load(spec)


def read_volume(path: PathLike, max_voxels: int | None = None, series_uid: str | None = None) -> Volume:
    """A NIfTI file (3D frame or 4D cine) or a DICOM series folder -> :class:`Volume` (array
    as stored, affine, typed metadata). Raises a one-line ``CardiosegError`` for a missing,
    unreadable or unsupported input."""
    from cardioseg.io import read_volume as read

    return read(Path(path), max_voxels, series_uid)


def load_predictor(
    weights: WeightsSpec | Sequence[WeightsSpec] = None, threads: int = 0, **options: Any
) -> Predictor | Ensemble:
    """The segmentation engine for ``weights`` (several: an ensemble).

    ``options`` are the fields of :class:`cardioseg.inference.PredictOptions` (``device``,
    ``precision``, ``batch_size``, ``postprocess``, ``ensemble``, ``compile``,
    ``batch_studies``). ``threads``: CPU threads for the network (0: ``$OMP_NUM_THREADS``,
    ``$SLURM_CPUS_PER_TASK`` or the physical cores); torch fixes its thread pool at the first
    forward pass, so this applies to the first predictor of a process.
    """
    from cardioseg.ensemble import Ensemble
    from cardioseg.inference import PredictOptions, Predictor
    from cardioseg.runtime import set_num_threads

    popts = PredictOptions(**_pick(options, PredictOptions, "load_predictor"))
    set_num_threads(threads or None)
    specs: list[WeightsSpec] = list(weights) if isinstance(weights, (list, tuple)) else [weights]  # type: ignore[list-item]
    members = [load_weights(w) for w in specs or [None]]
    return Predictor(members[0], popts) if len(members) == 1 else Ensemble(members, popts)


def segment(
    volume: Volume | np.ndarray,
    affine: np.ndarray | None = None,
    *,
    predictor: Predictor | Ensemble | None = None,
    weights: WeightsSpec | Sequence[WeightsSpec] = None,
    **options: Any,
) -> np.ndarray:
    """Labels (uint8: 0 background, then the weights' label map; ACDC: 1 RV, 2 MYO, 3 LV) of a
    3D frame or 4D cine, with exactly the input's shape and voxel order, in memory.

    ``volume``: a :class:`Volume`, or an array with its 4x4 voxel-to-world ``affine`` (mm).
    ``predictor``: one made by :func:`load_predictor` (reuse it for many volumes); else one is
    loaded from ``weights`` and ``options`` (as :func:`load_predictor`).
    """
    from cardioseg.errors import ConfigError
    from cardioseg.io import Volume

    if isinstance(volume, Volume):
        data, affine = volume.data, volume.affine if affine is None else affine
    elif affine is None:
        raise ConfigError("segment(array) needs the array's affine (4x4, voxel index -> mm)")
    else:
        data = volume
    if predictor is None:
        predictor = load_predictor(weights, **options)
    elif options or weights is not None:
        raise ConfigError("give segment() either a predictor or weights/options, not both")
    return predictor.predict(data, affine)


def predict(
    inputs: PathLike | Sequence[PathLike] = (),
    out_dir: PathLike = "cardioseg_out",
    *,
    ed: PathLike | None = None,
    es: PathLike | None = None,
    study: str | None = None,
    weights: WeightsSpec | Sequence[WeightsSpec] = None,
    predictor: Predictor | Ensemble | None = None,
    threads: int = 0,
    skip_existing: bool | None = None,
    num_parts: int | None = None,
    part_id: int | None = None,
    on_frame: Callable[[Study, int], Any] | None = None,
    on_result: Callable[[StudyResult], Any] | None = None,
    on_start: Callable[[int, int], Any] | None = None,
    on_note: Callable[[str], Any] | None = None,
    on_plan: Callable[[dict[str, int]], Any] | None = None,
    dry_run: bool = False,
    **options: Any,
) -> list[StudyResult]:
    """Segment and measure studies; write ``OUT/<study>_seg.nii.gz``, ``<study>_report.json``
    (QC flags included) and ``OUT/summary.csv`` as ``cardioseg predict`` does.

    ``inputs``: NIfTI frames or cines, DICOM series folders, ACDC-style patient folders,
    folders of those, or glob patterns; ``ed``/``es``: one study from two 3D frames.
    ``weights``/``predictor``/``threads``: as :func:`load_predictor`; ``options``: the fields of
    :class:`cardioseg.inference.PredictOptions` and of :class:`cardioseg.batch.StudyOptions`
    (``myo_density_g_ml``, ``ed_frame``, ``es_frame``, ``height_cm``, ``weight_kg``,
    ``max_voxels``, ``strict``, ``overlay``, ``html``, ``dicom_seg``, ``series_uid``, ``command``: the command
    line for the reports' provenance). ``skip_existing``: skip studies a
    previous run finished (default: for batches); ``num_parts``/``part_id``: run one part of the
    batch (default: from a Slurm job array).

    ``on_plan({study: frames})``: how many frames each study to run is expected to hold
    (from headers; for progress bars that count frames, not studies). ``dry_run``: plan only
    (nothing is written or loaded): one result per study with its expected ``outputs`` and
    ``planned`` (what a run would do).

    Returns one result per study of this part, in order: finished ones (``skipped``) first,
    then those run now, each with its ``report``, ``outputs`` or ``error``. Callbacks:
    ``on_start(n_to_run, n_skipped)``, ``on_frame(study, t)``, ``on_result(result)``,
    ``on_note(text)`` for what a user should know (entries of input folders left out, parts,
    skipped studies).
    """
    from cardioseg import batch
    from cardioseg.inference import PredictOptions
    from cardioseg.io import max_voxels_default

    study_opts = _pick(options, batch.StudyOptions, "predict", also=PredictOptions)
    if study_opts.get("max_voxels") is None:
        study_opts["max_voxels"] = max_voxels_default()
    if study_opts.get("myo_density_g_ml", 1.0) <= 0:
        raise _config_error(f"--myo-density must be positive, got {study_opts['myo_density_g_ml']}")
    study_options = batch.StudyOptions(**study_opts)
    out = Path(out_dir)
    paths = [Path(inputs)] if isinstance(inputs, (str, os.PathLike)) else [Path(p) for p in inputs]
    n_parts, part, from_slurm = batch.resolve_parts(num_parts, part_id, os.environ)
    planning_notes: list[str] = []
    studies = batch.plan_studies(paths, _path(ed), _path(es), study, planning_notes)
    if on_note is not None:
        for line in planning_notes:
            on_note(line)
    mine = batch.shard(studies, n_parts, part)
    skip = skip_existing if skip_existing is not None else (len(studies) > 1 or n_parts > 1)
    if study_options.overlay:
        from cardioseg.overlay import require_matplotlib

        require_matplotlib()
    if study_options.dicom_seg:
        from cardioseg.io.dicom_seg import require_highdicom

        require_highdicom()
    predict_opts = _pick(options, PredictOptions, "predict", also=batch.StudyOptions)
    resolved = asdict(predictor.options) if predictor is not None else asdict(PredictOptions(**predict_opts))
    fingerprint = batch.make_fingerprint(_weights_sha256(predictor, weights), resolved, asdict(study_options))
    study_options = replace(study_options, fingerprint=fingerprint)
    changed: dict[str, list[str]] = {}  # finished studies to recompute -> the settings that changed
    done, todo = batch.split_finished(mine, out, study_options, changed) if skip else ([], mine)
    if dry_run:  # the plan only: nothing is created, loaded or written
        done_names = {r.study.name for r in done}
        return [
            batch.StudyResult(s, batch.expected_outputs(s, out, study_options), skipped=s.name in done_names,
                              planned="skip: done before" if s.name in done_names
                              else f"run again: {', '.join(changed[s.name])}" if s.name in changed
                              else "cannot run: " + s.problem if s.problem else "run")
            for s in mine
        ]  # fmt: skip
    created = batch.prepare_out_dir(out, mine, study_options.html)
    try:
        batch.clean_stale_temps(out, mine)
        if on_note is not None and n_parts > 1:
            how = ", from the Slurm job array" if from_slurm else ""
            on_note(f"part {part} of {n_parts} (0-based{how}): {len(mine)} of {len(studies)} studies")
        if on_note is not None and done:
            on_note(f"{len(done)} of {len(mine)} studies done before, skipped (--overwrite recomputes them)")
        if on_note is not None and changed:
            reasons = sorted({r for rs in changed.values() for r in rs})
            on_note(f"{len(changed)} recomputed: {', '.join(reasons)}")
        if not todo:
            batch.refresh_summary(out, study_options.html)
            return done
        if predictor is None:
            predictor = load_predictor(weights, threads, **predict_opts)
        if on_start is not None:
            on_start(len(todo), len(done))
        if on_plan is not None:
            on_plan({s.name: batch.expected_frames(s) for s in todo})
        try:
            return done + batch.run_predict(todo, predictor, out, study_options, on_frame, on_result)
        except batch.BatchInterrupted as exc:
            raise batch.BatchInterrupted(exc.done + len(done), len(mine)) from None
    finally:
        _remove_if_empty(out, created)


def evaluate(
    pred: PathLike,
    ref: PathLike,
    out_dir: PathLike | None = None,
    *,
    labels: str | None = None,
    ref_labels: str = "acdc",
    pred_suffixes: Sequence[str] | None = None,
    ref_suffixes: Sequence[str] | None = None,
    pairs: PathLike | None = None,
    compare: PathLike | None = None,
    plots: bool = False,
    myo_density_g_ml: float = 1.05,
    regional: bool = True,
    progress: Callable[[int, int], Any] | None = None,
    on_note: Callable[[str], Any] | None = None,
) -> Evaluation:
    """Score predicted masks against references as ``cardioseg evaluate`` does: Dice, Jaccard,
    HD, HD95, ASSD, MSD per structure and phase, apical/mid/basal Dice, per-group summaries,
    clinical agreement (EF, volumes, mass) and, with ``compare``, paired Wilcoxon tests.

    ``labels``/``ref_labels``: label presets (``acdc``, ``mnms``, ``ukbb``); ``labels`` None:
    the label map in cardioseg's reports beside the predictions, else ACDC; the references
    are ACDC unless ``ref_labels`` says otherwise (they never follow ``labels``). Writes
    ``metrics.csv``, ``summary.json``, ``clinical.csv``, ``compare.csv`` (and ``plots/``) into
    ``out_dir`` when given. Failed cases are in ``Evaluation.errors``, not raised.
    """
    from cardioseg.evaluation import PRED_SUFFIXES, REF_SUFFIXES, run_evaluation
    from cardioseg.labels import get_label_map

    return run_evaluation(
        Path(pred), Path(ref), Path(out_dir) if out_dir is not None else None,
        pred_labels=get_label_map(labels) if labels is not None else _labels_of_reports(Path(pred), on_note),
        ref_labels=get_label_map(ref_labels),
        pred_suffixes=tuple(pred_suffixes or PRED_SUFFIXES), ref_suffixes=tuple(ref_suffixes or REF_SUFFIXES),
        pairs=_path(pairs), compare=_path(compare), plots=plots, myo_density_g_ml=myo_density_g_ml,
        regional=regional, progress=progress, on_note=on_note,
    )  # fmt: skip


def measure(
    inputs: PathLike | Sequence[PathLike],
    out_dir: PathLike,
    *,
    ed: PathLike | None = None,
    es: PathLike | None = None,
    study: str | None = None,
    labels: str | None = None,
    myo_density_g_ml: float = 1.05,
    ed_frame: int | None = None,
    es_frame: int | None = None,
    height_cm: float | None = None,
    weight_kg: float | None = None,
    strict: bool = False,
    overlay: bool = False,
    html: bool = False,
    command: str | None = None,
    on_result: Callable[[StudyResult], Any] | None = None,
    on_note: Callable[[str], Any] | None = None,
) -> list[StudyResult]:
    """The clinical report of existing label masks, as ``cardioseg measure`` does: the same
    measuring function, report (``<study>_report.json``) and ``summary.csv`` as :func:`predict`,
    without a network (torch is not imported).

    ``inputs``: mask files (3D, or 4D for a cine), ACDC patient folders (the masks of the
    frames their ``Info.cfg`` names), ``predict`` output folders (one study per report) or
    folders of masks; ``ed``/``es``: one ED/ES pair of 3D masks. ``labels``: the masks'
    label preset (``acdc``, ``mnms``, ``ukbb``; None: the label map cardioseg's reports beside
    them record, else ACDC). ``overlay``: a bullseye PNG of the regional wall thickness per
    study (needs matplotlib); ``html``: also ``report.html``, one page over the folder's reports;
    ``command``: the command line recorded in the reports' provenance.
    Failed studies are in the results (``error``), not raised.
    """
    from cardioseg.batch import StudyOptions
    from cardioseg.batch.masks import MeasureOptions, plan_mask_studies, run_measure
    from cardioseg.labels import get_label_map

    if myo_density_g_ml <= 0:
        raise _config_error(f"--myo-density must be positive, got {myo_density_g_ml}")
    paths = [Path(inputs)] if isinstance(inputs, (str, os.PathLike)) else [Path(p) for p in inputs]
    if overlay:
        from cardioseg.plots import require_matplotlib

        require_matplotlib("--overlay")
    first = paths[0] if paths else _path(ed)
    label_map = get_label_map(labels) if labels is not None else (
        _labels_of_reports(first, on_note) if first is not None and first.exists() else get_label_map("acdc"))  # fmt: skip
    studies = plan_mask_studies(paths, _path(ed), _path(es), study)
    options = MeasureOptions(label_map, StudyOptions(
        myo_density_g_ml=myo_density_g_ml, ed_frame=ed_frame, es_frame=es_frame, height_cm=height_cm,
        weight_kg=weight_kg, strict=strict, overlay=overlay, html=html, command=command))  # fmt: skip
    return run_measure(studies, Path(out_dir), options, on_result=on_result)


def _labels_of_reports(pred: Path, on_note: Callable[[str], Any] | None) -> LabelMap:
    """The label map cardioseg's reports beside the predictions record (when they all agree),
    else ACDC's."""
    import json

    from cardioseg.labels import ACDC, PRESETS, label_map_from_dict

    folder = pred if pred.is_dir() else pred.parent
    maps = set()
    for report in sorted(folder.glob("*_report.json"))[:1000]:
        try:
            found = json.loads(report.read_text()).get("label_map")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(found, dict):
            maps.add(tuple(sorted((str(k), int(v)) for k, v in found.items())))
    if len(maps) != 1:
        return ACDC
    try:
        lm = label_map_from_dict(dict(maps.pop()))
    except (KeyError, ValueError):
        return ACDC
    named = next((p for p in PRESETS.values() if p.as_dict() == lm.as_dict()), None)
    if named is not None and named is not ACDC and on_note is not None:
        on_note(f"predictions read with the {named.name} label map their cardioseg reports record")
    return named or lm


def _path(p: PathLike | None) -> Path | None:
    return None if p is None else Path(p)


def _config_error(message: str) -> Exception:
    from cardioseg.errors import ConfigError

    return ConfigError(message)


def _pick(options: dict[str, Any], cls: type, caller: str, also: type | None = None) -> dict[str, Any]:
    """The entries of ``options`` that are fields of the dataclass ``cls``; an option that is a
    field of neither ``cls`` nor ``also`` is a usage error naming the valid ones."""
    mine = {f.name for f in fields(cls)}
    known = mine | ({f.name for f in fields(also)} if also is not None else set())
    unknown = sorted(set(options) - known)
    if unknown:
        raise _config_error(f"{caller}() got unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    return {k: v for k, v in options.items() if k in mine}


def _weights_sha256(predictor: Any, weights: WeightsSpec | Sequence[WeightsSpec]) -> list[str]:
    """The file sha256 of every member of the weights, without loading them (a registered
    name: its registry entry; a file: hashed; a predictor or loaded weights: what they say)."""
    from cardioseg.weights import LoadedWeights, resolve, sha256_file

    if predictor is not None:
        report = predictor.weights_report
        return [m["sha256"] for m in report.get("members", [report])]
    specs: list[Any] = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    out = []
    for spec in specs or [None]:
        if isinstance(spec, LoadedWeights):
            out.append(spec.file_sha256)
            continue
        entry, expected = resolve(spec)
        out.append(expected if expected is not None else sha256_file(Path(str(entry))))
    return out


def _remove_if_empty(folder: Path, created: bool) -> None:
    """Remove an output folder this run created if nothing was written into it."""
    if created and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
