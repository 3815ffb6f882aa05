"""What the command line shows: one-line notes and errors, progress bars, result tables.

Rendering only: every number shown comes from the engine's results (:mod:`cardioseg.api`).
rich is imported when something is drawn, so ``cardioseg --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from cardioseg.batch import StudyResult
    from cardioseg.evaluation import Evaluation

Tick = Callable[..., None]
"""``tick()`` advances a bar by one; ``tick(done, total)`` sets its position and length."""


def note(message: str) -> None:
    typer.echo(f"cardioseg: note: {message}", err=True)


def warning(message: str) -> None:
    typer.echo(f"cardioseg: warning: {message}", err=True)


def error(message: str) -> None:
    typer.echo(f"cardioseg: error: {message}", err=True)


@contextlib.contextmanager
def progress_bar(quiet: bool, description: str, total: int | None = None) -> Iterator[Tick]:
    """A transient bar on stderr (only on a terminal, never with ``quiet``)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), disable=quiet or not sys.stderr.isatty(), transient=True,
    ) as p:  # fmt: skip
        task = p.add_task(description, total=total)

        def tick(done: int | None = None, total: int | None = None) -> None:
            if done is None:
                p.advance(task)
            else:
                p.update(task, completed=done, total=total)

        yield tick


@contextlib.contextmanager
def study_progress(
    quiet: bool,
) -> Iterator[tuple[Callable[[Any, int], None], Callable[[Any], None], Callable[[int, int], None], Callable[[dict[str, int]], None]]]:
    """The bar of ``cardioseg predict``: yields (on_frame(study, t), on_result(result),
    on_start(n_todo, n_skipped), on_plan({study: frames})); with the plan, the bar and its
    ETA count frames (a 30-frame cine weighs 15 pairs), else studies."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    show = not quiet and sys.stderr.isatty()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not show, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("segmenting", total=None, note="")
        expected: dict[str, int] = {}  # frames per study (on_plan): the bar and its ETA count frames
        finished = [0]  # frames of the finished studies

        def on_frame(study: Any, t: int) -> None:
            within = min(t + 1, expected.get(study.name, 1))
            bar.update(task, description=f"{study.name} frame {t}", completed=finished[0] + within if expected else None)

        def on_start(todo: int, skipped: int) -> None:
            bar.update(task, total=todo, note=f"({skipped} skipped)" if skipped else "")

        def on_plan(frames: dict[str, int]) -> None:
            expected.update(frames)
            bar.update(task, total=sum(frames.values()), completed=0)

        def on_result(result: Any) -> None:
            if expected:
                finished[0] += expected.get(result.study.name, 1)
                bar.update(task, completed=finished[0])
            else:
                bar.advance(task)

        yield on_frame, on_result, on_start, on_plan


def print_plan(results: list[StudyResult], out: Path) -> None:
    """``predict --dry-run``: one line per study (name, kind, inputs -> outputs, what a run does)."""
    for r in results:
        inputs = ", ".join(str(p) for p in r.study.paths)
        outputs = ", ".join(p.name for p in r.outputs)
        typer.echo(f"{r.study.name} ({r.study.kind}): {inputs} -> {out}/{{{outputs}}}  [{r.planned}]")
    counts: dict[str, int] = {}
    for r in results:
        key = (r.planned or "run").split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    typer.echo(f"plan: {len(results)} stud{'y' if len(results) == 1 else 'ies'}: " + ", ".join(f"{n} {k}" for k, n in counts.items()) + " (--dry-run: nothing written)")


TABLE_ROWS = 40
"""Longer batches get the first rows of the table and a pointer to summary.csv."""


QC_COLUMNS = {"lv_ef": "lv_ef_pct", "rv_ef": "rv_ef_pct", "lv_mass": "lv_mass_g", "myo": "lv_mass_g",
              "lv_edv": "lv_edv_ml", "lv_esv": "lv_esv_ml", "rv_edv": "rv_edv_ml"}  # fmt: skip
"""QC codes (by prefix) -> the table column whose value they flag (marked ``!``)."""


def _flagged_columns(codes: list[str]) -> set[str]:
    return {col for code in codes for prefix, col in QC_COLUMNS.items() if code.startswith(prefix)}


def _frame_values(rep: dict[str, Any]) -> dict[str, float | None]:
    """A single 3D frame: its volumes in the EDV columns and its myocardial mass."""
    frames = rep.get("frames") or [{}]
    f = frames[0]
    myo = f.get("myo_ml")
    return {"lv_edv_ml": f.get("lv_ml"), "rv_edv_ml": f.get("rv_ml"),
            "lv_mass_g": rep.get("lv_mass_g") if rep.get("lv_mass_g") is not None
            else (myo * rep.get("myo_density_g_ml", 1.05) if myo is not None else None)}  # fmt: skip


def print_predict_results(results: list[StudyResult], out: Path, command: str = "predict") -> None:
    """The table of a run: one row per study; QC codes listed under it (not squeezed into a
    column), values a QC flag concerns marked ``!``, a single frame's volumes and mass shown."""
    from rich.console import Console
    from rich.table import Table

    if not results:
        return
    more = len(results) - TABLE_ROWS if len(results) > TABLE_ROWS else 0
    results = results[:TABLE_ROWS] if more else results
    from rich import box

    table = Table(title=f"cardioseg {command} -> {out}", show_lines=False, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  caption=f"... and {more} more studies: see {out / 'summary.csv'}" if more else None)  # fmt: skip
    cols = [("study", "study"), ("ED/ES", None), ("LV EDV\nmL", "lv_edv_ml"), ("LV ESV\nmL", "lv_esv_ml"),
            ("LV EF\n%", "lv_ef_pct"), ("RV EDV\nmL", "rv_edv_ml"), ("RV EF\n%", "rv_ef_pct"),
            ("LV mass\ng", "lv_mass_g"), ("QC\nflags", None)]  # fmt: skip
    for title, _ in cols:
        if title == "study":
            table.add_column(title, justify="left", min_width=10, overflow="fold")
        else:
            table.add_column(title, justify="right", no_wrap=True)

    def fmt(v: object) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:.1f}" if isinstance(v, float) else str(v))

    legend: list[str] = []
    notes: list[str] = []
    for r in results:
        rep = r.report or {}
        codes = list(dict.fromkeys(rep.get("qc_flags", [])))
        flagged = _flagged_columns(codes)
        single = rep.get("kind") == "frame"
        values = {**rep, **_frame_values(rep)} if single else rep
        row = []
        for title, key in cols:
            if title == "ED/ES":
                row.append("frame" if single else "-" if rep.get("ed_frame") is None else f"{rep['ed_frame']}/{rep['es_frame']}")
            elif key is None:  # the QC column
                row.append("ok" if not codes else f"[bold red]{len(codes)}[/]")
            else:
                text = fmt(values.get(key or ""))
                row.append(f"[bold red]{text}![/]" if key in flagged and text != "-" else text)
        table.add_row(*row)
        if codes:
            notes.append(f"  {rep.get('study', r.study.name)}: {', '.join(codes)}")
        if single and "frame" not in legend:
            legend.append("frame")
    console = Console()
    console.print(table)
    if notes:
        console.print("QC flags (a value they concern is marked !; details in each report):", highlight=False)
        for line in notes:
            console.print(line, highlight=False)
    if legend:
        console.print("frame: a single 3D frame, its volumes in the EDV columns (no ED/ES, no EF).", highlight=False)


