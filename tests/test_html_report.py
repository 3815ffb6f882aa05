"""``report.html`` (cardioseg.html_report): its content read back with ``html.parser``, its
rebuild from the reports in the folder, and a render in headless Chromium (skipped without one)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from cardioseg._version import __version__
from cardioseg.clinical import FrameVolumes
from cardioseg.html_report import HTML_NAME, write_html_report
from cardioseg.report import build_report, write_report

HOSTILE = 'x<script>alert("1")&amp;b'  # a study name with markup and an entity in it (no "/": it is a file name)


def _png(path: Path, width: int = 4, height: int = 3) -> None:
    """A tiny valid grey PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))  # fmt: skip


def write_study(
    out: Path,
    study: str,
    kind: str = "pair",
    n_frames: int | None = None,
    flags: dict[str, str] | None = None,
    overlay: bool = True,
    masks: int | None = None,
    missing_mask: bool = False,
) -> dict[str, Any]:
    """Write a synthetic study into ``out``: report (via build_report), mask files, overlay PNG."""
    n = n_frames if n_frames is not None else {"pair": 2, "frame": 1, "cine": 12}[kind]
    volumes = [FrameVolumes(lv_ml=60 + 60 * abs((t / max(n - 1, 1)) - 0.5) * 2 if kind == "cine" else 120 - 50 * t,
                            rv_ml=140 - 40 * t / max(n - 1, 1), myo_ml=95.0) for t in range(n)]  # fmt: skip
    if kind == "frame":
        measures: dict[str, float | None] = {"lv_edv_ml": None, "lv_ef_pct": None, "lv_mass_g": None}
        ed = es = None
    else:
        ed, es = (0, n // 2) if kind == "cine" else (0, 1)
        edv, esv = volumes[ed].lv_ml, volumes[es].lv_ml
        redv, resv = volumes[ed].rv_ml, volumes[es].rv_ml
        measures = {"lv_edv_ml": edv, "lv_esv_ml": esv, "lv_sv_ml": edv - esv, "lv_ef_pct": 100 * (edv - esv) / edv,
                    "rv_edv_ml": redv, "rv_esv_ml": resv, "rv_sv_ml": redv - resv, "rv_ef_pct": 100 * (redv - resv) / redv,
                    "lv_mass_g": 99.75, "bsa_m2": None}  # fmt: skip
    n_masks = masks if masks is not None else (2 if kind == "pair" else 1)
    mask_names = [f"{study}_{'ED' if i == 0 else 'ES'}_seg.nii.gz" for i in range(n_masks)]
    for i, name in enumerate(mask_names):
        if not (missing_mask and i == n_masks - 1):
            (out / name).write_bytes(b"\x1f\x8b fake mask")
    flags = flags or {}
    report = build_report(
        study=study, inputs=[f"/data/{study}/{m.replace('_seg', '')}" for m in mask_names], masks=mask_names, kind=kind,
        frame_volumes=volumes, ed_frame=ed, es_frame=es, measures=measures, qc_flags=list(flags),
        qc=[{"code": c, "message": m} for c, m in flags.items()], label_map={"background": 0, "rv": 1, "myo": 2, "lv": 3},
        myo_density_g_ml=1.05, weights={"name": "tiny-test", "sha256": "ab" * 32}, device="cpu", precision="fp32",
        runtime_s=1.25, image={"shape": [[8, 8, 4]]}, subject={"height_cm": None, "weight_kg": None, "group": None},
    )  # fmt: skip
    write_report(report, out / f"{study}_report.json")
    if overlay:
        _png(out / f"{study}_overlay.png")
    return report


class Page(HTMLParser):
    """What the tests look at: summary rows, sections (their images, SVGs, links), every reference."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[dict[str, Any]] = []
        self.sections: dict[str, dict[str, Any]] = {}
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.ids: set[str] = set()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.title = ""
        self._stack: list[str] = []
        self._row: dict[str, Any] | None = None
        self._cell: list[str] | None = None
        self._section: str | None = None
        self._in_title = False
        self._in_tbody = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("href", "src", "srcset", "action", "data", "poster", "xlink:href"):
            if key in a:
                self.refs.append((tag, key, a[key]))
        if tag == "title":
            self._in_title = True
        elif tag == "tbody":
            self._in_tbody = True
        elif tag == "tr" and self._in_tbody:
            self._row = {"attrs": a, "cells": []}
        elif tag == "td" and self._row is not None:
            self._cell = []
            self._row["cells"].append({"attrs": a, "text": self._cell, "titles": []})
        elif tag == "section":
            self._section = a.get("id", "")
            self.sections[self._section] = {"attrs": a, "img": [], "svg": 0, "href": [], "text": []}
        if self._row is not None and tag == "abbr":
            self._row["cells"][-1]["titles"].append(a.get("title", ""))
        if self._section is not None:
            sec = self.sections[self._section]
            if tag == "img":
                sec["img"].append(a)
            elif tag == "svg":
                sec["svg"] += 1
            elif tag == "a" and "href" in a:
                sec["href"].append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag == "tbody":
            self._in_tbody = False
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        elif tag == "td":
            self._cell = None
        elif tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._cell is not None:
            self._cell.append(data)
        if self._section is not None:
            self.sections[self._section]["text"].append(data)

    def study_names(self) -> list[str]:
        return ["".join(r["cells"][0]["text"]).strip() for r in self.rows]


def _section(page: Page, study: str) -> dict[str, Any]:
    """The detail section whose heading names ``study``."""
    hits = [s for s in page.sections.values() if "".join(s["text"]).strip().startswith(study)]
    assert len(hits) == 1, (study, [("".join(s["text"])[:40]) for s in page.sections.values()])
    return hits[0]


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    write_study(out, "patient001", "pair")
    write_study(out, "patient002", "pair", flags={"lv_ef_implausible": "LV EF 9.0 % is outside 15-85 % (limit)."})
    write_study(out, "cine007", "cine", n_frames=20, flags={"rv_much_larger_than_lv": "RV EDV 300 mL is 2.5x LV EDV."})
    write_study(out, HOSTILE, "pair", overlay=False, missing_mask=True,
                flags={"reader_warning": 'reader fixed <b>"odd"</b> & spacing'})  # fmt: skip
    write_study(out, "single", "frame", overlay=False)
    (out / "broken_report.json").write_text("{not json")
    (out / "summary.csv").write_text("study\n")
    return out


def test_page_content(batch: Path) -> None:
    path = write_html_report(batch)
    assert path == batch / HTML_NAME and path.is_file()
    text = path.read_text()
    page = Page(text)

    # one row per readable report, flagged studies first (by name), then the others
    names = page.study_names()
    assert names == ["cine007", "patient002", HOSTILE, "patient001", "single"]
    flagged = [r["attrs"].get("class") == "fl" for r in page.rows]
    assert flagged == [True, True, True, False, False]
    qc_cells = [r["cells"][-1] for r in page.rows]
    assert "".join(qc_cells[0]["text"]) == "rv_much_larger_than_lv"
    assert qc_cells[0]["titles"] == ["RV EDV 300 mL is 2.5x LV EDV."]  # the message on hover
    assert "".join(qc_cells[3]["text"]) == "ok"
    # units in the headers
    heads = [t for t in page.tags if t[0] == "th"]
    assert len(heads) == len(page.rows[0]["cells"]) == 12
    for unit in ("mL", "%", "g"):
        assert f"<small>{unit}</small>" in text
    # a flagged value is marked, the single frame shows its volumes in the EDV column
    p2 = page.rows[1]["cells"]
    assert "".join(p2[5]["text"]).endswith("!")  # LV EF of patient002
    single = page.rows[4]["cells"]
    assert "".join(single[1]["text"]) == "frame" and "".join(single[2]["text"]) == "120.0"
    # the run: version, weights, dates
    assert __version__ in text and "tiny-test" in text and "abababababab" in text and "reports written" in text

    # links: every relative link points to a file in the folder, every anchor to an element
    assert page.refs
    for tag, attr, value in page.refs:
        if value.startswith("#"):
            assert value[1:] in page.ids, value
            continue
        assert value.startswith("./") and "://" not in value, value  # relative, beside the page
        assert (batch / unquote(value)).is_file(), (tag, attr, value)
    # each study: its report and masks linked (the missing mask named, not linked), overlay when it exists
    for name in names:
        sec = _section(page, name)
        files = {unquote(h)[2:] for h in sec["href"] if not h.startswith("#")}
        assert f"{name}_report.json" in files
        imgs = sec["img"]
        if (batch / f"{name}_overlay.png").exists():
            assert [unquote(i["src"]) for i in imgs] == [f"./{name}_overlay.png"]
            assert imgs[0]["loading"] == "lazy" and imgs[0]["width"] == "4" and imgs[0]["height"] == "3"
        else:
            assert imgs == []
    assert f"{HOSTILE}_ED_seg.nii.gz" in {unquote(h)[2:] for h in _section(page, HOSTILE)["href"]}
    assert f"{HOSTILE}_ES_seg.nii.gz (missing)" in "".join(_section(page, HOSTILE)["text"])
    # the volume curve for the cine only
    assert {n: _section(page, n)["svg"] for n in names} == {n: int(n == "cine007") for n in names}
    # a table row links to its section
    anchors = [v for t, a, v in page.refs if t == "a" and v.startswith("#s-")]
    assert len(anchors) == len(names) == len(page.sections)

    # self-contained: no web address anywhere, no external script, style sheet or font
    assert "http://" not in text and "https://" not in text
    assert not [t for t in page.tags if t[0] in {"link", "iframe", "object", "embed", "base"}]
    scripts = [a for t, a in page.tags if t == "script"]
    assert scripts == [{}]  # the one inline sorting script, and nothing from a study name
    assert "@import" not in text and "url(" not in text
    # escaping: the hostile name and message come back as text, never as markup
    assert "<script>alert" not in text and '<b>"odd"' not in text
    assert 'reader fixed <b>"odd"</b> & spacing' in "".join(_section(page, HOSTILE)["text"])
    # written atomically: no temp file left
    assert not [p for p in os.listdir(batch) if p.startswith(".")]


def test_rebuild_adds_rows_and_skips_bad_reports(batch: Path) -> None:
    page = Page(write_html_report(batch).read_text())
    assert len(page.rows) == 5
    write_study(batch, "patient003", "cine", n_frames=3)
    bad = dict(write_study(batch, "weird", "pair"), frames=5)  # a report with a field of the wrong type
    (batch / "weird_report.json").write_text(__import__("json").dumps(bad))
    page = Page(write_html_report(batch).read_text())
    assert len(page.rows) == 6
    assert "patient003" in page.study_names() and "weird" not in page.study_names()
    assert _section(page, "patient003")["svg"] == 1  # 3 frames: a curve


def test_empty_folder_and_stale_temps(tmp_path: Path) -> None:
    stale = tmp_path / f".{HTML_NAME}.abc123.tmp.html"
    stale.write_text("half a page")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    text = write_html_report(tmp_path).read_text()
    assert Page(text).rows == [] and "no study report" in text
    assert not stale.exists()


def test_size_of_a_batch(tmp_path: Path) -> None:
    """20 studies (30-frame cines, half flagged, long messages) stay under 5 KB each."""
    for i in range(20):
        flags = {"lv_ef_implausible": "LV EF 12.3 % is outside the plausible range 15-85 %." * 2,
                 "heart_touches_fov_edge": "A segmented voxel lies on the image border in frames 0, 3, 7."} if i % 2 else {}  # fmt: skip
        write_study(tmp_path, f"patient{i:03d}", "cine", n_frames=30, flags=flags)
    text = write_html_report(tmp_path).read_text()
    page = Page(text)
    assert len(page.rows) == 20 and sum(s["svg"] for s in page.sections.values()) == 20
    assert len(text.encode()) < 20 * 5000, len(text.encode())


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (Debian: apt-get install chromium)")
def test_renders_in_headless_chromium(batch: Path, tmp_path: Path) -> None:
    """The page renders offline from the file system, and clicking a heading sorts the table."""
    browser = _chromium()
    assert browser is not None
    page = write_html_report(batch)
    shot = tmp_path / "report.png"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
              f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    env = {**os.environ, "HOME": str(tmp_path)}
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                   capture_output=True, timeout=90, env=env, check=False)  # fmt: skip
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

    # the sorting script: a copy of the page clicks headings and writes the row orders into its title
    probe = batch / ".sort-probe.html"
    order = ('Array.prototype.map.call(document.querySelectorAll("#summary tbody tr"),'
             'function(r){return r.cells[0].dataset.v}).join("|")')  # fmt: skip
    click = ('<script>var th=document.querySelectorAll("#summary th"),o=[];'
             f'th[0].click();o.push({order});th[0].click();o.push({order});th[5].click();o.push({order});'
             'th[5].click();o.push({order});o.push(th[5].getAttribute("aria-sort"));'
             'document.title="SORTED "+o.join(" / ");</script></body>').replace("{order}", order)  # fmt: skip
    probe.write_text(page.read_text().replace("</body>", click))
    try:
        dom = subprocess.run([*common, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=90,
                             env=env, check=False).stdout  # fmt: skip
    finally:
        probe.unlink()
    title = Page(dom).title
    assert title.startswith("SORTED "), dom[:300]
    by_name_up, by_name_down, ef_up, ef_down, state = (part.split("|") for part in title[len("SORTED "):].split(" / "))
    names = ["cine007", "patient001", "patient002", "single", HOSTILE]
    assert by_name_up == names and by_name_down == names[::-1]
    assert ef_up[-1] == ef_down[-1] == "single"  # no EF: last either way
    assert sorted(ef_up) == sorted(names) and state == ["descending"]
