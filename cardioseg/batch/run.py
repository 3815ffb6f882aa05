"""Running studies: one readable flow per study, and the batch scheduler around it.

Per study (``run_study``): read -> to model space -> infer -> back to native space -> clean up
(inside the ``Segmenter``) -> measure (``batch.measure``) -> report (``study_report``) ->
write, all or nothing, the report last (``write_study``).

A batch (``run_predict``) reads the next study in a background thread while the network works
on the current one; with ``pools_studies`` (a GPU, by default) several studies' slices share
forward passes. A failing study is recorded as its result and the batch goes on.
"""

from __future__ import annotations

import os
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cardioseg._version import __version__
from cardioseg.batch.measure import Measurements, check_frame_indices, ed_es_frames, measure_study
from cardioseg.batch.outputs import bullseye_path, dicom_seg_path, output_paths, overlay_path, refresh_summary
from cardioseg.batch.segmenter import Segmenter
from cardioseg.batch.studies import BatchInterrupted, Study, StudyKind, StudyOptions, StudyResult
from cardioseg.errors import DEBUG_HINT, CardiosegError, ConfigError, UnsupportedInputError
from cardioseg.io import Volume, read_volume, write_mask
from cardioseg.report import build_report, provenance, write_report

if TYPE_CHECKING:
    from cardioseg.labels import LabelMap
    from cardioseg.stages import Localisation

ProgressFn = Callable[[Study, int], Any]
"""``progress(study, frame)``: called after each frame of a study is segmented."""


# ---------------------------------------------------------------------------- one study


def read_study(study: Study, options: StudyOptions) -> list[Volume]:
    """Read and check the images of ``study`` (the I/O-bound part that runs ahead in a thread)."""
    if study.problem is not None:
        raise UnsupportedInputError(study.problem)
    volumes = [read_volume(p, options.max_voxels, options.series_uid) for p in study.paths]
    if study.kind is StudyKind.PAIR:
        check_pair(volumes, ("--ed", "--es"), "is a 4D cine; give one 3D frame (or pass the cine alone)", "frames")
    if study.kind is not StudyKind.PAIR and volumes[0].is_cine:  # checked from the header, before any inference
        check_frame_indices(options.ed_frame, options.es_frame, volumes[0].n_frames)
    return volumes


def check_pair(volumes: list[Volume], roles: tuple[str, str], if_4d: str, what: str) -> None:
    """ConfigError for an ED/ES pair with a 4D member (``{role} "{path}" {if_4d}``) or of two shapes."""
    for role, v in zip(roles, volumes):
        if v.is_cine:
            raise ConfigError(f'{role} "{v.path}" {if_4d}')
    if volumes[0].data.shape != volumes[1].data.shape:
        raise ConfigError(f"ED and ES {what} differ in shape {volumes[0].data.shape} vs {volumes[1].data.shape}")


def study_report(
    study: Study,
    volumes: list[Volume],
    mask_paths: list[Path],
    m: Measurements,
    predictor: Segmenter,
    options: StudyOptions,
    runtime_s: float,
    localisation: Localisation | None = None,
    agreement: list[float] | None = None,
    frame_crops: list[int] | None = None,
    confidence: list[float] | None = None,
    confidence_by_structure: list[dict[str, float]] | None = None,
) -> dict[str, Any]:
    """The JSON report of one measured study (see ``cardioseg.report.build_report``)."""
    return build_report(
        study=study.name,
        inputs=[str(p) for p in study.paths],
        masks=[p.name for p in mask_paths],
        kind=study.kind.value,
        frame_volumes=m.per_frame,
        ed_frame=m.ed_index,
        es_frame=m.es_index,
        measures=m.measures,
        qc_flags=[f.code for f in m.flags],
        qc=[f.as_dict() for f in m.flags],
        label_map=predictor.label_map.as_dict(),
        myo_density_g_ml=options.myo_density_g_ml,
        weights=predictor.weights_report,
        device=predictor.device,
        precision=predictor.precision,
        runtime_s=runtime_s,
        image={
            "shape": [list(v.data.shape) for v in volumes],
            "spacing_mm": [list(v.spacing_mm) for v in volumes],
        },
        subject={"height_cm": m.height_cm, "weight_kg": m.weight_kg, "group": study.group},
        warnings=[w for v in volumes for w in v.meta.warnings] + m.warnings,
        segmentation=segmentation_report(
            predictor, localisation, agreement, frame_crops, confidence, confidence_by_structure),
        fingerprint=options.fingerprint,
        extra=m.regional,
        provenance=provenance(volumes, study.kind.value, m.ed_index, m.es_index, options.command),
    )