def print_evaluation(ev: Evaluation, out: Path) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from cardioseg.evaluation import MIN_N_CORRELATION, MIN_N_WILCOXON

    starred = False

    def mean(d: dict, digits: int = 2) -> str:
        nonlocal starred
        if not d or d["n"] == 0:
            return "-" if not d or not d["n_inf"] else "inf"
        starred = starred or bool(d.get("n_inf"))
        return f"{d['mean']:.{digits}f}" + ("*" if d.get("n_inf") else "")

    console = Console()
    summary = ev.summary
    notes: list[str] = []
    rows = []
    for phase, labels in summary["by_phase"].items():
        for label, m in labels.items():
            rows.append((
                phase, label, str(m["dice"]["n"] + m["dice"]["n_nan"]), mean(m["dice"], 3), mean(m["jaccard"], 3),
                mean(m["hd95_mm"]), mean(m["assd_mm"]), mean(m["msd_mm"]), mean(m["hd_mm"]),
            ))  # fmt: skip
    caption = "means over frames; distances in mm; SD, median and more in summary.json"
    if starred:
        caption += "; * some frames miss a structure on one side (distance inf, left out of the mean)"
    table = Table(title=f"cardioseg evaluate -> {out}  ({summary['n_frames']} frames)", box=box.SIMPLE, caption=caption)
    for col in ("phase", "structure", "n", "Dice", "Jaccard", "HD95", "ASSD", "MSD", "HD"):
        table.add_column(col, justify="left" if col in {"phase", "structure"} else "right")
    for row in rows:
        table.add_row(*row)
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
        few = False
        for key, a in summary["clinical"].items():
            shown = a["n"] >= MIN_N_CORRELATION
            few = few or not shown
            limits = (f"{a['loa_low']:+.1f} … {a['loa_high']:+.1f}"
                      if a["loa_low"] is not None and math.isfinite(a["loa_low"]) else "-")  # fmt: skip
            t.add_row(key, str(a["n"]), f"{a['pearson_r']:.3f}" if shown else "-", f"{a['bias']:+.2f}", limits,
                      f"{a['mae']:.2f}")  # fmt: skip
        console.print(t)
        if few:
            notes.append(f"r not shown for fewer than {MIN_N_CORRELATION} studies: too few for a correlation to mean "
                         "much (it is in summary.json)")  # fmt: skip
    if ev.compare:
        name_a, name_b = ev.method_names
        t = Table(title=f"A = {name_a} vs B = {name_b}, paired Wilcoxon signed-rank (all metrics in compare.csv)",
                  box=box.SIMPLE)  # fmt: skip
        for col in ("phase", "structure", "metric", "n", "mean A", "mean B", "p"):
            t.add_column(col, justify="left" if col in {"phase", "structure", "metric"} else "right")
        few = False
        for r in ev.compare:
            if r["metric"] in ("dice", "hd95_mm"):
                shown = r["n_pairs"] >= MIN_N_WILCOXON
                few = few or not shown
                t.add_row(r["phase"], r["label"], r["metric"], str(r["n_pairs"]), f"{r['mean_a']:.3f}",
                          f"{r['mean_b']:.3f}", f"{r['p_value']:.2g}" if shown else "-")  # fmt: skip
        console.print(t)
        if few:
            notes.append(f"p not shown for fewer than {MIN_N_WILCOXON} pairs: a two-sided Wilcoxon p cannot fall "
                         "below 0.05 with so few (it is in compare.csv)")  # fmt: skip
    _print_worst(console, summary.get("worst") or {})
    for line in notes:
        console.print(line, highlight=False)


