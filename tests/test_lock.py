"""One writer per run directory: a live holder stops a second run at once (naming it), a dead one does not."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kdistill.cli import main
from kdistill.lock import LOCK_NAME, RunDirBusy, run_lock
from tests.helpers import synthetic_overrides


def _fake_lock(run_dir: Path, pid: int, host: str | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    holder = {"pid": pid, "host": host or socket.gethostname(), "started": "2026-12-02 10:00:00 UTC"}
    path.write_text(json.dumps(holder))
    return path


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_live_holder_is_named_and_its_lock_survives(tmp_path: Path, live_pid: int) -> None:
    path = _fake_lock(tmp_path / "run", live_pid)
    with pytest.raises(RunDirBusy) as info, run_lock(tmp_path / "run"):
        pass
    msg = str(info.value)
    assert f"PID {live_pid} on {socket.gethostname()}, started 2026-12-02 10:00:00 UTC" in msg and "name=" in msg
    assert json.loads(path.read_text())["pid"] == live_pid  # the holder keeps its lock


def test_a_dead_holders_lock_is_stale_and_taken_over(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its PID now names no process
    path = _fake_lock(tmp_path / "run", proc.pid)
    with run_lock(tmp_path / "run"):
        assert json.loads(path.read_text())["pid"] != proc.pid
    assert not path.exists()  # released at the end


def test_another_hosts_lock_cannot_be_checked_so_it_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = _fake_lock(tmp_path / "run", 1, host="elsewhere")
    with pytest.raises(RunDirBusy, match=f"on elsewhere.*delete {path}"), run_lock(tmp_path / "run"):
        pass


def test_the_lock_is_released_when_the_block_fails(tmp_path: Path) -> None:
    with pytest.raises(KeyError), run_lock(tmp_path / "run"):
        raise KeyError("boom")
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with run_lock(tmp_path / "run"):  # and can be taken again
        pass


def test_a_second_run_on_a_busy_directory_fails_at_once_and_loses_nothing(
    tmp_path: Path, live_pid: int, capsys: pytest.CaptureFixture
) -> None:
    run_dir = tmp_path / "busy"
    _fake_lock(run_dir, live_pid)
    (run_dir / "summary.json").write_text('{"rows": ["the first run\'s"]}')
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    assert main(["run", str(cfg), *synthetic_overrides(tmp_path, "busy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdistill: error: run directory") and f"PID {live_pid}" in err and "Traceback" not in err
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME, "summary.json"]  # nothing written, nothing lost
    assert "the first run's" in (run_dir / "summary.json").read_text()


def test_a_lock_on_a_new_directory_leaves_no_empty_directory_behind(tmp_path: Path) -> None:
    with pytest.raises(KeyError), run_lock(tmp_path / "new"):
        raise KeyError("failed before writing anything")
    assert not (tmp_path / "new").exists()
    with run_lock(tmp_path / "kept"):
        (tmp_path / "kept" / "summary.json").write_text("{}")
    assert (tmp_path / "kept" / "summary.json").is_file()


def test_a_cached_entry_is_read_while_another_process_computes_a_missing_one(tmp_path: Path) -> None:
    """The shared teacher caches: a run that needs an entry already on disk never waits for the lock another run
    holds while computing a different entry (a transfer set's embeddings took minutes)."""
    import threading

    import torch

    from kdistill.experiment.teachers import shared_file
    from kdistill.lock import dir_lock

    first, reused = shared_file(tmp_path, "kind", ["a"], lambda: {"x": torch.ones(2)})
    assert not reused and torch.equal(first["x"], torch.ones(2))
    got: list[tuple[dict, bool]] = []
    with dir_lock(tmp_path / "kind"):  # as another process computing entry "b" holds it
        reader = threading.Thread(target=lambda: got.append(shared_file(tmp_path, "kind", ["a"], dict)))
        reader.start()
        reader.join(timeout=30)
        assert not reader.is_alive() and got[0][1] and torch.equal(got[0][0]["x"], torch.ones(2))
        missing = threading.Thread(target=lambda: got.append(shared_file(tmp_path, "kind", ["b"], lambda: {"y": 1})))
        missing.start()
        missing.join(timeout=1)
        assert missing.is_alive()  # a missing entry waits for the lock: one process computes it
    missing.join(timeout=30)
    assert got[1] == ({"y": 1}, False)