def segmentation_report(
    predictor: Segmenter,
    localisation: Localisation | None,
    agreement: list[float] | None = None,
    frame_crops: list[int] | None = None,
    confidence: list[float] | None = None,
    confidence_by_structure: list[dict[str, float]] | None = None,
) -> dict[str, Any]:
    """How the masks were made: the crop (0: the full field), the frames segmented again on the
    whole grid because the crop cut the heart (``crop_grown_frames``) and on the full field because
    the crop around stage 1's centre held no heart (``crop_missed_frames``), test-time rotations (on
    which frames: ``tta_frames``, "key" for a cine's ED and ES only) and how much they agreed per
    frame, one pass's confidence per frame (``confidence``, its least certain structure's) and of each
    structure (``confidence_by_structure``), the clean-up, stage 1's finding."""
    o = predictor.options
    rotated = ("key" if key_frame_rotations(predictor) else "all") if predictor.tta else None
    out: dict[str, Any] = {
        "crop_px": predictor.crop_px, "tta": predictor.tta, "tta_frames": rotated,
        "postprocess": o.clean_up if o.postprocess else "none",
        "localisation": localisation.as_dict() if localisation is not None else None,
    }  # fmt: skip
    if predictor.crop_px > 0 and frame_crops is not None:
        out["crop_grown_frames"] = [t for t, c in enumerate(frame_crops) if c > predictor.crop_px]
        out["crop_missed_frames"] = crop_missed_frames(localisation, frame_crops)
    if agreement is not None:  # NaN (null in the file) for the frames a cine did not rotate
        out["tta_agreement"] = [round(a, 4) for a in agreement]
    if confidence is not None:
        out["confidence"] = [round(c, 4) for c in confidence]
        out["confidence_min"] = predictor.confidence_min
    if confidence_by_structure is not None:
        out["confidence_by_structure"] = [{k: round(v, 4) for k, v in c.items()} for c in confidence_by_structure]
        if predictor.confidence_min_by_structure:
            out["confidence_min_by_structure"] = dict(predictor.confidence_min_by_structure)
    return out


def crop_missed_frames(localisation: Localisation | None, frame_crops: list[int] | None) -> list[int]:
    """The frames segmented on the full field although stage 1 found a heart: the crop around its
    centre held none (``Predictor._grow_if_cut``)."""
    if localisation is None or not localisation.found or frame_crops is None:
        return []
    return [t for t, c in enumerate(frame_crops) if c == 0]


def write_study(
    study: Study,
    volumes: list[Volume],
    masks: list[np.ndarray],
    m: Measurements,
    report: dict[str, Any],
    out_dir: Path,
    options: StudyOptions,
    label_map: LabelMap,
) -> list[Path]:
    """Write the masks, the overlay (``options.overlay``) and the report, each atomically and
    the report last; all or nothing: on any exception the files already written are removed.
    Returns the paths written, in order."""
    *mask_paths, report_file = output_paths(study, out_dir)[: len(volumes) + 1]
    written: list[Path] = []
    try:  # the report goes last: a study is finished (for --skip-existing) once it exists
        report_file.unlink(missing_ok=True)  # an old report must not vouch for new masks if killed
        for mask, vol, path in zip(masks, volumes, mask_paths):
            write_mask(mask, vol, path)
            written.append(path)
        if options.overlay:
            from cardioseg.overlay import write_study_overlay

            png = overlay_path(out_dir, study.name)
            write_study_overlay(study.kind, volumes, masks, label_map, png,
                                per_frame=m.per_frame if study.kind is StudyKind.CINE else None,
                                ed_index=m.ed_index, es_index=m.es_index, title=study.name)  # fmt: skip
            written.append(png)
            written += write_bullseye_of(report, out_dir, study.name)
        if options.dicom_seg and volumes[0].meta.source == "dicom" and study.kind is not StudyKind.PAIR:
            from cardioseg.io.dicom_seg import write_dicom_seg

            frames = [0] if m.ed_index is None or m.es_index is None else sorted({m.ed_index, m.es_index})
            written.append(write_dicom_seg(volumes[0], masks[0], frames, label_map, dicom_seg_path(out_dir, study.name),
                                           software_version=__version__))  # fmt: skip
        write_report(report, report_file)
        written.append(report_file)
    except BaseException:
        for path in written:  # all or nothing for a study
            path.unlink(missing_ok=True)
        raise
    return written


