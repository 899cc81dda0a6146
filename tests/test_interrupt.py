"""Ctrl-C / SIGTERM: training stops at the end of a step, every file stays whole, the --resume command is printed
and finishes the run."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import synthetic_overrides

ROOT = Path(__file__).resolve().parents[1]


def _kdistill(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "kdistill", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_sigterm_stops_after_a_step_and_prints_a_resume_command_that_finishes(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    ov = [*synthetic_overrides(tmp_path, "sig"), "seeds=[0]", "roles=[scratch]", "student.train.epochs=400"]
    proc = _kdistill(["run", str(cfg), *ov])
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:  # wait until the student trains, then ask it to stop
        if "scratch-seed0 epoch" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "kdistill: interrupted: scratch-seed0: SIGTERM at epoch" in err and "Traceback" not in err
    run = tmp_path / "sig"
    assert not [p for p in run.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]  # nothing half-written
    assert (run / "scratch-seed0" / "last.pt").is_file()
    again = shlex.split(err.split("continue with: ", 1)[1].splitlines()[0])
    assert again[0] == "kdistill" and again[-1] == "--resume"
    done = _kdistill(again[1:])
    out, err2 = done.communicate(timeout=300)
    assert done.returncode == 0, err2[-2000:]
    assert "resumed from" in out and (run / "summary.json").is_file()
