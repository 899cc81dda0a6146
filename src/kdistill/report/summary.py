"""``summary.json`` and ``summary.md`` of a run: its rows, their mean and spread per role, what each role
said about itself, the deployment figures and the machine.

Takes plain data only (rows, the resolved config as a dict, the roles' own descriptions): it knows
nothing of how the rows were trained, so a new role needs nothing here.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from kdistill.environment import environment, machine_line
from kdistill.io import atomic_write_text
from kdistill.metrics import percent

LEFT_OUT_KEYS = (
    "left_out_acc",
    "label_free_left_out_acc",
    "label_free_test_acc",
    "fixed_shift_left_out_acc",
    "fixed_shift_test_acc",
)


def row_key(row: dict) -> str:
    """What a row is aggregated under: its role, or ``role/variant`` (``dml/peer0``, ``born_again/gen2``)."""
    return f"{row['role']}/{row['variant']}" if row.get("variant") else row["role"]


def aggregate(rows: list[dict], order: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (n-1) per role, or per role and variant (``dml/peer0``), roles in
    ``order`` (default: as they first appear), each role's variants as they first appear."""
    out: dict[str, dict[str, float]] = {}
    roles = list(dict.fromkeys([*(order or []), *(r["role"] for r in rows)]))
    keys = [k for role in roles for k in dict.fromkeys(row_key(r) for r in rows if r["role"] == role)]
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


def md_text(value: object) -> str:
    """Text from data or config made inert in Markdown: ``&``, ``<`` and ``>`` as entities (no HTML gets through
    a Markdown renderer), ``|`` escaped (no table is split), line breaks as spaces."""
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return " ".join(text.splitlines())


def summary_markdown(summary: dict) -> str:
    """``summary.md``: what was run, mean ± std per role, what follows from it, deployment, every model."""
    lines = [*_md_results(summary), *_md_findings(summary), *_left_out_markdown(summary), *deploy_markdown(summary)]
    lines += _md_every_model(summary)
    lines += ["", f"Reproduce: `{summary['command']}`"]
    if machine := machine_line(summary.get("environment")):
        lines += ["", machine]
    lines += ["", "![curves](curves.png)", ""]
    return "\n".join(lines)


def data_line(summary: dict) -> str:
    """One sentence on the data a run found: classes, split sizes, input shape, where inputs were held."""
    d = summary.get("data") or {}
    if not d:
        return ""
    names, n = d["class_names"], d["counts"]
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    held = "read from disk a batch at a time" if d["held"] == "disk" else "in memory"
    return (
        f"Data: {len(names)} classes ({shown}); train {n['train']:,}, validation {n['val']:,}, test {n['test']:,}; "
        f"inputs {'×'.join(str(s) for s in d['input_shape'])}, {held}; details in data.json."
    )