def key_frame_rotations(predictor: Segmenter) -> bool:
    """Whether a cine gets its test-time rotations on the ED and ES frames only: with rotations
    on, for one model (``Predictor``; an ensemble's members rotate on their own) and unless
    ``PredictOptions.tta_frames`` is "all"."""
    from cardioseg.inference import Predictor

    return isinstance(predictor, Predictor) and predictor.tta and predictor.options.tta_frames == "key"


def predict_cine_key_frames(
    study: Study, cine: Volume, predictor: Segmenter, options: StudyOptions, localisation: Localisation | None,
    on_frame: Callable[[int], Any] | None,
    stats: dict[str, Any] | None = None,
) -> tuple[np.ndarray, list[float], tuple[int, int]]:
    """A cine's labels with the test-time rotations spent where the numbers come from: every
    frame once without them (the volume curve that finds ED and ES), then the ED and ES frames
    again with them, replacing those frames. A 30-frame cine costs 38 forward passes instead of
    120; its EDV, ESV, EF and mass come from the same rotated masks as with every frame rotated.
    Returns the labels, the rotations' agreement per frame (NaN where not rotated) and the
    (ED, ES) frames found on the first pass (given ones when ``--ed-frame``/``--es-frame`` or
    Info.cfg name them); ``stats["crop_px"]`` gets the grid of each frame (see ``Predictor.predict``)."""
    from cardioseg.clinical import frame_volumes
    from cardioseg.inference import Predictor

    assert isinstance(predictor, Predictor)  # key_frame_rotations(predictor)
    first: dict[str, Any] = {}
    predictor.tta = False
    try:
        mask = predictor.predict(cine.data, cine.affine, on_frame=on_frame, localisation=localisation, stats=first)
    finally:
        predictor.tta = True
    per_frame = [frame_volumes(mask[..., t], cine.voxel_volume_ml, predictor.label_map) for t in range(cine.n_frames)]
    ed, es = ed_es_frames(study, per_frame, options)
    keys = sorted({ed, es})
    rotated: dict[str, Any] = {}
    mask[..., keys] = predictor.predict(cine.data[..., keys], cine.affine, localisation=localisation, stats=rotated)
    agreement = [float("nan")] * cine.n_frames
    for t, a in zip(keys, rotated.get("tta_agreement") or []):
        agreement[t] = a
    for key in ("confidence", "confidence_by_structure"):  # the unrotated pass: the same for the key frames
        if stats is not None and key in first:
            stats[key] = list(first[key])
    if stats is not None and "crop_px" in first:
        crops = list(first["crop_px"])
        for t, c in zip(keys, rotated.get("crop_px") or []):
            crops[t] = c
        stats["crop_px"] = crops
    return mask, agreement, (ed, es)


