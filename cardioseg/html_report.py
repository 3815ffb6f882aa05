"""``report.html``: one self-contained page over every study report in an output folder.

The page is rebuilt from the ``*_report.json`` files in the folder, like ``summary.csv``
(:func:`cardioseg.batch.outputs.write_summary`), so the parts of a job array writing into one
folder add up: whichever part writes last leaves every finished study on the page.

What it shows: the run (dates of the reports, cardioseg version, weights, device), a summary
table (units in the headers, studies with QC flags first and marked, the values a flag concerns
marked ``!``, each code's message on hover; sortable by clicking a heading, a few lines of
inline JavaScript), and per study a section with its QC messages, its overlay PNG (a relative,
lazily loaded ``<img>``, never embedded, so a 500-study page stays small), its volume curve
(inline SVG, LV and RV cavity over the frames, ED/ES marked; cines only) and relative links to
its masks and report. Nothing is loaded from the network: no CDN, no web fonts; the page works
opened from the file system. Everything read from files is HTML-escaped.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cardioseg._version import __version__
from cardioseg.batch.outputs import HTML_NAME, OVERLAY_SUFFIX, SUMMARY_NAME, report_listing
from cardioseg.console import QC_COLUMNS
from cardioseg.errors import CardiosegError
from cardioseg.io import temp_target, write_text_atomic
from cardioseg.report import load_report

__all__ = ["HTML_NAME", "refresh_html_report", "write_html_report"]

LV_COLOUR = "#ff3030"  # the contour colours of cardioseg.overlay (LV cavity red, RV cavity cyan)
RV_COLOUR = "#00b4e6"

#: the summary table: (heading, unit, report key); ``None`` keys are computed
TABLE_COLUMNS: list[tuple[str, str, str | None]] = [
    ("Study", "", "study"), ("ED/ES", "frame", None),
    ("LV EDV", "mL", "lv_edv_ml"), ("LV ESV", "mL", "lv_esv_ml"), ("LV SV", "mL", "lv_sv_ml"), ("LV EF", "%", "lv_ef_pct"),
    ("RV EDV", "mL", "rv_edv_ml"), ("RV ESV", "mL", "rv_esv_ml"), ("RV SV", "mL", "rv_sv_ml"), ("RV EF", "%", "rv_ef_pct"),
    ("LV mass", "g", "lv_mass_g"), ("QC", "flags", None),
]  # fmt: skip

INDEXED = [("BSA", "m²", "bsa_m2"), ("LV EDVi", "mL/m²", "lv_edvi_ml_m2"), ("LV ESVi", "mL/m²", "lv_esvi_ml_m2"),
           ("RV EDVi", "mL/m²", "rv_edvi_ml_m2"), ("RV ESVi", "mL/m²", "rv_esvi_ml_m2"),
           ("LV mass index", "g/m²", "lv_mass_index_g_m2")]  # fmt: skip

STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:1.2em;color:#222}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:0 0 .3em}.meta{color:#555;margin:.1em 0}
table{border-collapse:collapse;margin:.8em 0}th,td{padding:.2em .5em;border-bottom:1px solid #ddd}
th{background:#f3f3f3;cursor:pointer;user-select:none;vertical-align:bottom;text-align:right;white-space:nowrap}
th:first-child,td:first-child,th:last-child{text-align:left}td{text-align:right;font-variant-numeric:tabular-nums}
th small{display:block;font-weight:normal;color:#666}th[aria-sort=ascending]::after{content:" \\25b2"}
th[aria-sort=descending]::after{content:" \\25bc"}tbody tr:hover{background:#f7f7ff}
td:first-child{white-space:nowrap}.scroll{overflow-x:auto}tr.fl td:first-child{border-left:4px solid #c00}tr.fl td:first-child a::before{content:"\\26a0\\fe0e  ";color:#c00}
td.qc{text-align:left;font-size:.85em}td.qc abbr{display:block;color:#c00;text-decoration:underline dotted}
.bad{color:#c00;font-weight:bold}.ok{color:#080}section{border-top:1px solid #ccc;padding:.8em 0}
section.fl h2{color:#a00}ul.qc{margin:.2em 0;padding-left:1.2em}ul.qc li{color:#a00}ul.qc code{color:#222}
.figs{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start;margin:.4em 0}
.figs img{max-width:100%;height:auto;border:1px solid #ddd}svg{font:10px sans-serif;flex:none}
svg .ax{stroke:#999;fill:none}svg .gr{stroke:#eee}svg .ph{stroke:#555;stroke-dasharray:4 3}
a{color:#06c}code{font-size:.9em}
"""

