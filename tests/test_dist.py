"""Distributed training with torchrun on CPU (gloo): 2 processes reproduce the single-process run.

With models that hold no batch statistics (MLPs without BatchNorm or dropout), splitting each global
batch over 2 processes and averaging gradients is the same computation as one process on the whole
batch, up to float summation order, so the two runs must agree to float precision.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from kdistill.config import load_config
from kdistill.dist import DistError
from kdistill.experiment.run import run_experiment
from tests.data.builders import images, write_folder


def overrides(out: Path) -> list[str]:
    return [
        "name=ddp",
        "data.name=synthetic",
        "data.val_size=60",
        "data.synthetic={n_train: 400, n_test: 200, num_classes: 4, side: 8}",
        "teacher.model.arch=mlp",
        "teacher.model.kwargs={hidden: [32]}",
        "teacher.train.epochs=2",
        "teacher.train.batch_size=32",
        "student.model.kwargs={hidden: [16]}",
        "student.train.epochs=3",
        "student.train.batch_size=32",
        "roles=[scratch, kd]",
        "seeds=[0]",
        "threads=1",
        f"output_dir={out}",
    ]


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "kdistill",
        "run",
        str(config),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_two_process_ddp_run_matches_the_single_process_run(tmp_path: Path) -> None:
    single = run_experiment(load_config(None, overrides(tmp_path / "one")))
    res = _torchrun(overrides(tmp_path / "two"), tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "distributed: 2 processes, cpu, global batch 32" in res.stdout
    assert res.stdout.count("teacher: test acc") == 1  # rank 0 alone speaks (and writes)
    run = tmp_path / "two" / "ddp"
    double = json.loads((run / "summary.json").read_text())
    for a, b in zip(single["rows"], double["rows"], strict=True):
        assert (a["role"], a["seed"]) == (b["role"], b["seed"])
        for key in ("test_acc", "test_errors", "val_acc"):
            assert a[key] == b[key], (a["role"], key)
        assert b["test_nll"] == pytest.approx(a["test_nll"], abs=1e-4)
    # Same global batches, same number of optimizer steps, and the same training curve.
    one = [json.loads(s) for s in (tmp_path / "one" / "ddp" / "kd-seed0" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(s) for s in (run / "kd-seed0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in two] == pytest.approx([r["train_loss"] for r in one], rel=1e-4)
    assert [r["val_acc"] for r in two] == [r["val_acc"] for r in one]


def test_two_processes_read_a_streamed_image_folder_like_one(tmp_path: Path) -> None:
    """Rank 0 prepares the folder once, every rank reads its share of each batch from disk."""
    root = write_folder(tmp_path / "images", images())
    folder = [
        "data.name=folder",
        f"data.root={root}",
        "data.val_size=9",
        "data.memory_budget_mb=0.001",
        "data.synthetic={}",
        f"data.prepare_dir={tmp_path / 'prepared'}",
    ]
    single = run_experiment(load_config(None, [*overrides(tmp_path / "one"), *folder]))
    res = _torchrun([*overrides(tmp_path / "two"), *folder], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "read from disk a batch at a time" in res.stdout
    double = json.loads((tmp_path / "two" / "ddp" / "summary.json").read_text())
    for a, b in zip(single["rows"], double["rows"], strict=True):
        assert (a["role"], a["test_acc"], a["val_acc"]) == (b["role"], b["test_acc"], b["val_acc"])
    assert len(list((tmp_path / "prepared").glob("folder-*"))) == 1


def test_batch_size_must_split_evenly_over_the_processes(tmp_path: Path) -> None:
    res = _torchrun([*overrides(tmp_path), "student.train.batch_size=33", "teacher.train.batch_size=33"], tmp_path)
    assert res.returncode != 0
    assert "batch size 33 is not divisible by the 2 processes" in res.stderr


def _disagreeing_rank(rank: int, init_file: str, out: str, errors: str) -> None:
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        cfg = load_config(None, [*overrides(Path(out)), f"kd.T={4 + rank}"])  # rank 1 was given kd.T=5
        run_experiment(cfg)
    except DistError as e:
        Path(errors, f"rank{rank}.txt").write_text(str(e))
    finally:
        tdist.destroy_process_group()


def test_ranks_that_disagree_on_the_config_fail_fast(tmp_path: Path) -> None:
    mp.spawn(_disagreeing_rank, args=(str(tmp_path / "init"), str(tmp_path / "out"), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        msg = (tmp_path / f"rank{rank}.txt").read_text()
        assert "the ranks of this distributed run disagree on the resolved config" in msg
    assert not (tmp_path / "out" / "ddp").exists()  # failed before writing anything


def test_a_rank_killed_mid_training_stops_the_others_and_resume_finishes_where_one_process_ends(
    tmp_path: Path,
) -> None:
    import time

    single = run_experiment(load_config(None, overrides(tmp_path / "one")))
    os.environ["KDISTILL_KILL_AFTER_STEPS"], os.environ["KDISTILL_KILL_RANK"] = "30", "1"
    try:
        t0 = time.monotonic()
        res = _torchrun(overrides(tmp_path / "two"), tmp_path)
        elapsed = time.monotonic() - t0
    finally:
        del os.environ["KDISTILL_KILL_AFTER_STEPS"], os.environ["KDISTILL_KILL_RANK"]
    assert res.returncode != 0
    assert elapsed < 60, elapsed  # rank 0 does not hang on its lost peer (the issue asks <= 60 s)
    assert "rank" in res.stderr.lower() and ("exitcode: -9" in res.stderr or "Signals.SIGKILL" in res.stderr)
    again = _torchrun([*overrides(tmp_path / "two"), "--resume"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    done = json.loads((tmp_path / "two" / "ddp" / "summary.json").read_text())
    for a, b in zip(single["rows"], done["rows"], strict=True):
        assert (a["role"], a["seed"], a["test_acc"], a["val_acc"]) == (
            b["role"],
            b["seed"],
            b["test_acc"],
            b["val_acc"],
        )
