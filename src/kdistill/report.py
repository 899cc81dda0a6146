"""Summaries and figures of a run, built from its metrics files (never from logs)."""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

from kdistill.io import atomic_write_text

ROLE_ORDER = ["teacher", "scratch", "kd", "label_smoothing", "multi_teacher", "ta_chain", "born_again", "dml"]
LEFT_OUT_KEYS = ("left_out_acc", "label_free_left_out_acc", "label_free_test_acc", "fixed_shift_left_out_acc",
                 "fixed_shift_test_acc")  # fmt: skip


def row_key(row: dict) -> str:
    """What a row is aggregated under: its role, or ``role/variant`` (``dml/peer0``, ``born_again/gen2``)."""
    return f"{row['role']}/{row['variant']}" if row.get("variant") else row["role"]


def aggregate(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (n-1) per role, or per role and variant (kdistill.modes)."""
    out: dict[str, dict[str, float]] = {}
    keys = [k for role in ROLE_ORDER for k in dict.fromkeys(row_key(r) for r in rows if r["role"] == role)]
    for group in keys:
        rs = [r for r in rows if row_key(r) == group]
        agg: dict[str, float] = {"n": len(rs), "params": rs[0]["params"]}
        for key in ("test_acc", "test_errors", "test_nll", "test_ece", "val_acc", "train_seconds", *LEFT_OUT_KEYS):
            vals = [float(r[key]) for r in rs if r.get(key) is not None and not math.isnan(float(r[key]))]
            if vals:
                agg[f"{key}_mean"] = statistics.fmean(vals)
                agg[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out[group] = agg
    return out


def gap_recovered(agg: dict[str, dict[str, float]]) -> float | None:
    """``(kd - scratch) / (teacher - scratch)`` on mean test accuracy; None when undefined."""
    try:
        t, s, k = (agg[r]["test_acc_mean"] for r in ("teacher", "scratch", "kd"))
    except KeyError:
        return None
    return (k - s) / (t - s) if abs(t - s) > 1e-12 else None


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def summary_markdown(summary: dict) -> str:
    agg, cfg = summary["aggregate"], summary["config"]
    lines = [f"# {cfg['name']}" + (" (smoke run: tiny data, 1 epoch, numbers meaningless)" if summary["smoke"] else "")]
    if cfg.get("description"):
        lines += ["", cfg["description"].strip()]
    lines += [
        "",
        f"Dataset {cfg['data']['name']}; teacher `{cfg['teacher']['model']['arch']}` "
        f"{cfg['teacher']['model']['kwargs']}; student `{cfg['student']['model']['arch']}` "
        f"{cfg['student']['model']['kwargs']}; KD T={cfg['kd']['T']}, alpha={cfg['kd']['alpha']}, "
        f"transfer set: {cfg['kd']['transfer']}; seeds {cfg['seeds']}.",
        "",
        "| role | params | test acc % (mean ± std) | test errors | test NLL | train s | n |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for role, a in agg.items():
        lines.append(
            f"| {role} | {int(a['params']):,} | {_pct(a['test_acc_mean'])} ± {_pct(a['test_acc_std'])} | "
            f"{a['test_errors_mean']:.0f} | {a['test_nll_mean']:.4f} | {a['train_seconds_mean']:.1f} | {int(a['n'])} |"
        )
    d = summary["derived"]
    lines.append("")
    if d.get("kd_minus_scratch") is not None:
        lines.append(f"- KD − scratch: **{100 * d['kd_minus_scratch']:+.2f} points** (mean test accuracy).")
    if d.get("label_smoothing_minus_scratch") is not None:
        lines.append(f"- label smoothing − scratch: {100 * d['label_smoothing_minus_scratch']:+.2f} points.")
    if d.get("gap_recovered") is not None:
        lines.append(
            f"- Share of the teacher–student gap recovered by KD, (kd − scratch) / (teacher − scratch): "
            f"{100 * d['gap_recovered']:.0f} %."
        )
    if d.get("compression") is not None:
        c = d["compression"]
        if c >= 1:
            lines.append(f"- The student has {c:.1f}× fewer parameters than the teacher.")
        else:
            lines.append(f"- The student has {1 / c:.1f}× more parameters than the teacher.")
    from kdistill.modes import mode_lines  # (modes imports the pipeline, which imports this module)

    lines += mode_lines(cfg)  # bullets, after the derived ones
    lines += _left_out_markdown(summary)
    lines += deploy_markdown(summary)
    lines += ["", "## Every model", "", "| role | seed | test acc % | errors | NLL | best epoch | train s |",
              "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in summary["rows"]:
        lines.append(
            f"| {row_key(r)} | {r['seed']} | {_pct(r['test_acc'])} | {r['test_errors']} | {r['test_nll']:.4f} | "
            f"{r.get('best_epoch', '-')} | {r['train_seconds']:.1f} |"
        )
    lines += ["", f"Reproduce: `{summary['command']}`"]
    if machine := machine_line(summary.get("environment")):
        lines += ["", machine]
    lines += ["", "![curves](curves.png)", ""]
    return "\n".join(lines)


def deploy_table(summary: dict) -> tuple[list[str], list[list[str]]] | None:
    """Header and rows of the deployment table (teacher, student), or None for runs without figures."""
    dep = summary.get("deploy") or {}
    if "teacher" not in dep or "student" not in dep:
        return None
    head = ["model", "params", "FLOPs / sample", "weights KiB", "latency ms, batch 1", "latency ms, batch 64",
            "student vs teacher"]  # fmt: skip
    verdicts = "; ".join(f"{role}: {v}" for role, v in dep.get("verdicts", {}).items())
    out = []
    for name in ("teacher", "student"):
        f = dep[name]
        out.append([name, f"{f['params']:,}", f"{f['flops_per_sample'] / 1e6:.2f} M",
                    f"{f['weights_bytes'] / 1024:.0f}", f"{f.get('latency_ms_b1', float('nan')):.3f}",
                    f"{f.get('latency_ms_b64', float('nan')):.2f}", verdicts if name == "student" else ""])  # fmt: skip
    return head, out


def deploy_markdown(summary: dict) -> list[str]:
    table = deploy_table(summary)
    if table is None:
        return []
    head, rows = table
    threads = summary["deploy"]["teacher"].get("threads", 1)
    lines = ["", "## Deployment (CPU, measured in one process)", "",
             f"Median of repeated forward passes after warm-up, eval mode, {threads} thread(s); FLOPs counted by "
             "PyTorch's FLOP counter (a multiply-add = 2).", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]  # fmt: skip
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _left_out_markdown(summary: dict) -> list[str]:
    """The transfer-set experiment: classes no student trained on, raw and with their bias corrected."""
    agg, cfg = summary["aggregate"], summary["config"]
    rows = [(role, a) for role, a in agg.items() if "left_out_acc_mean" in a]
    if not rows:
        return []
    fixed = cfg["kd"].get("bias_shift")
    head = "| role | left-out classes: acc % | overall acc % | label-free: left-out % | label-free: overall % |"
    sep = "|---|---:|---:|---:|---:|"
    if fixed is not None:
        head += f" shift +{fixed:g}: left-out % | shift +{fixed:g}: overall % |"
        sep += "---:|---:|"
    lines = ["", f"## Left out of the transfer set: classes {cfg['kd']['exclude_classes']}", "",
             "No student saw a training image of these classes; the teacher did. The label-free correction shifts "
             "their logits until the student's mean predicted probability of each on the validation images (pixels "
             "only, no labels) matches the teacher's.", "", head, sep]  # fmt: skip

    def cell(a: dict, key: str) -> str:
        return f"{_pct(a[key + '_mean'])} ± {_pct(a[key + '_std'])}" if key + "_mean" in a else "–"

    for role, a in rows:
        line = f"| {role} | {cell(a, 'left_out_acc')} | {cell(a, 'test_acc')} | {cell(a, 'label_free_left_out_acc')} "
        line += f"| {cell(a, 'label_free_test_acc')} |"
        if fixed is not None:
            line += f" {cell(a, 'fixed_shift_left_out_acc')} | {cell(a, 'fixed_shift_test_acc')} |"
        lines.append(line)
    return lines


def plot_curves(run_dir: Path, out: Path) -> bool:
    """Validation accuracy and training loss per epoch for every model, from its ``metrics.jsonl``."""
    from kdistill.why import new_figure, save_figure

    runs = sorted(p for p in run_dir.glob("*/metrics.jsonl"))
    if not runs:
        return False
    colors = {
        "teacher": "black",
        "scratch": "tab:blue",
        "kd": "tab:red",
        "label_smoothing": "tab:green",
        "dml": "tab:purple",
        "born_again": "tab:orange",
        "multi_teacher": "tab:brown",
        "ta_chain": "tab:cyan",
    }
    fig = new_figure((11, 4))
    axes = fig.subplots(1, 2)
    seen: set[str] = set()
    for p in runs:
        hist = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        role = p.parent.name.split("-seed")[0]
        ep = [h["epoch"] for h in hist]
        label = role if role not in seen else None
        seen.add(role)
        c = colors.get(role, "gray")
        axes[0].plot(ep, [100 * h["val_acc"] for h in hist], color=c, label=label, alpha=0.8, marker=".")
        axes[1].plot(ep, [h["train_loss"] for h in hist], color=c, label=label, alpha=0.8, marker=".")
    axes[0].set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy")
    axes[1].set(xlabel="epoch", ylabel="training loss (objective)", title="Training loss", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, out, dpi=100)
    return True


def write_summary(run_dir: Path, cfg: Any, rows: list[dict], smoke: bool, deploy: dict | None = None) -> dict:
    agg = aggregate(rows)
    derived: dict[str, Any] = {"gap_recovered": gap_recovered(agg)}
    for role in ("kd", "label_smoothing"):
        if role in agg and "scratch" in agg:
            derived[f"{role}_minus_scratch"] = agg[role]["test_acc_mean"] - agg["scratch"]["test_acc_mean"]
    if "teacher" in agg and "scratch" in agg:
        derived["compression"] = agg["teacher"]["params"] / agg["scratch"]["params"]
    summary = {
        "config": cfg.model_dump(mode="json"),
        "smoke": smoke,
        "rows": rows,
        "aggregate": agg,
        "derived": derived,
        "deploy": deploy or {},
        "command": "kdistill " + " ".join(sys.argv[1:])
        if Path(sys.argv[0]).name in ("kdistill", "__main__.py")
        else f"kdistill run <config> (name={cfg.name})",
        "environment": environment(),
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=_json_default) + "\n")
    # curves.png (linked from summary.md) is drawn with the other figures by kdistill.page.build_report.
    atomic_write_text(run_dir / "summary.md", summary_markdown(summary))
    return summary


def environment() -> dict:
    """Where a number was measured: Python, OS, torch, threads, CPU model and kernel path, GPU if any."""
    import torch

    env = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "cpu": cpu_name(),
           # The kernel path (AVX2, AVX512, ...) decides float rounding: the same seeds give the same
           # metrics on the same CPU kind, and may differ by a few tenths of a point on another.
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}  # fmt: skip
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name(0)
    return env


def machine_line(env: dict | None) -> str:
    """``"Measured on <cpu>, <kernel path>, torch <v>, <n> thread(s)."``, or ``""`` for summaries written
    before :func:`environment` recorded the CPU."""
    env = env or {}
    machine = ", ".join(str(env[k]) for k in ("cpu", "cpu_capability", "cuda_device") if env.get(k))
    return f"Measured on {machine}, torch {env.get('torch')}, {env.get('threads')} thread(s)." if machine else ""


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)