SCRIPT = """
document.querySelectorAll("#summary th").forEach(function (th) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], i = th.cellIndex, num = th.dataset.t === "n";
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    th.parentNode.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r, s) {
      var a = r.cells[i].dataset.v, b = s.cells[i].dataset.v;
      if (a === "" || b === "") return a === b ? r.dataset.i - s.dataset.i : (a === "" ? 1 : -1);
      var c = num ? a - b : a.localeCompare(b, undefined, {numeric: true});
      return c ? dir * c : r.dataset.i - s.dataset.i;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


@dataclass
class _Entry:
    """One readable report of the folder."""

    name: str  # the report's file name
    report: dict[str, Any]
    mtime: float


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _href(name: str) -> str:
    """A relative link to a file beside the page (``./`` so a name with ``:`` is no scheme)."""
    return _esc("./" + quote(name))


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _codes(report: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(str(c) for c in report.get("qc_flags") or []))


def _messages(report: dict[str, Any]) -> dict[str, str]:
    """QC code -> its message(s), from the report's ``qc`` list."""
    out: dict[str, list[str]] = {}
    for item in report.get("qc") or []:
        if isinstance(item, dict) and "code" in item:
            out.setdefault(str(item["code"]), []).append(str(item.get("message", "")))
    return {code: " ".join(m for m in msgs if m) for code, msgs in out.items()}


def _values(report: dict[str, Any]) -> dict[str, float | None]:
    """The table's numbers; a single 3D frame shows its volumes in the EDV columns (as the terminal table)."""
    values = {key: _num(report.get(key)) for _, _, key in TABLE_COLUMNS if key and key != "study"}
    if report.get("kind") == "frame":
        frames = report.get("frames") or [{}]
        first = frames[0] if isinstance(frames[0], dict) else {}
        values["lv_edv_ml"] = _num(first.get("lv_ml"))
        values["rv_edv_ml"] = _num(first.get("rv_ml"))
        myo = _num(first.get("myo_ml"))
        density = _num(report.get("myo_density_g_ml")) or 1.05
        if values["lv_mass_g"] is None and myo is not None:
            values["lv_mass_g"] = myo * density
    return values


def _flagged_keys(codes: list[str]) -> set[str]:
    return {key for code in codes for prefix, key in QC_COLUMNS.items() if code.startswith(prefix)}


def _png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's header, or None when it is not a readable PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def _anchors(studies: list[str]) -> dict[str, str]:
    """A unique, URL-safe ``id`` per study name."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for study in studies:
        base = "s-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", study).strip("-") or "study")
        anchor, k = base, 2
        while anchor in used:
            anchor, k = f"{base}-{k}", k + 1
        used.add(anchor)
        out[study] = anchor
    return out


def _nice_step(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k at or above ``value`` (an axis tick step)."""
    if value <= 0:
        return 1.0
    base = 10 ** math.floor(math.log10(value))
    return next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= value * 0.999)