def _print_worst(console: Any, worst: dict[str, list[dict[str, Any]]]) -> None:
    """The worst cases by Dice and by EF error, under the tables."""
    from rich import box
    from rich.table import Table

    def num(v: object, spec: str) -> str:
        if v is None or math.isnan(float(v)):  # type: ignore[arg-type]
            return "-"
        return format(float(v), spec) if math.isfinite(float(v)) else "inf"  # type: ignore[arg-type]

    if worst.get("dice"):
        t = Table(title="lowest Dice (frame, structure)", box=box.SIMPLE)
        for col in ("case", "phase", "structure", "Dice", "HD"):
            t.add_column(col, justify="left" if col in {"case", "phase", "structure"} else "right")
        for r in worst["dice"]:
            t.add_row(str(r["case"]), str(r["phase"] or "-"), str(r["label"]), num(r["dice"], ".3f"), num(r["hd_mm"], ".1f"))
        console.print(t)
    ef = [(k, title) for k, title in (("lv_ef_pct", "LV EF"), ("rv_ef_pct", "RV EF")) if worst.get(k)]
    if ef:
        t = Table(title="largest EF errors, points (prediction / reference)", box=box.SIMPLE)
        t.add_column("rank", justify="right")
        for _, title in ef:
            t.add_column(f"{title}: study")
            t.add_column("error", justify="right")
        for i in range(max(len(worst[k]) for k, _ in ef)):
            cells = [str(i + 1)]
            for k, _ in ef:
                if i >= len(worst[k]):
                    cells += ["", ""]
                    continue
                e = worst[k][i]
                cells += [str(e["study"]), f"{num(e['diff'], '+.1f')} ({num(e['pred'], '.0f')} / {num(e['ref'], '.0f')})"]
            t.add_row(*cells)
        console.print(t)


class TrainProgress:
    """``cardioseg train``'s callbacks (``cardioseg.train.TrainCallbacks``): log lines on stderr
    and, when ``enabled``, a transient progress bar per epoch (shown while ``bar`` is entered)."""

    def __init__(self, enabled: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not enabled, transient=True,
        )  # fmt: skip
        self.task: TaskID | None = None

    def on_log(self, message: str) -> None:
        typer.echo(message, err=True)

    def on_epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        self.on_epoch_end({})
        self.task = self.bar.add_task(f"epoch {epoch}/{epochs}", total=steps)

    def on_step(self) -> None:
        if self.task is not None:
            self.bar.advance(self.task)

    def on_epoch_end(self, row: dict[str, str]) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