def _md_results(summary: dict) -> list[str]:
    agg, cfg = summary["aggregate"], summary["config"]
    smoke = " (smoke run: tiny data, 1 epoch, numbers meaningless)" if summary["smoke"] else ""
    lines = [f"# {md_text(cfg['name'])}{smoke}"]
    if cfg.get("description"):
        lines += ["", md_text(cfg["description"].strip())]
    t, s = cfg["teacher"]["model"], cfg["student"]["model"]
    tta = cfg["teacher"].get("tta")  # summaries written before teacher.tta existed have no key
    views = f" with test-time shifts {md_text(tta)}" if tta else ""
    lines += [
        "",
        f"Dataset {md_text(cfg['data']['name'])}; teacher {md_text(t['arch'])} {md_text(t['kwargs'])}{views}; student "
        f"{md_text(s['arch'])} {md_text(s['kwargs'])}; KD T={cfg['kd']['T']}, alpha={cfg['kd']['alpha']}, "
        f"transfer set: {cfg['kd']['transfer']}; seeds {cfg['seeds']}.",
        *(["", md_text(line)] if (line := data_line(summary)) else []),
        "",
        "| role | params | test acc % (mean ± std) | test errors | test NLL | train s | n |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for role, a in agg.items():
        lines.append(
            f"| {role} | {int(a['params']):,} | {percent(a['test_acc_mean'])} ± {percent(a['test_acc_std'])} | "
            f"{a['test_errors_mean']:.0f} | {a['test_nll_mean']:.4f} | {a['train_seconds_mean']:.1f} | {int(a['n'])} |"
        )
    return lines


def _md_findings(summary: dict) -> list[str]:
    """The derived differences, then what each role says about itself."""
    d = summary["derived"]
    lines = [""]
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
    for name, info in summary.get("roles", {}).items():
        if info.get("description"):
            lines.append(f"- {name}: {md_text(info['description'])}.")
    return lines


def _md_every_model(summary: dict) -> list[str]:
    lines = [
        "",
        "## Every model",
        "",
        "| role | seed | test acc % | errors | NLL | best epoch | train s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {row_key(r)} | {r['seed']} | {percent(r['test_acc'])} | {r['test_errors']} | {r['test_nll']:.4f} | "
            f"{r.get('best_epoch', '-')} | {r['train_seconds']:.1f} |"
        )
    return lines


def deploy_table(summary: dict) -> tuple[list[str], list[list[str]]] | None:
    """Header and rows of the deployment table (teacher, student), or None for runs without figures."""
    dep = summary.get("deploy") or {}
    if "teacher" not in dep or "student" not in dep:
        return None
    head = [
        "model",
        "params",
        "FLOPs / sample",
        "weights KiB",
        "latency ms, batch 1",
        "latency ms, batch 64",
        "student vs teacher",
    ]
    verdicts = "; ".join(f"{role}: {v}" for role, v in dep.get("verdicts", {}).items())
    out = []
    for name in ("teacher", "student"):
        f = dep[name]
        out.append(
            [
                name,
                f"{f['params']:,}",
                f"{f['flops_per_sample'] / 1e6:.2f} M",
                f"{f['weights_bytes'] / 1024:.0f}",
                f"{f.get('latency_ms_b1', float('nan')):.3f}",
                f"{f.get('latency_ms_b64', float('nan')):.2f}",
                verdicts if name == "student" else "",
            ]
        )
    return head, out


def deploy_markdown(summary: dict) -> list[str]:
    table = deploy_table(summary)
    if table is None:
        return []
    head, rows = table
    threads = summary["deploy"]["teacher"].get("threads", 1)
    lines = [
        "",
        "## Deployment (CPU, measured in one process)",
        "",
        f"Median of repeated forward passes after warm-up, eval mode, {threads} thread(s); FLOPs counted by "
        "PyTorch's FLOP counter (a multiply-add = 2).",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 2) + "---|",
    ]
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
    lines = [
        "",
        f"## Left out of the transfer set: classes {md_text(cfg['kd']['exclude_classes'])}",
        "",
        "No student saw a training image of these classes; the teacher did. The label-free correction shifts "
        "their logits until the student's mean predicted probability of each on the validation images (pixels "
        "only, no labels) matches the teacher's.",
        "",
        head,
        sep,
    ]

    def cell(a: dict, key: str) -> str:
        return f"{percent(a[key + '_mean'])} ± {percent(a[key + '_std'])}" if key + "_mean" in a else "–"

    for role, a in rows:
        line = f"| {role} | {cell(a, 'left_out_acc')} | {cell(a, 'test_acc')} | {cell(a, 'label_free_left_out_acc')} "
        line += f"| {cell(a, 'label_free_test_acc')} |"
        if fixed is not None:
            line += f" {cell(a, 'fixed_shift_left_out_acc')} | {cell(a, 'fixed_shift_test_acc')} |"
        lines.append(line)
    return lines


def run_command(name: str) -> str:
    """The command that made this run, as typed when it came from the CLI (else a placeholder naming it)."""
    if Path(sys.argv[0]).name in ("kdistill", "__main__.py"):
        return "kdistill " + " ".join(sys.argv[1:])
    return f"kdistill run <config> (name={name})"


def write_summary(
    run_dir: Path,
    cfg: dict,
    rows: list[dict],
    roles: dict[str, dict],
    smoke: bool,
    deploy: dict | None = None,
    data: dict | None = None,
) -> dict:
    """Write ``summary.json`` and ``summary.md`` from plain data; returns the summary.

    ``cfg`` is the resolved config as a dict, ``roles`` what each role of the run says about itself
    (``{name: {label, color, order, description?, variants?}}``, the teacher first), in table order;
    ``data`` what was found in the data (``source``, ``class_names``, ``counts``, ``input_shape``, ``held``).
    """
    order = sorted(roles, key=lambda r: roles[r].get("order", 100))
    agg = aggregate(rows, order)
    derived: dict[str, Any] = {"gap_recovered": gap_recovered(agg)}
    for role in ("kd", "label_smoothing"):
        if role in agg and "scratch" in agg:
            derived[f"{role}_minus_scratch"] = agg[role]["test_acc_mean"] - agg["scratch"]["test_acc_mean"]
    if "teacher" in agg and "scratch" in agg:
        derived["compression"] = agg["teacher"]["params"] / agg["scratch"]["params"]
    summary = {
        "config": cfg,
        "smoke": smoke,
        "rows": rows,
        "aggregate": agg,
        "derived": derived,
        "roles": {r: roles[r] for r in order},
        "deploy": deploy or {},
        "data": data or {},
        "command": run_command(cfg["name"]),
        "environment": environment(),
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=_json_default) + "\n")
    # curves.png (linked from summary.md) is drawn with the other figures by kdistill.report.html.build_report.
    atomic_write_text(run_dir / "summary.md", summary_markdown(summary))
    return summary


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)