def volume_curve_svg(report: dict[str, Any]) -> str:
    """Inline SVG of the LV and RV cavity volumes over the frames, ED/ES marked; "" with 2 frames or fewer."""
    frames = [f for f in report.get("frames") or [] if isinstance(f, dict)]
    if len(frames) <= 2:
        return ""
    lv = [_num(f.get("lv_ml")) for f in frames]
    rv = [_num(f.get("rv_ml")) for f in frames]
    known = [v for v in lv + rv if v is not None]
    if not known:
        return ""
    w, h, left, right, top, bottom = 480, 180, 38, 10, 16, 28
    n = len(frames)
    step = _nice_step(max(known) / 5)
    ticks = max(1, math.ceil(max(known) / step - 1e-9))
    y_max = step * ticks

    def x(t: float) -> float:
        return left + (w - left - right) * t / (n - 1)

    def y(v: float) -> float:
        return top + (h - top - bottom) * (1 - v / y_max)

    parts = [f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="LV and RV volume curve">']
    for k in range(ticks + 1):
        v = step * k
        parts.append(f'<line class="gr" x1="{left}" x2="{w - right}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
                     f'<text x="{left - 4}" y="{y(v) + 3:.1f}" text-anchor="end">{v:g}</text>')  # fmt: skip
    every = max(1, math.ceil(n / 12))
    shown = list(range(0, n, every))
    if n - 1 - shown[-1] >= every / 2:  # the last frame too, unless its label would touch the one before
        shown.append(n - 1)
    for t in shown:
        parts.append(f'<text x="{x(t):.1f}" y="{h - bottom + 12}" text-anchor="middle">{t}</text>')
    parts.append(f'<path class="ax" d="M{left} {top}V{h - bottom}H{w - right}"/>'
                 f'<text x="{(left + w - right) / 2:.0f}" y="{h - 3}" text-anchor="middle">frame</text>'
                 f'<text x="2" y="10">mL</text>')  # fmt: skip
    for label, idx in (("ED", report.get("ed_frame")), ("ES", report.get("es_frame"))):
        if isinstance(idx, int) and not isinstance(idx, bool) and 0 <= idx < n:
            anchor = "end" if idx > (n - 1) * 0.85 else "start"
            dx = -3 if anchor == "end" else 3
            parts.append(f'<line class="ph" x1="{x(idx):.1f}" x2="{x(idx):.1f}" y1="{top}" y2="{h - bottom}"/>'
                         f'<text x="{x(idx) + dx:.1f}" y="{top - 4}" text-anchor="{anchor}">{label} {idx}</text>')  # fmt: skip
    for name, values, colour in (("LV", lv, LV_COLOUR), ("RV", rv, RV_COLOUR)):
        runs: list[list[str]] = [[]]
        for t, vol in enumerate(values):
            if vol is None:
                runs.append([])
            else:
                runs[-1].append(f"{x(t):.1f},{y(vol):.1f}")
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}"/>')
            elif run:
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{" ".join(run)}"/>')
        legend_x = w - right - (124 if name == "LV" else 60)
        parts.append(f'<path d="M{legend_x} {h - 6}h12" stroke="{colour}" stroke-width="2"/>'
                     f'<text x="{legend_x + 15}" y="{h - 3}">{name} cavity</text>')
    parts.append("</svg>")
    return "".join(parts)


def _weights_label(weights: object) -> str:
    if not isinstance(weights, dict):
        return "unknown"
    name = str(weights.get("name", "unknown"))
    sha = weights.get("sha256")
    if isinstance(sha, str) and sha:
        return f"{name} (sha256 {sha[:12]})"
    members = weights.get("members")
    if isinstance(members, list):
        shas = [str(m.get("sha256", ""))[:8] for m in members if isinstance(m, dict)]
        return f"{name} ({weights.get('ensemble', 'ensemble')} of {len(shas)}: {', '.join(shas)})"
    return name


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()


def _run_lines(entries: list[_Entry], flagged: int) -> list[str]:
    """The lines under the title: counts, dates, versions, weights, device."""

    def distinct(values: list[str]) -> str:
        seen = list(dict.fromkeys(values))
        return ", ".join(_esc(v) for v in seen) + (" <b class=bad>(mixed)</b>" if len(seen) > 1 else "")

    n = len(entries)
    lines = [f"{n} stud{'y' if n == 1 else 'ies'}, "
             + (f'<b class=bad>{flagged} with QC flags</b>' if flagged else '<span class=ok>none with QC flags</span>')
             + f" · page written {_esc(_when(time.time()))}"]  # fmt: skip
    if entries:
        first, last = min(e.mtime for e in entries), max(e.mtime for e in entries)
        span = _when(first) if last - first < 60 else f"{_when(first)} – {_when(last)}"
        lines[0] += f" · reports written {_esc(span)}"
        versions = [str((e.report.get("versions") or {}).get("cardioseg", "?")) for e in entries]
        page = "" if __version__ in versions else f" (page by cardioseg {_esc(__version__)})"
        devices = [f"{e.report.get('device', '?')} {e.report.get('precision', '')}".strip() for e in entries]
        lines.append(f"cardioseg {distinct(versions)}{page} · weights "
                     f"{distinct([_weights_label(e.report.get('weights')) for e in entries])} · device {distinct(devices)}")  # fmt: skip
    else:
        lines.append(f"cardioseg {_esc(__version__)} · no study report in this folder yet")
    return lines


