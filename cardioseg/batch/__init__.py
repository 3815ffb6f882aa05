"""``cardioseg predict`` over many studies: plan, split, resume, run.

* ``studies``: ``Study`` (one unit of work, of a ``StudyKind``), ``StudyOptions``, ``StudyResult``;
* ``planning``: command-line inputs (files, folders, patterns) -> studies, cheap checks only
  (no image decoding), so usage mistakes fail before the model is loaded;
* ``sharding``: one part of a batch (``--num-parts``/``--part-id`` or a Slurm job array);
* ``outputs``: the output file names, resume (a study is finished when all its outputs exist,
  the report written last), stale temp files, ``summary.csv``;
* ``segmenter``: ``Segmenter``, the Protocol a predictor satisfies (``inference.Predictor``, ``Ensemble``);
* ``run``: one study (read -> segment -> measure -> write, all or nothing) and the batch
  (the next study read in a background thread; several studies per forward pass on a GPU).
"""

from __future__ import annotations

from cardioseg.batch.fingerprint import changed_settings, make_fingerprint
from cardioseg.batch.outputs import (
    MASK_SUFFIX,
    OVERLAY_SUFFIX,
    REPORT_SUFFIX,
    SUMMARY_NAME,
    clean_stale_temps,
    expected_outputs,
    finished_report,
    mask_path,
    output_paths,
    overlay_path,
    prepare_out_dir,
    refresh_summary,
    report_path,
    split_finished,
    write_summary,
)
from cardioseg.batch.planning import (
    check_output_name,
    expand_inputs,
    expand_pattern,
    expected_frames,
    folder_contents,
    ignored_note,
    is_pattern,
    plan_studies,
)
from cardioseg.batch.run import pools_studies, read_study, run_predict, run_study
from cardioseg.batch.segmenter import Segmenter
from cardioseg.batch.sharding import resolve_parts, shard, slurm_array
from cardioseg.batch.studies import BatchInterrupted, Study, StudyKind, StudyOptions, StudyResult

__all__ = [
    "MASK_SUFFIX",
    "OVERLAY_SUFFIX",
    "REPORT_SUFFIX",
    "SUMMARY_NAME",
    "BatchInterrupted",
    "Segmenter",
    "Study",
    "StudyKind",
    "StudyOptions",
    "StudyResult",
    "changed_settings",
    "check_output_name",
    "clean_stale_temps",
    "expand_inputs",
    "expand_pattern",
    "expected_frames",
    "expected_outputs",
    "finished_report",
    "folder_contents",
    "ignored_note",
    "is_pattern",
    "make_fingerprint",
    "mask_path",
    "output_paths",
    "overlay_path",
    "plan_studies",
    "pools_studies",
    "prepare_out_dir",
    "read_study",
    "refresh_summary",
    "report_path",
    "resolve_parts",
    "run_predict",
    "run_study",
    "shard",
    "slurm_array",
    "split_finished",
    "write_summary",
]
