"""How much does distillation cost on top of plain student training?

    .venv/bin/python benchmarks/kd_overhead.py [--config configs/fashion_mnist/hinton.yaml] [--threads 1]
    .venv/bin/python benchmarks/kd_overhead.py --augment 2 [--flip] [--views 8]     # augmented case

Measured in one process, with kdistill's own training loop (``fit``), for the config's student:
  plain        - the student on hard labels (cross-entropy), with the same augmentation as the others;
  cached       - KD, teacher outputs computed once (no augmentation: one row per image; with
                 ``--augment``: K fixed augmented views per image, the student shown one per epoch);
  online       - KD with the teacher's forward pass on every batch, fast path (channels_last + bf16
                 autocast where the hardware has bf16 kernels; float32 otherwise);
  online_fp32  - the same in exact float32.
Each mode trains one epoch, ``--repeats`` times in rotating order, and the median epoch time (training
only, no evaluation) is compared. Cache-building time is reported separately and amortised over the
config's epochs: it is paid once per run (and reused by later runs), not per epoch. Ratios, not
seconds, are the result: absolute times depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on shared cores

import torch  # noqa: E402

from kdistill.caches import LogitCache, ViewCache  # noqa: E402
from kdistill.config import AugmentConfig, load_config  # noqa: E402
from kdistill.data import BatchLoader, DataError, load_data  # noqa: E402
from kdistill.distiller import Distiller, Supervised  # noqa: E402
from kdistill.models import build_model, count_params, load_weights_into  # noqa: E402
from kdistill.teacher import FrozenTeacher, bf16_supported  # noqa: E402
from kdistill.trainer import fit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/fashion_mnist/hinton.yaml")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--augment", type=int, default=0, help="random shift of up to this many pixels (0 = none)")
    ap.add_argument("--flip", action="store_true", help="also random horizontal flips")
    ap.add_argument("--views", type=int, default=8, help="augmented views per image in the cache")
    ap.add_argument("--limit-train", type=int, default=None, help="fewer training images (quick check)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_config(args.config)
    try:
        val = min(cfg.data.val_size, (args.limit_train or 10**9) // 5)
        data = load_data(cfg.data.name, root=cfg.data.root, val_size=val, limit_train=args.limit_train)
    except DataError as e:
        raise SystemExit(f"benchmark needs the config's dataset: {e}") from None
    t_spec, s_spec = cfg.teacher.model, cfg.student.model
    model = build_model(t_spec.arch, data.input_shape, data.num_classes, t_spec.kwargs)
    if cfg.teacher.checkpoint and os.path.exists(cfg.teacher.checkpoint):
        load_weights_into(model, cfg.teacher.checkpoint)  # weights do not change the timing, but be real
    exact, fast = FrozenTeacher(model), FrozenTeacher(model, fast=True)
    aug = AugmentConfig(shift=args.augment, flip=args.flip)

    t0 = time.perf_counter()
    if args.augment or args.flip:
        cache = ViewCache.build(fast, data.train, aug, args.views, seed=0)  # as the pipeline builds it
    else:
        cache = LogitCache.build(exact, BatchLoader(data.train, 1000))
    cache_seconds = time.perf_counter() - t0

    train_cfg = cfg.student.train.model_copy(update={"epochs": 1, "steps": None, "augment": aug})
    student = build_model(s_spec.arch, data.input_shape, data.num_classes, s_spec.kwargs)

    def objective(mode: str) -> torch.nn.Module:
        if mode == "plain":
            return Supervised(student)
        teacher = exact if mode == "online_fp32" else fast
        return Distiller(student, teacher, cfg.kd.T, cfg.kd.alpha, source=cache if mode == "cached" else None)

    modes = ["plain", "cached", "online", "online_fp32"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    fit(objective("plain"), data.train, data.val, train_cfg, seed=0, verbose=False, progress=False)  # warm-up
    for r in range(args.repeats):
        k = r % len(modes)
        for m in modes[k:] + modes[:k]:  # rotate the order so drift hits every mode alike
            res = fit(objective(m), data.train, data.val, train_cfg, seed=r, verbose=False, progress=False)
            times[m].append(res.train_seconds)

    med = {m: statistics.median(v) for m, v in times.items()}
    epochs = cfg.student.train.epochs
    what = f"{args.views} augmented views per image" if args.augment or args.flip else "one row per image"
    print(
        f"config {args.config}: student {s_spec.arch} {s_spec.kwargs} ({count_params(student):,} params), "
        f"teacher {t_spec.arch} ({count_params(model):,} params)"
    )
    print(
        f"{len(data.train)} training images, batch {train_cfg.batch_size}, augmentation {aug.model_dump()}, "
        f"{args.threads} thread(s), {args.repeats} repeats, torch {torch.__version__}, "
        f"bf16 kernels: {bf16_supported(torch.device('cpu'))}"
    )
    print(f"{'mode':<12} {'epoch s (median)':>17} {'ratio to plain':>15}")
    for m in modes:
        print(f"{m:<12} {med[m]:>17.2f} {med[m] / med['plain']:>15.3f}")
    amortised = (med["cached"] + cache_seconds / epochs) / med["plain"]
    precision = "bf16" if (args.augment or args.flip) and bf16_supported(torch.device("cpu")) else "float32"
    print(
        f"cache build ({what}, once per run, {precision}): {cache_seconds:.2f}s = "
        f"{cache_seconds / med['plain']:.2f} plain epochs; over the config's {epochs} epochs cached/plain "
        f"incl. build = {amortised:.3f}"
    )
    print(
        f"RESULT cached/plain={med['cached'] / med['plain']:.3f} online/plain={med['online'] / med['plain']:.3f} "
        f"online_fp32/plain={med['online_fp32'] / med['plain']:.3f} cached_incl_build/plain={amortised:.3f}"
    )


if __name__ == "__main__":
    main()
