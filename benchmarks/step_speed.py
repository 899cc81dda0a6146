"""One training step of the demo's students, in parts and in four numeric set-ups, as ratios in one process.

    .venv/bin/python benchmarks/step_speed.py            # ~2 min, 1 thread
    .venv/bin/python benchmarks/step_speed.py --smoke

For the compression student (CNN, 24,058 parameters) and the few-labels student (MLP 784-300-10), batch 128:
milliseconds per step of forward, backward and optimizer (SGD, Nesterov, as the recipes), then the whole step
with float32, channels_last, bf16 autocast and both, interleaved over rounds (median), as ratios to float32;
what the loop does around the arithmetic; one SGD step per implementation (loop, foreach, fused); and a
torch.profiler table of the demo's CNN KD step by operator.
Writes ``benchmarks/results/step_speed.md``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdistill.environment import environment  # noqa: E402
from kdistill.models import build_model  # noqa: E402
from kdistill.teacher import bf16_supported  # noqa: E402

STUDENTS = {
    "compression CNN": ("cnn", {"channels": [16, 32, 64], "convs_per_stage": [1, 1, 1], "stem_stride": 2}),
    "few-labels MLP": ("mlp", {"hidden": [300]}),
}
VARIANTS = {"float32": (False, False), "channels_last": (True, False), "bf16": (False, True), "both": (True, True)}


def _sgd(m: torch.nn.Module, **kw: bool) -> torch.optim.Optimizer:
    """The recipes' SGD (Nesterov, weight decay); ``kw``: the implementation (foreach, fused)."""
    return torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, **kw)