def _table_row(entry: _Entry, index: int, anchor: str) -> str:
    rep = entry.report
    codes = _codes(rep)
    messages = _messages(rep)
    values = _values(rep)
    flagged = _flagged_keys(codes)
    study = str(rep["study"])
    cells = [f'<td data-v="{_esc(study)}"><a href="#{anchor}">{_esc(study)}</a></td>']
    ed, es = rep.get("ed_frame"), rep.get("es_frame")
    if rep.get("kind") == "frame":
        cells.append('<td data-v="">frame</td>')
    elif isinstance(ed, int) and not isinstance(ed, bool):
        cells.append(f'<td data-v="{ed}">{ed}/{_esc(es if es is not None else "–")}</td>')
    else:
        cells.append('<td data-v="">–</td>')
    for _, _, key in TABLE_COLUMNS[2:-1]:
        assert key is not None
        v = values.get(key)
        shown = _fmt(v)
        if key in flagged and v is not None:
            shown = f'<span class="bad">{shown}!</span>'
        cells.append(f'<td data-v="{"" if v is None else f"{v:.3f}"}">{shown}</td>')
    if codes:
        marks = "".join(f'<abbr title="{_esc(messages.get(c, c))}">{_esc(c)}</abbr>' for c in codes)
        cells.append(f'<td class="qc" data-v="{len(codes)}">{marks}</td>')
    else:
        cells.append('<td class="qc ok" data-v="0">ok</td>')
    return f'<tr data-i="{index}"{" class=fl" if codes else ""}>{"".join(cells)}</tr>'


def _links(out_dir: Path, entry: _Entry) -> str:
    """Relative links to the study's report and masks (a mask not in the folder is named, unlinked)."""
    links = [f'report <a href="{_href(entry.name)}">{_esc(entry.name)}</a>']
    masks = [Path(str(m)).name for m in entry.report.get("masks") or []]
    if masks:
        shown = [f'<a href="{_href(m)}">{_esc(m)}</a>' if (out_dir / m).is_file() else f"{_esc(m)} (missing)"
                 for m in masks]  # fmt: skip
        links.append(f"mask{'s' if len(masks) > 1 else ''} " + ", ".join(shown))
    return " · ".join(links)


def _detail(out_dir: Path, entry: _Entry, anchor: str, present: set[str]) -> str:
    rep = entry.report
    study = str(rep["study"])
    codes = _codes(rep)
    messages = _messages(rep)
    kind = str(rep.get("kind", "?"))
    about = [_esc(kind)]
    ed, es = rep.get("ed_frame"), rep.get("es_frame")
    frames = rep.get("frames") or []
    if kind == "cine":
        about.append(f"{len(frames)} frames")
    if ed is not None and kind != "frame":
        about.append(f"ED frame {_esc(ed)}, ES frame {_esc(es)}")
    group = (rep.get("subject") or {}).get("group") if isinstance(rep.get("subject"), dict) else None
    if group:
        about.append(f"group {_esc(group)}")
    runtime = _num(rep.get("runtime_s"))
    if runtime is not None:
        about.append(f"{runtime:.1f} s")
    out = [f'<section id="{anchor}"{" class=fl" if codes else ""}>',
           f'<h2>{_esc(study)} <small class="meta">{" · ".join(about)}</small></h2>']  # fmt: skip
    if codes:
        items = "".join(f"<li><code>{_esc(c)}</code>: {_esc(messages.get(c, ''))}</li>" for c in codes)
        out.append(f'<ul class="qc">{items}</ul>')
    for warning in rep.get("warnings") or []:
        out.append(f'<p class="meta">warning: {_esc(warning)}</p>')
    indexed = [(label, unit, _num(rep.get(key))) for label, unit, key in INDEXED]
    if any(v is not None for _, _, v in indexed):
        digits = {"BSA": 2}
        out.append('<p class="meta">' + " · ".join(f"{label} {_fmt(v, digits.get(label, 1))} {unit}"
                                                   for label, unit, v in indexed if v is not None) + "</p>")  # fmt: skip
    inputs = ", ".join(_esc(Path(str(p)).name) for p in rep.get("inputs") or [])
    out.append(f'<p class="meta" title="{_esc("; ".join(str(p) for p in rep.get("inputs") or []))}">inputs {inputs}</p>')
    out.append(f"<p>{_links(out_dir, entry)}</p>")
    svg = volume_curve_svg(rep)
    figs = [svg] if svg else []
    png = f"{study}{OVERLAY_SUFFIX}"
    if png in present:
        size = _png_size(out_dir / png)
        dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
        figs.append(f'<a href="{_href(png)}"><img src="{_href(png)}" loading="lazy"{dims} '
                    f'alt="{_esc(f"overlay of {study}")}"></a>')  # fmt: skip
    if figs:
        out.append(f'<div class="figs">{"".join(figs)}</div>')
    out.append('<a href="#top">↑ table</a></section>')
    return "".join(out)


