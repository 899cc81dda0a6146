"""Bad input and misuse, table-driven, through the command line: each case exits with code 2 and one
`kdistill: error:` line (no traceback), and a run directory that an earlier run left behind is unchanged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from kdistill.cli import main
from kdistill.config import load_config
from kdistill.experiment.run import run_experiment
from kdistill.lock import LOCK_NAME
from tests.helpers import synthetic_overrides


class _RunsCode:
    def __reduce__(self):  # noqa: ANN204 - what a malicious pickle does when loaded
        return (print, ("this must never run",))


def _unsafe_checkpoint(tmp: Path) -> list[str]:
    path = tmp / "unsafe.pt"
    torch.save({"state_dict": {}, "extra": _RunsCode()}, path)
    return [f"teacher.checkpoint={path}"]


def _other_architecture(tmp: Path) -> list[str]:
    return [f"teacher.checkpoint={tmp / 'prev' / 'teacher' / 'weights.pt'}", "teacher.model.kwargs={hidden: [16, 16]}"]


def _busy(tmp: Path) -> list[str]:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    _busy.holders.append(holder)  # type: ignore[attr-defined]
    (tmp / "prev" / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": __import__("socket").gethostname()}))
    return []


_busy.holders = []  # type: ignore[attr-defined]


@dataclass
class Case:
    name: str
    overrides: list[str] = field(default_factory=list)
    says: str = ""
    yaml: str = "{}\n"
    setup: Callable[[Path], list[str]] | None = None
    args: list[str] = field(default_factory=list)
    same_dir: bool = True  # run into the earlier run's directory, which must come out unchanged


CASES = [
    Case("unknown key", ["kd.temperature=4"], "did you mean 'kd.T'?"),
    Case("misspelled nested key", ["student.train.lr_rate=0.1"], "student.train.lr_rate: unknown key"),
    Case("yaml syntax", [], "line 2", yaml="kd:\n  T: [4\n"),
    Case("wrong type", ["kd.T=hot"], "kd.T"),
    Case("labelled beyond the training set", ["data.labelled=100000"], "data.labelled=100000 must be between 1"),
    Case("validation beyond the training set", ["data.val_size=100000"], "data.val_size=100000"),
    Case("explicit data.root without the data", ["data.name=fashion_mnist", "data.root=/nonexistent"], "data.root"),
    Case("unsafe pickle as teacher", [], "holds pickled objects (builtins.print", setup=_unsafe_checkpoint),
    Case("checkpoint of another architecture", [], "does not fit the model", setup=_other_architecture),
    Case("run directory in use", [], "is in use by another kdistill run (PID", setup=_busy),
    Case("resume with another config", ["kd.T=8"], "was started with another config", args=["--resume"]),
    Case("diverging run", ["student.train.lr=1e12"], "loss became", same_dir=False),
]


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run (teacher and one scratch student) that every case aims at."""
    tmp = tmp_path_factory.mktemp("bad")
    run_experiment(load_config(None, [*synthetic_overrides(tmp, "prev"), "seeds=[0]", "roles=[scratch]"]))
    return tmp


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_error_line_and_loses_nothing(
    case: Case, earlier: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tmp = tmp_path / "t"
    shutil.copytree(earlier, tmp)
    cfg = tmp / "c.yaml"
    cfg.write_text(case.yaml)
    name = "prev" if case.same_dir else "fresh"
    extra = case.setup(tmp) if case.setup else []
    before = _snapshot(tmp / "prev")
    try:
        overrides = [*synthetic_overrides(tmp, name), "seeds=[0]", "roles=[scratch]", *extra, *case.overrides]
        rc = main(["run", str(cfg), *overrides, *case.args])
    finally:
        for h in _busy.holders:  # type: ignore[attr-defined]
            h.kill()
            h.wait()
        _busy.holders.clear()  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("kdistill: error:") and "Traceback" not in err
    assert case.says in err, err
    after = _snapshot(tmp / "prev")
    assert after == before  # nothing an earlier run left was lost, replaced or half-written
    leftovers = [p for p in tmp.rglob("*") if p.suffix == ".tmp" or (p.name.startswith(".") and p.name != LOCK_NAME)]
    assert not leftovers
    if not case.same_dir:  # the diverging run keeps what finished before it (the teacher)
        assert (tmp / "fresh" / "teacher" / "predictions.pt").is_file()