def parts(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict[str, float]:
    """Median ms of forward (+ loss), backward and optimizer step, float32."""
    opt = _sgd(model)
    got: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    for _ in range(steps):
        a = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        b = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        c = time.perf_counter()
        opt.step()
        d = time.perf_counter()
        for k, v in zip(got, (b - a, c - b, d - c), strict=True):
            got[k].append(1e3 * v)
    return {k: statistics.median(v) for k, v in got.items()}


def loop_costs(model: torch.nn.Module, steps: int) -> dict[str, float]:
    """Microseconds per step of what fit does around the arithmetic: gathering a shuffled batch of 128 from
    55,000 images (``index_select``), ``loss.item()``, the accuracy count, the scheduler step and zero_grad."""
    x_all = torch.randn(55_000, 1, 28, 28)
    y_all = torch.randint(0, 10, (55_000,))
    opt = _sgd(model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    logits = model(x_all[:128])
    loss = F.cross_entropy(logits, y_all[:128])
    loss.backward()
    opt.step()  # the scheduler expects an optimizer step before its own
    got: dict[str, list[float]] = {
        "batch gather": [],
        "loss.item()": [],
        "accuracy count": [],
        "scheduler step": [],
        "zero_grad": [],
    }
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        rows = torch.randint(0, 55_000, (128,), generator=g)
        t = [time.perf_counter()]
        _xb, yb = x_all.index_select(0, rows), y_all.index_select(0, rows)  # as kdistill's BatchLoader
        t.append(time.perf_counter())
        loss.item()
        t.append(time.perf_counter())
        int((logits.detach().argmax(-1) == yb).sum())
        t.append(time.perf_counter())
        sched.step()
        t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        for k, a, b in zip(got, t, t[1:], strict=False):
            got[k].append(1e6 * (b - a))
    return {k: statistics.median(v) for k, v in got.items()}


def variants(base: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, rounds: int) -> dict[str, float]:
    """Median ms per whole step of each variant, the variants interleaved round by round."""
    runs = {}
    for name, (cl, _) in VARIANTS.items():
        m = copy.deepcopy(base)
        m = m.to(memory_format=torch.channels_last) if cl else m
        runs[name] = (m, _sgd(m))
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for _ in range(rounds):
        for name, (_, bf) in VARIANTS.items():
            m, opt = runs[name]
            t0 = time.perf_counter()
            for _ in range(steps):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf):
                    out = m(x)
                loss = F.cross_entropy(out.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            times[name].append(1e3 * (time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def optimizers(base: torch.nn.Module, steps: int, rounds: int) -> dict[str, float]:
    """Median µs of one SGD step (the recipes' Nesterov momentum and weight decay) per implementation: PyTorch's
    CPU default (a loop over parameters), foreach (multi-tensor) and fused (what kdistill asks for)."""
    kinds = {"per-parameter loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    opts, models = {}, {}
    g = torch.Generator().manual_seed(1)
    for name, kw in kinds.items():
        models[name] = copy.deepcopy(base)
        opts[name] = _sgd(models[name], **kw)
        for p in models[name].parameters():
            p.grad = torch.randn(p.shape, generator=g)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for name, opt in opts.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.step()
            times[name].append(1e6 * (time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def kd_step(m: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> None:
    """One step as the demo trains its CNN: bf16 forward, KD at T = 2, alpha = 0.5 against the logits ``t``."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = m(x).float()
    soft = F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), log_target=True, reduction="batchmean")
    loss = 0.5 * 4 * soft + 0.5 * F.cross_entropy(s, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def profile_step(base: torch.nn.Module, steps: int, top: int = 10) -> list[tuple[str, float, int]]:
    """torch.profiler over ``steps`` whole steps of the demo's set-up (bf16 autocast, channels_last, KD loss at
    T = 2 with cached teacher logits, fused SGD): the ``top`` operators by self CPU time, as (name, µs per
    step, calls per step)."""
    from torch.profiler import ProfilerActivity, profile

    m = copy.deepcopy(base).to(memory_format=torch.channels_last)
    opt = _sgd(m, fused=True)
    g = torch.Generator().manual_seed(2)
    x, y, t = torch.randn(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g), torch.randn(128, 10)

    for _ in range(5):
        kd_step(m, opt, x, y, t)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            kd_step(m, opt, x, y, t)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / steps, round(e.count / steps)) for e in rows[:top]]


def fit_overhead(base: torch.nn.Module, n: int, rounds: int) -> tuple[float, float]:
    """ms per step of the bare KD step (as :func:`profile_step`'s) and of kdistill's ``fit`` training the same
    student with the same objective on ``n`` random images with cached teacher logits (one epoch, batches
    gathered from the shuffled set, the loss's parts, the accuracy count, checks): medians over ``rounds``."""
    from kdistill.caches import LogitCache
    from kdistill.config import TrainConfig
    from kdistill.data import Split
    from kdistill.distiller import Distiller
    from kdistill.trainer import fit

    g = torch.Generator().manual_seed(3)
    x, y, idx = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g), torch.arange(n)
    train, val = Split(x, y, idx), Split(x[:500], y[:500], idx[:500])
    cache = LogitCache(torch.randn(n, 10, generator=g), idx)
    teacher = torch.nn.Linear(1, 10)  # never run: the cache answers
    cfg = TrainConfig(epochs=1, batch_size=128, lr=0.05, precision="bf16", memory_format="channels_last")
    bare, loop = [], []
    for _ in range(rounds):
        m = copy.deepcopy(base).to(memory_format=torch.channels_last)
        opt = _sgd(m, fused=True)
        steps = n // 128
        t0 = time.perf_counter()
        for b in range(steps):
            rows = slice(b * 128, (b + 1) * 128)
            kd_step(m, opt, x[rows], y[rows], cache.logits[rows])
        bare.append(1e3 * (time.perf_counter() - t0) / steps)
        res = fit(
            Distiller(copy.deepcopy(base), teacher, T=2.0, alpha=0.5, source=cache),
            train,
            val,
            cfg,
            seed=0,
            verbose=False,
            progress=False,
        )
        loop.append(1e3 * res.train_seconds / res.steps)
    return statistics.median(bare), statistics.median(loop)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "step_speed.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    steps, rounds = (3, 1) if args.smoke else (60, 5)
    env = environment()
    lines = [
        "# One training step of the demo's students (benchmarks/step_speed.py)",
        "",
        f"Machine: {env.get('cpu', '?')}; torch {env['torch']}; 1 thread; batch 128; "
        f"bf16 kernels: {bf16_supported(torch.device('cpu'))}.",
        "",
    ]
    if args.smoke:
        lines += ["**Smoke run: a few steps, numbers meaningless.**", ""]
    lines += [
        "| student | forward ms | backward ms | optimizer ms | float32 step ms | channels_last | bf16 | both |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (arch, kwargs) in STUDENTS.items():
        torch.manual_seed(0)
        model = build_model(arch, (1, 28, 28), 10, kwargs)
        x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
        p = parts(copy.deepcopy(model), x, y, steps)
        v = variants(model, x, y, steps, rounds)
        ratio = {k: v["float32"] / v[k] for k in v}
        lines.append(
            f"| {name} | {p['forward']:.2f} | {p['backward']:.2f} | {p['optimizer']:.3f} | "
            f"{v['float32']:.2f} | {ratio['channels_last']:.2f}× | {ratio['bf16']:.2f}× | {ratio['both']:.2f}× |"
        )
    lines += ["", "Ratios: float32 step time / the variant's (higher is faster), medians of interleaved rounds.", ""]
    torch.manual_seed(0)
    costs = loop_costs(
        build_model(*STUDENTS["compression CNN"][0:1], (1, 28, 28), 10, STUDENTS["compression CNN"][1]), steps
    )
    lines += [
        "What the training loop does around the arithmetic, per step (median µs, compression CNN):",
        "",
        "| " + " | ".join(costs) + " |",
        "|" + "---:|" * len(costs),
        "| " + " | ".join(f"{v:.0f}" for v in costs.values()) + " |",
    ]
    lines += [
        "",
        "One SGD step (Nesterov, weight decay) per implementation, median µs (foreach updates bit for bit as the loop; "
        "fused within float rounding of it, tests/test_trainer.py):",
        "",
        "| student | per-parameter loop (PyTorch's CPU default) | foreach | fused (kdistill) |",
        "|---|---:|---:|---:|",
    ]
    for name, (arch, kwargs) in STUDENTS.items():
        torch.manual_seed(0)
        o = optimizers(build_model(arch, (1, 28, 28), 10, kwargs), 5 * steps, rounds)
        lines.append(f"| {name} | {' | '.join(f'{v:.0f}' for v in o.values())} |")
    torch.manual_seed(0)
    cnn = build_model(STUDENTS["compression CNN"][0], (1, 28, 28), 10, STUDENTS["compression CNN"][1])
    prof = profile_step(cnn, steps)
    total = sum(us for _, us, _ in prof)
    lines += [
        "",
        "torch.profiler, one KD step of the compression CNN as the demo trains it (bf16, channels_last, cached "
        f"teacher logits, fused SGD): the {len(prof)} operators with the most self CPU time ({total / 1e3:.2f} ms "
        "per step together):",
        "",
        "| operator | µs per step | calls per step |",
        "|---|---:|---:|",
        *[f"| `{k}` | {us:.0f} | {n} |" for k, us, n in prof],
    ]
    bare, loop = fit_overhead(cnn, 1_000 if args.smoke else 55_000, 1 if args.smoke else 2)
    lines += [
        "",
        f"The same KD step inside kdistill's `fit` (55,000 random images, cached logits, one epoch): {loop:.2f} ms "
        f"per step against {bare:.2f} ms for the bare step in the same process ({loop / bare:.2f}×): what the loop "
        "adds around the arithmetic.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