def write_bullseye_of(report: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    """``<study>_bullseye.png`` from the report's AHA wall thickness (ED) and thickening, when
    any segment was measured; ``[]`` otherwise."""
    ed = report.get("aha_wall_thickness_ed_mm") or {}
    if not any(v is not None for v in ed.values()):
        return []
    from cardioseg.bullseye import write_bullseye

    title = f"{name}: LV wall thickness" + (f", max {report['lv_max_wall_thickness_mm']:.1f} mm"
                                             if report.get("lv_max_wall_thickness_mm") is not None else "")  # fmt: skip
    return [write_bullseye(ed, report.get("aha_thickening_pct"), bullseye_path(out_dir, name), title)]


def run_study(
    study: Study,
    predictor: Segmenter,
    out_dir: Path,
    options: StudyOptions,
    on_frame: Callable[[int], Any] | None = None,
    volumes: list[Volume] | None = None,
    masks: list[np.ndarray] | None = None,
    localisation: Localisation | None = None,
    frame_stats: dict[str, Any] | None = None,
) -> StudyResult:
    """Segment and measure one study and write its masks, overlay and report (all or nothing,
    the report last). ``volumes``: the study already read by ``read_study`` (else read here);
    ``masks``: their labels, already predicted (with other studies' slices, on a GPU), with
    the ``localisation`` they were predicted with and their ``frame_stats`` (see
    ``Predictor.collecting``). The heart is located once per study, on its
    first volume (a pair's ED frame), and every frame is cropped around the same point."""
    t0 = time.perf_counter()
    if volumes is None:
        volumes = read_study(study, options)
    if study.kind is StudyKind.SINGLE:
        study = replace(study, kind=StudyKind.CINE if volumes[0].is_cine else StudyKind.FRAME)
    # to model space -> infer -> back to native -> clean up  (inside the Segmenter)
    stats: dict[str, Any] = dict(frame_stats or {})
    detected: tuple[int, int] | None = None
    if masks is None:
        localisation = predictor.localise(volumes[0].data, volumes[0].affine)
        if study.kind is StudyKind.CINE and key_frame_rotations(predictor):
            mask, agreement_4d, detected = predict_cine_key_frames(
                study, volumes[0], predictor, options, localisation, on_frame, stats)  # fmt: skip
            masks, stats["tta_agreement"] = [mask], agreement_4d
        else:
            masks = [predictor.predict(v.data, v.affine, on_frame=on_frame, localisation=localisation, stats=stats)
                     for v in volumes]  # fmt: skip
    agreement = stats.get("tta_agreement") or None
    confidence = stats.get("confidence") or None
    by_structure = stats.get("confidence_by_structure") or None
    m = measure_study(
        study, volumes, masks, predictor.label_map, options, localisation, agreement, detected, confidence,
        predictor.confidence_min, by_structure, predictor.confidence_min_by_structure,
        crop_missed_frames(localisation, stats.get("crop_px")))  # fmt: skip
    if options.dicom_seg and (volumes[0].meta.source != "dicom" or study.kind is StudyKind.PAIR):
        m.warnings.append("no DICOM-SEG written (--dicom-seg): the input is not one DICOM series")
    mask_paths = output_paths(study, out_dir)[: len(volumes)]
    seconds = round(time.perf_counter() - t0, 3)
    report = study_report(
        study, volumes, mask_paths, m, predictor, options, seconds, localisation, agreement, stats.get("crop_px"),
        confidence, by_structure)  # fmt: skip
    written = write_study(study, volumes, masks, m, report, out_dir, options, predictor.label_map)
    return StudyResult(study, written, report)


def unexpected_error(exc: BaseException) -> str:
    """One line for an exception nobody foresaw (a bug): ``unexpected error: ValueError:
    <message> (rerun with --debug for the traceback)``."""
    detail = " ".join(str(exc).split())
    return f"unexpected error: {type(exc).__name__}" + (f": {detail}" if detail else "") + DEBUG_HINT


def _run_one(
    study: Study,
    predictor: Segmenter,
    out_dir: Path,
    options: StudyOptions,
    on_frame: Callable[[int], Any] | None,
    volumes: Future[list[Volume]],
    masks: list[np.ndarray] | None = None,
    localisation: Localisation | None = None,
    frame_stats: dict[str, Any] | None = None,
) -> StudyResult:
    """``run_study`` on the images read ahead, with the errors that belong to one study
    (reading included) turned into its result: a study never stops the batch (Ctrl-C does)."""
    try:
        return run_study(study, predictor, out_dir, options, on_frame, volumes.result(), masks, localisation, frame_stats)
    except CardiosegError as exc:
        return StudyResult(study, error=str(exc))
    except MemoryError:
        return StudyResult(study, error="not enough memory for this study (try --max-voxels or a larger machine)")
    except OSError as exc:  # disk full, permission denied, ... while reading or writing
        where = f' "{exc.filename}"' if exc.filename else ""
        return StudyResult(study, error=f"input/output error{where}: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - a reader or model failing in a way nobody foresaw: this study only
        return StudyResult(study, error=unexpected_error(exc), traceback=traceback.format_exc())


# ---------------------------------------------------------------------------- the batch


class _ReadAhead:
    """Studies read in background threads, in order, at most ``depth`` of them in flight."""

    def __init__(self, studies: list[Study], options: StudyOptions, readers: int) -> None:
        self.studies, self.options = studies, options
        self.pool = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="cardioseg-read")
        self.ahead: deque[Future[list[Volume]]] = deque()
        self.queued = 0

    def next(self, depth: int) -> Future[list[Volume]]:
        """The read of the next study, after queueing reads up to ``depth`` studies ahead."""
        while self.queued < len(self.studies) and len(self.ahead) < depth:
            self.ahead.append(self.pool.submit(read_study, self.studies[self.queued], self.options))
            self.queued += 1
        return self.ahead.popleft()

    def close(self) -> None:
        """Wait for the running reads; drop the queued ones."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def _frame_reporter(progress: ProgressFn | None, study: Study) -> Callable[[int], Any] | None:
    if progress is None:
        return None
    return lambda t: progress(study, t)


def run_predict(
    studies: list[Study],
    predictor: Segmenter,
    out_dir: Path,
    options: StudyOptions,
    progress: ProgressFn | None = None,
    on_result: Callable[[StudyResult], Any] | None = None,
) -> list[StudyResult]:
    """Run every study; a failing study is recorded and the others go on. Rewrites summary.csv.

    While the network works on study k, study k+1 is read in a background thread (one slot:
    at most two studies' images in memory); a read error belongs to its own study.
    ``progress(study, frame)`` reports frames, ``on_result(result)`` each finished study.

    When ``pools_studies(predictor)`` (a GPU, by default), consecutive studies are gathered
    until they fill a forward pass (``predictor.batch_size`` slices) and segmented together,
    then measured and written one by one; reading runs ahead by as many studies.
    """
    results: list[StudyResult] = []
    pooled = pools_studies(predictor)
    readers = min(4, os.cpu_count() or 1) if pooled else 1

    def finish(result: StudyResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    reads = _ReadAhead(studies, options, readers)
    interrupted = False
    try:
        k = 0
        while k < len(studies):
            if not pooled:
                study = studies[k]
                current = reads.next(2)  # this study and the next
                finish(_run_one(study, predictor, out_dir, options, _frame_reporter(progress, study), current))
                del current  # free this study's images before the next one is read
                k += 1
                continue
            group: list[tuple[Study, Future[list[Volume]]]] = []
            slices = 0
            while k < len(studies) and slices < predictor.batch_size:
                group.append((studies[k], reads.next(1 + 2 * readers)))
                k += 1
                if group[-1][1].exception() is None:  # (a study that failed to read takes no room)
                    slices += sum(int(np.prod(v.data.shape[2:])) for v in group[-1][1].result())
            for result in _run_group(group, predictor, out_dir, options, progress):
                finish(result)
            del group
    except KeyboardInterrupt:
        interrupted = True
    finally:
        reads.close()
        refresh_summary(out_dir, options.html)  # also after Ctrl-C: the summary of what is finished
    if interrupted:
        raise BatchInterrupted(sum(1 for r in results if not r.error), len(studies))
    return results


def pools_studies(predictor: Segmenter) -> bool:
    """Whether ``run_predict`` pools several studies per forward pass for this predictor."""
    choice = getattr(getattr(predictor, "options", None), "batch_studies", None)
    if choice is None:
        return str(getattr(predictor, "device", "cpu")).startswith("cuda")
    return bool(choice)


def _run_group(
    group: list[tuple[Study, Future[list[Volume]]]],
    predictor: Segmenter,
    out_dir: Path,
    options: StudyOptions,
    progress: ProgressFn | None,
) -> list[StudyResult]:
    """Segment the frames of several studies together, then measure and write each (in order;
    a study that failed to read gets its error).

    If the pooled prediction fails, every study is segmented alone, so that an error is
    reported by the study that causes it.
    """
    from cardioseg.inference import frames_of
    from cardioseg.stages import crop_centre

    read = [(study, future.result()) for study, future in group if future.exception() is None]
    labels: list[np.ndarray] | None
    located: dict[int, Localisation | None] = {}
    stats: dict[str, Any] = {}
    collecting = getattr(predictor, "collecting", None)  # a Predictor's per-frame statistics
    try:
        frames, centres = [], []
        for study, volumes in read:
            located[id(study)] = loc = predictor.localise(volumes[0].data, volumes[0].affine)
            for v in volumes:
                more = frames_of(v.data, v.affine)
                frames += more
                centres += [crop_centre(loc)] * len(more)
        with collecting(stats) if collecting is not None else nullcontext():
            labels = predictor.predict_many(frames, centres=centres) if frames else []
    except Exception:  # noqa: BLE001 - out of memory, or one study's frames: each study alone finds out which
        labels = None
    results = []
    start = 0
    for study, future in group:
        masks = None
        own: dict[str, Any] = {}
        if labels is not None and future.exception() is None:
            masks = []
            for v in future.result():
                n = v.n_frames if v.is_cine else 1
                part = labels[start : start + n]
                for key, values in stats.items():
                    own.setdefault(key, []).extend(values[start : start + n])
                start += n
                masks.append(np.stack(part, axis=-1) if v.is_cine else part[0])
                if progress is not None:
                    for t in range(n):
                        progress(study, t)
        results.append(_run_one(study, predictor, out_dir, options, None, future, masks, located.get(id(study)), own))
    return results
