"""One short check of kdistill's CUDA path, for a machine with a GPU (never part of CI).

    .venv/bin/python benchmarks/cuda_check.py [--out /tmp/kdistill-cuda]

Runs the same tiny synthetic experiment (teacher CNN, scratch and KD students; augmentation on, so the
teacher view cache is built on the GPU) on the CPU and on CUDA (bf16 autocast), then a 1-process
torchrun with NCCL, and prints the test accuracies side by side. Exit status 0 means every run finished
and the CUDA accuracies are within 5 points of the CPU ones (bf16 and cuDNN change the arithmetic, so
equality is not expected).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from kdistill.config import load_config
from kdistill.experiment.run import run_experiment

OVERRIDES = [
    "data.name=synthetic",
    "data.val_size=200",
    "data.synthetic={n_train: 3000, n_test: 1000, num_classes: 6, side: 16}",
    "teacher.model.arch=cnn",
    "teacher.model.kwargs={channels: [16, 32], convs_per_stage: [1, 1]}",
    "teacher.train.epochs=3",
    "student.model.arch=mlp",
    "student.model.kwargs={hidden: [64]}",
    "student.train.epochs=3",
    "student.train.augment={shift: 2}",
    "roles=[scratch, kd]",
    "seeds=[0]",
]


def accuracies(summary: dict) -> dict[str, float]:
    return {r["role"]: r["test_acc"] for r in summary["rows"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/kdistill-cuda")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device visible to torch; nothing to check")
        return 1
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}")
    res = {}
    for device in ("cpu", "cuda"):
        cfg = load_config(None, [*OVERRIDES, f"device={device}", f"output_dir={args.out}/{device}"])
        res[device] = accuracies(run_experiment(cfg))
    cfg_file = Path(args.out) / "empty.yaml"
    cfg_file.write_text("{}\n")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        "-m",
        "kdistill",
        "run",
        str(cfg_file),
        *OVERRIDES,
        "device=cuda",
        f"output_dir={args.out}/ddp",
    ]
    done = subprocess.run(cmd, env={**os.environ}, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-3000:])
        return 1
    summary = json.loads(next(Path(args.out, "ddp").glob("*/summary.json")).read_text())
    res["cuda_torchrun_nccl"] = accuracies(summary)
    print(json.dumps(res, indent=1))
    ok = all(abs(res[d][r] - res["cpu"][r]) <= 0.05 for d in ("cuda", "cuda_torchrun_nccl") for r in res["cpu"])
    print("CUDA path OK" if ok else "CUDA accuracies differ from CPU by more than 5 points")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
