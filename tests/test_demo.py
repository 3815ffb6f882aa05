"""``python -m cardioseg.demo``: the real sample is shipped with its license, and the demo
says whether the weights saw it (here with tiny weights, so it runs in seconds)."""

from __future__ import annotations

from pathlib import Path

from cardioseg import demo
from cardioseg.io import read_info_cfg, read_volume

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def test_the_sample_is_a_complete_acdc_patient_with_its_license():
    folder = demo.SAMPLE
    info = read_info_cfg(folder / "Info.cfg")
    for n in (info.ed, info.es):
        image = read_volume(folder / f"{folder.name}_frame{n:02d}.nii.gz")
        labels = read_volume(folder / f"{folder.name}_frame{n:02d}_gt.nii.gz")
        assert image.data.shape == labels.data.shape and set(labels.data.ravel().tolist()) == {0, 1, 2, 3}
    text = (SAMPLES / "README.md").read_text()
    assert "CC BY-NC-SA 4.0" in text and "doi:10.1109/TMI.2018.2837502" in text
    assert sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file()) < 3_000_000


def test_demo_on_the_sample_says_whether_the_weights_saw_it(tmp_path, tiny_weights_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "_has_matplotlib", lambda: False)  # no overlay: faster
    monkeypatch.setattr(demo, "_training_patients", lambda w: ("tiny", ["patient066"]))
    assert demo.main(["--out", str(tmp_path), "--weights", str(tiny_weights_path)]) == 0
    out = capsys.readouterr().out
    assert "patient066 WAS among the 1 training patients of tiny: the scores below are optimistic" in out
    assert "Against the expert's labels:" in out and "lv_ef_pct: cardioseg" in out
    assert (tmp_path / "evaluate" / "metrics.csv").is_file()


def test_demo_without_the_sample(tmp_path, capsys):
    assert demo.real_sample(tmp_path, None, sample=tmp_path / "nowhere") == 1
    assert "--phantom" in capsys.readouterr().err
