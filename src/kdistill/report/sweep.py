"""``sweep.md``: the grid of a sweep, the winner (chosen on validation accuracy) and the references."""

from __future__ import annotations

import math

from kdistill.config import yaml_text
from kdistill.metrics import percent


def _pm(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{percent(mean)} ± {percent(std)}"


def point_text(overrides: dict) -> str:
    return ", ".join(f"{k}={yaml_text(v)}" for k, v in overrides.items())


def sweep_markdown(sweep: dict) -> str:
    axes = list(sweep["axes"])
    role = sweep["select_role"]
    n_grid = math.prod(len(v) for v in sweep["axes"].values())
    title = f"# Sweep: {sweep['name']}"
    if sweep["smoke"]:
        title += " (smoke run: tiny data, 1 epoch, numbers meaningless)"
    axes_text = "; ".join(f"`{k}` in {{{', '.join(yaml_text(v) for v in vs)}}}" for k, vs in sweep["axes"].items())
    lines = [title, ""]
    if sweep["status"] != "complete":
        lines += [f"**Incomplete: {len(sweep['points'])} of {n_grid} points done.**", ""]
    lines += [
        f"Axes: {axes_text}. Roles trained at each point: {', '.join(sweep['roles'])}.",
        "",
        f"Selection: {sweep['selection']}. The winner is marked ★.",
        "",
        f"| | {' | '.join(f'`{k}`' for k in axes)} | {role} val acc % (mean ± std) | {role} test acc % (mean ± std) "
        "| seeds | run |",
        f"|---|{'---:|' * len(axes)}---:|---:|---:|---|",
    ]
    win = sweep["winner"]["index"] if sweep.get("winner") else None
    for p in sweep["points"]:
        mark = "★" if p["index"] == win else ""
        vals = " | ".join(yaml_text(p["overrides"][k]) for k in axes)
        val = _pm(p["val_acc_mean"], p["val_acc_std"])
        if p["index"] == win:
            val = f"**{val}**"
        lines.append(
            f"| {mark} | {vals} | {val} | {_pm(p['test_acc_mean'], p['test_acc_std'])} | {len(p['seeds'])} "
            f"| `{p['slug']}` |"
        )
    if sweep.get("winner"):
        w = sweep["winner"]
        lines += [
            "",
            f"**Winner: {point_text(w['overrides'])}** — validation {_pm(w['val_acc_mean'], w['val_acc_std'])} %, "
            f"test {_pm(w['test_acc_mean'], w['test_acc_std'])} %.",
        ]
    lines += _references(sweep)
    lines += ["", f"Reproduce: `{sweep['command']}`", "", "![sweep](sweep.png)", ""]
    return "\n".join(lines)


def _references(sweep: dict) -> list[str]:
    """The teacher and the roles trained once with the base config, beside the grid."""
    refs, t = sweep.get("references"), sweep.get("teacher")
    if not (refs or t):
        return []
    lines = ["", "## References (base config, trained once)", "", "| role | val acc % | test acc % | seeds |"]
    lines.append("|---|---:|---:|---:|")
    if t:
        lines.append(f"| teacher ({t['source']}) | {percent(t.get('val_acc'))} | {percent(t.get('test_acc'))} | 1 |")
    for r, s in (refs or {}).get("roles", {}).items():
        lines.append(
            f"| {r} | {_pm(s['val_acc_mean'], s['val_acc_std'])} | {_pm(s['test_acc_mean'], s['test_acc_std'])} "
            f"| {len(s['seeds'])} |"
        )
    return lines
