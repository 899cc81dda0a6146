"""How much does distillation cost on top of plain student training?

    .venv/bin/python benchmarks/kd_overhead.py [--config configs/fashion_mnist/hinton.yaml] [--threads 1]

Measured in one process, with kdistill's own training loop (``fit``), for the config's student:
  plain    - the student on hard labels (cross-entropy);
  cached   - KD with the teacher's logits computed once and looked up by sample index;
  online   - KD with the teacher's forward pass on every batch.
Each mode trains one epoch, ``--repeats`` times in rotating order, and the median epoch time (training
only, no evaluation) is compared. Cache-building time is reported separately: it is paid once per
run, not per epoch. Ratios, not seconds, are the result: absolute times depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on shared cores

import torch  # noqa: E402

from kdistill.config import load_config  # noqa: E402
from kdistill.data import BatchLoader, DataError, load_data  # noqa: E402
from kdistill.distiller import Distiller, FrozenTeacher, LogitCache, Supervised  # noqa: E402
from kdistill.models import build_model, count_params  # noqa: E402
from kdistill.pipeline import load_weights_into  # noqa: E402
from kdistill.trainer import fit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/fashion_mnist/hinton.yaml")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit-train", type=int, default=None, help="fewer training images (quick check)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_config(args.config)
    try:
        data = load_data(cfg.data.name, root=cfg.data.root, val_size=cfg.data.val_size, limit_train=args.limit_train)
    except DataError as e:
        raise SystemExit(f"benchmark needs the config's dataset: {e}") from None
    t_spec, s_spec = cfg.teacher.model, cfg.student.model
    teacher = build_model(t_spec.arch, data.input_shape, data.num_classes, t_spec.kwargs)
    if cfg.teacher.checkpoint and os.path.exists(cfg.teacher.checkpoint):
        load_weights_into(teacher, cfg.teacher.checkpoint)  # weights do not change the timing, but be real
    teacher = FrozenTeacher(teacher)

    t0 = time.perf_counter()
    cache = LogitCache.build(teacher, BatchLoader(data.train, 1000))
    cache_seconds = time.perf_counter() - t0

    train_cfg = cfg.student.train.model_copy(update={"epochs": 1, "steps": None})
    student = build_model(s_spec.arch, data.input_shape, data.num_classes, s_spec.kwargs)

    def objective(mode: str) -> torch.nn.Module:
        if mode == "plain":
            return Supervised(student)
        return Distiller(student, teacher, cfg.kd.T, cfg.kd.alpha, cache=cache if mode == "cached" else None)

    modes = ["plain", "cached", "online"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    fit(objective("plain"), data.train, data.val, train_cfg, seed=0, verbose=False, progress=False)  # warm-up
    for r in range(args.repeats):
        for m in modes[r % 3 :] + modes[: r % 3]:  # rotate the order so drift hits every mode alike
            res = fit(objective(m), data.train, data.val, train_cfg, seed=r, verbose=False, progress=False)
            times[m].append(res.train_seconds)

    med = {m: statistics.median(v) for m, v in times.items()}
    print(f"config {args.config}: student {s_spec.arch} {s_spec.kwargs} ({count_params(student):,} params), "
          f"teacher {t_spec.arch} ({count_params(teacher):,} params)")  # fmt: skip
    print(f"{len(data.train)} training images, batch {train_cfg.batch_size}, {args.threads} thread(s), "
          f"{args.repeats} repeats, torch {torch.__version__}")  # fmt: skip
    print(f"{'mode':<8} {'epoch s (median)':>17} {'ratio to plain':>15}")
    for m in modes:
        print(f"{m:<8} {med[m]:>17.2f} {med[m] / med['plain']:>15.3f}")
    print(f"cache build (once per run): {cache_seconds:.2f}s = {cache_seconds / med['plain']:.2f} plain epochs")
    print(f"RESULT cached/plain={med['cached'] / med['plain']:.3f} online/plain={med['online'] / med['plain']:.3f}")


if __name__ == "__main__":
    main()