RENDER_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError)
"""What a report with fields of unexpected types raises while drawn: that study is left out, not the page."""


def render_html(out_dir: Path, entries: list[_Entry]) -> str:
    """The page of these reports (flagged studies first, then by study name)."""
    entries = sorted(entries, key=lambda e: (not _codes(e.report), str(e.report["study"])))
    anchors = _anchors([str(e.report["study"]) for e in entries])
    present = set(os.listdir(out_dir))
    shown: list[_Entry] = []
    rows: list[str] = []
    details: list[str] = []
    for entry in entries:
        anchor = anchors[str(entry.report["study"])]
        try:
            row, detail = _table_row(entry, len(rows), anchor), _detail(out_dir, entry, anchor, present)
        except RENDER_ERRORS:
            continue
        shown.append(entry)
        rows.append(row)
        details.append(detail)
    n_flagged = sum(1 for e in shown if _codes(e.report))
    heads = "".join(
        f'<th data-t="{"s" if key == "study" else "n"}" title="sort by {_esc(title)}">{_esc(title)}'
        + (f"<small>{_esc(unit)}</small>" if unit else "<small>&nbsp;</small>") + "</th>"
        for title, unit, key in TABLE_COLUMNS
    )
    notes = ["Click a heading to sort (again to reverse).",
             "Values a QC flag concerns are marked !; hover over a QC code for its message, or see the study below."]
    if any(e.report.get("kind") == "frame" for e in shown):
        notes.append("ED/ES “frame”: a single 3D frame, its volumes in the EDV columns (no ED/ES, no EF).")
    if SUMMARY_NAME in present:
        notes.append(f'All numbers for scripts: <a href="{_href(SUMMARY_NAME)}">{SUMMARY_NAME}</a>.')
    title = f"cardioseg report: {out_dir.resolve().name}"
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{STYLE}</style></head>",
        f'<body id="top"><h1>{_esc(title)}</h1>',
        *(f'<p class="meta">{line}</p>' for line in _run_lines(shown, n_flagged)),
        f'<div class="scroll"><table id="summary"><thead><tr>{heads}</tr></thead><tbody>',
        *rows,
        "</tbody></table></div>",
        f'<p class="meta">{" ".join(notes)}</p>',
        *details,
        f"<script>{SCRIPT}</script>",
        "</body></html>",
        "",
    ])  # fmt: skip


def _read_entries(folder: Path, listing: dict[str, tuple[int, int]]) -> list[_Entry]:
    """The readable reports (one per study; the last by file name wins, as in ``summary.csv``)."""
    by_study: dict[str, _Entry] = {}
    for name in sorted(listing):
        report = load_report(folder / name)
        if report is not None:
            by_study[report["study"]] = _Entry(name, report, listing[name][0] / 1e9)
    return list(by_study.values())


def write_html_report(out_dir: Path, max_rounds: int = 10, stale_temp_s: float = 3600.0) -> Path:
    """Regenerate ``out_dir/report.html`` from every study report in ``out_dir``; atomically.

    Reports that cannot be read (or rendered) are left out, as in ``summary.csv``. After writing,
    the reports are listed again and the page rebuilt if one appeared or changed meanwhile (another
    job-array part finished a study), so the last writer leaves every report on the page. A folder
    without reports gets a page that says so. Hidden temp files of the page older than
    ``stale_temp_s`` (left by a killed run) are removed. Returns the page's path.
    """
    folder = Path(out_dir)
    path = folder / HTML_NAME
    now = time.time()
    for name in os.listdir(folder):
        if temp_target(name) == HTML_NAME:
            try:
                if now - (folder / name).stat().st_mtime > stale_temp_s:
                    (folder / name).unlink()
            except FileNotFoundError:
                pass
    listing = report_listing(folder)
    for _ in range(max_rounds):
        write_text_atomic(render_html(folder, _read_entries(folder, listing)), path)
        again = report_listing(folder)
        if again == listing:
            break
        listing = again
    return path


def refresh_html_report(out_dir: Path) -> Path:
    """``write_html_report`` with a file-system error as one CardiosegError line (like ``refresh_summary``)."""
    try:
        return write_html_report(out_dir)
    except OSError as exc:
        raise CardiosegError(f'could not write "{Path(out_dir) / HTML_NAME}": {exc.strerror or exc}') from None
