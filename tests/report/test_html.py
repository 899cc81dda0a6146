"""The HTML report: every figure written, no broken image, nothing fetched from the network."""

from __future__ import annotations

import re
from pathlib import Path

from kdistill.cli import main
from kdistill.config import load_config
from kdistill.experiment.run import run_experiment
from tests.helpers import synthetic_overrides

FIGURES = ["curves.png", "soft_targets.png", "entropy_vs_T.png", "dark_knowledge.png", "reliability.png"]


def _png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_writes_a_self_contained_report(tmp_path: Path) -> None:
    cfg = load_config(None, synthetic_overrides(tmp_path) + ["seeds=[0]"])
    run_experiment(cfg, smoke=True)
    run = tmp_path / "syn-smoke"
    for name in FIGURES:
        assert _png(run / name), name
    page = (run / "report.html").read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    assert set(FIGURES) <= set(sources)
    assert all((run / s).is_file() for s in sources)  # no broken image
    assert "http" not in page and "<script" not in page and "<link" not in page  # opens offline
    assert "Soft targets at several temperatures" in page and "Calibration" in page
    assert "Measured on " in page  # the machine behind the numbers
    # rebuilt from the run's files alone, e.g. after deleting a figure
    (run / "dark_knowledge.png").unlink()
    assert main(["report", str(run)]) == 0
    assert _png(run / "dark_knowledge.png")


def test_report_of_a_directory_that_is_no_run_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "not a kdistill run directory" in capsys.readouterr().err


EVIL = "<script>alert(1)</script>"


def test_strings_from_data_and_config_render_as_text_in_both_reports(tmp_path: Path) -> None:
    import numpy as np

    gen = np.random.default_rng(0)
    root = tmp_path / "data"
    root.mkdir()
    x, y = gen.random((120, 8, 8), dtype=np.float32), np.arange(120) % 2
    np.savez(root / "a.npz", x_train=x[:80], y_train=y[:80], x_test=x[80:], y_test=y[80:])
    desc = 'a description full of &<>"| and <b>bold</b>'
    ov = [
        "data.name=arrays",
        f"data.root={root}",
        "data.val_size=20",
        f"data.arrays.class_names=['{EVIL}', 'b|c']",
        "teacher.model.arch=mlp",
        "teacher.model.kwargs={hidden: [8]}",
        "teacher.train.epochs=1",
        "student.model.kwargs={hidden: [4]}",
        "student.train.epochs=1",
        "seeds=[0]",
        "threads=1",
        f"output_dir={tmp_path}",
        "name=run<i>x&y",
        f"description={desc!r}",
    ]
    run_experiment(load_config(None, ov))
    run = tmp_path / "run<i>x&y"
    for page in [(run / "report.html").read_text(), (run / "summary.md").read_text()]:
        # no tag from the data or the config gets through
        assert "<script" not in page and "<b>bold" not in page and "<i>x" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    md = (run / "summary.md").read_text()
    assert "b\\|c" in md and '&amp;&lt;&gt;"\\|' in md  # no table split by a '|' from the data
