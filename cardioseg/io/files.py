"""Atomic file writing and the temporary-file naming scheme (the one place that knows it).

A file ``DIR/X`` is written as a hidden temporary file beside it, ``DIR/.X.<random>.tmp<ext>``
(``<ext>`` is ``X``'s own ending, ``.nii.gz`` for a NIfTI, so writers that look at the name
still see the right format), and renamed to ``X`` only when the writer succeeded. A killed run
can leave such temporary files behind; :func:`temp_target` tells which file each was for.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "temp_target", "write_text_atomic"]

_TEMP_MARK = ".tmp"
_RANDOM_PART = re.compile(r"[A-Za-z0-9_]+")  # what tempfile.mkstemp puts between prefix and suffix


def _ending(name: str) -> str:
    """The ending kept on the temporary name: ``.nii.gz`` for ``x.nii.gz``, else the last suffix."""
    path = Path(name)
    return "".join(path.suffixes[-2:]) if name.endswith(".nii.gz") else path.suffix


def temp_target(name: str) -> str | None:
    """The name of the file that the temporary file ``name`` (made by :func:`atomic_path`) was
    written for, or None when ``name`` is not such a temporary file.

    >>> temp_target(".X_seg.nii.gz.k2j_4abc.tmp.nii.gz")
    'X_seg.nii.gz'
    >>> temp_target(".summary.csv.a1b2c3d4.tmp.csv"), temp_target("X_seg.nii.gz"), temp_target(".notes.tmp")
    ('summary.csv', None, None)
    >>> temp_target(".a.tmp.x1y2z3w4.tmp.tmp")
    'a.tmp'
    """
    if not name.startswith("."):
        return None
    body = name[1:]
    end = len(body)
    while (i := body.rfind(_TEMP_MARK, 0, end)) > 0:  # the final name may hold ".tmp" itself
        final, dot, random_part = body[:i].rpartition(".")
        if final and dot and _RANDOM_PART.fullmatch(random_part) and body[i + len(_TEMP_MARK) :] == _ending(final):
            return final
        end = i
    return None


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` only on success.

    Any writer can fill the yielded path (``nib.save``, ``torch.save``, ``Path.write_text``...):
    it exists (empty) and ends like ``final``. On an exception nothing is left behind and an
    existing ``final`` is untouched. The parent folder is created when missing.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=f"{_TEMP_MARK}{_ending(final.name)}", dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(text: str, path: str | os.PathLike[str]) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
