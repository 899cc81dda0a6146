"""Time per training step of language-model distillation relative to plain student training, in one process.

    .venv/bin/python benchmarks/text_kd_speed.py [--steps 40] [--repeats 3] [--threads 1]

The student and data of configs/text/stdlib_tiny.yaml (byte-level TinyGPT, blocks of 64, batches of 32):
the teacher's top-k distributions are cached first (as a run does), then each objective takes ``--steps``
optimizer steps, the modes in rotating order ``--repeats`` times (drift hits every mode alike); printed: the
median seconds per step and the ratio to plain next-token training. Goal: cached off-policy KD <= 1.2x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdistill.config import TrainConfig  # noqa: E402
from kdistill.environment import environment, machine_line  # noqa: E402
from kdistill.experiment.text_run import build_lm, load_corpus_data  # noqa: E402
from kdistill.teacher import FrozenTeacher  # noqa: E402
from kdistill.text.config import load_text_config  # noqa: E402
from kdistill.text.objectives import LMDistiller, LMSupervised  # noqa: E402
from kdistill.text.teacher import TopKCache  # noqa: E402
from kdistill.trainer import fit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_text_config(ROOT / "configs" / "text" / "stdlib_tiny.yaml")
    data, _ = load_corpus_data(cfg, smoke=False)
    torch.manual_seed(0)
    teacher, _ = build_lm(cfg.teacher.model, data.vocab_size, data.block)  # untrained: speed does not care
    frozen = FrozenTeacher(teacher)
    cache = TopKCache.build(frozen, data.train, cfg.kd.top_k, data.vocab_size)
    train_cfg = TrainConfig(**{**cfg.student.train.model_dump(), "steps": None, "epochs": 1})
    train = data.train.take(torch.arange(args.steps * train_cfg.batch_size))  # one epoch = --steps steps

    def objective(mode: str) -> torch.nn.Module:
        torch.manual_seed(0)
        student, _ = build_lm(cfg.student.model, data.vocab_size, data.block)
        if mode == "scratch":
            return LMSupervised(student)
        if mode == "on-policy jsd (lambda 1)":
            return LMDistiller(student, frozen, "jsd", source=cache, on_policy=1.0, prefix=cfg.gkd.prefix)
        if mode == "online teacher fkl":
            return LMDistiller(student, frozen, "fkl")
        return LMDistiller(student, frozen, mode.split()[-1], source=cache)

    modes = ["scratch", "cached fkl", "cached rkl", "cached jsd", "cached skl", "cached srkl"]
    modes += ["online teacher fkl", "on-policy jsd (lambda 1)"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.repeats):
        for m in modes[r % len(modes) :] + modes[: r % len(modes)]:
            res = fit(objective(m), train, data.val, train_cfg, seed=r, verbose=False, progress=False)
            times[m].append(res.train_seconds / res.steps)
    base = statistics.median(times["scratch"])
    print(f"seconds per step (median of {args.repeats}), {args.steps} steps of {train_cfg.batch_size} x {data.block}")
    print(f"{'mode':<28} {'s/step':>8} {'vs scratch':>11}")
    for m in modes:
        med = statistics.median(times[m])
        print(f"{m:<28} {med:>8.4f} {med / base:>10.2f}x")
    print(machine_line(environment()))


if __name__ == "__main__":
    main()
