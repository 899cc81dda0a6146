"""Hyper-parameter sweeps: ``kdistill sweep CONFIG kd.T=1,2,4,8,20 kd.alpha=0.5,0.9 [key=value ...]``.

Arguments
    ``key=v1,v2,...``  a sweep axis: each comma-separated value is parsed as a YAML scalar of its own
                       (``4`` int, ``0.5`` float, ``true`` bool, anything else a string; write strings unquoted).
    ``key=value``      a plain override, applied to every point (exactly as ``kdistill run`` takes it).
    A value that contains brackets, braces or quotes (a YAML list, mapping or quoted string) is always a
    plain override and never split on its commas: ``seeds=[0,1,2]`` and
    ``data.synthetic={n_train: 400, side: 8}`` are one override each.

The grid is the Cartesian product of the axes. Every point is validated (the config file, the plain
overrides and the point's values through :func:`kdistill.config.load_config`) before anything is trained,
so a typo or a wrong type in the last point fails in a second, not after hours.

Layout: ``<output_dir>/<name>-sweep/`` (``<name>-smoke-sweep`` with ``--smoke``) holds one ordinary run
directory per point, named by a readable slug of its values (``T4_alpha0.5``), a ``reference`` run, and
``sweep.json``, ``sweep.md``, ``sweep.png``.

Roles: at each point only the swept roles are trained (``--roles``, default ``kd``). The config's other
roles (``scratch``, ``label_smoothing`` when configured) are trained ONCE, in ``reference/``, with the base
config (plain overrides, no axis values). If an axis also changes those students (e.g. ``student.train.lr``),
pass ``--roles kd,scratch`` to train them at every point instead.

Teacher: every point (and the reference) uses the same teacher cache (``teacher_cache_dir``, or
``<output_dir>/_teachers`` as for ``kdistill run``), so the teacher is trained once, by the first point, and
reused by all the others (and by later runs and sweeps). A point whose teacher config differs (an axis on a
``teacher.*`` key) has another teacher key and trains (and caches) its own teacher.

Selection: the winner is the point with the best mean VALIDATION accuracy (over seeds) of its ``kd``
students (of the first swept role when ``kd`` is not swept); ties go to the earlier point in grid order.
Test accuracy is reported next to it but never used to choose.

Back-ends: the full grid is the only one for now (an Optuna back-end may come later).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import shlex
import statistics
import typing
from pathlib import Path
from typing import Any

import yaml

from kdistill.config import ConfigError, ExperimentConfig, Role, load_config, split_assignment
from kdistill.io import atomic_write_text

SWEEP_FORMAT = "kdistill-sweep/1"
ROLES: tuple[str, ...] = typing.get_args(Role)
# Keys that the sweep itself sets per point; as axes they would make no sense.
RESERVED_AXES = {"name", "output_dir", "teacher_cache_dir", "roles"}
_NOT_SPLIT = set("[]{}'\"")


# ----------------------------------------------------------------------------- arguments


def parse_sweep_args(args: list[str]) -> tuple[dict[str, list], list[str]]:
    """Split command-line arguments into sweep axes ``{key: [values]}`` and plain overrides.

    Raises :class:`ConfigError` for an argument without ``=``, an empty axis or an empty value in one,
    a repeated value, and a key given twice as an axis (or as an axis and a plain override).
    """
    axes: dict[str, list] = {}
    overrides: list[str] = []
    plain_keys: dict[str, str] = {}
    for text in args:
        key, raw = split_assignment(text, "sweep argument", "key=value or key=v1,v2,... (e.g. kd.T=2,4)")
        if "," not in raw or _NOT_SPLIT & set(raw):
            overrides.append(text)
            plain_keys[key] = text
            continue
        items = [s.strip() for s in raw.split(",")]
        if not any(items):
            raise ConfigError(f"sweep axis {key}: no values in {text!r}; give them as {key}=v1,v2,...")
        if not all(items):
            raise ConfigError(
                f"sweep axis {key}: empty value in {text!r} (a stray comma?); "
                f"give one value as {key}=value, several as {key}=v1,v2"
            )
        if key in axes:
            raise ConfigError(f"sweep axis {key} is given twice; put all its values in one {key}=v1,v2,...")
        values = [_scalar(key, s) for s in items]
        seen: set[tuple] = set()
        for v in values:
            same = ("number", v) if isinstance(v, (int, float)) and not isinstance(v, bool) else (type(v).__name__, v)
            if same in seen:  # 2 and 2.0 are the same point of a float field
                raise ConfigError(f"sweep axis {key}: value {v!r} appears twice in {text!r}")
            seen.add(same)
        axes[key] = values
    for key in axes:
        if key in plain_keys:
            raise ConfigError(f"{key} is both a sweep axis and a plain override ({plain_keys[key]!r}); give it once")
    return axes, overrides


def _scalar(key: str, text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep axis {key}: value {text!r} is not valid YAML ({e})") from None
    if isinstance(value, (dict, list)) or (value is not None and not isinstance(value, (str, int, float, bool))):
        raise ConfigError(f"sweep axis {key}: value {text!r} is not a scalar (a number, true/false or a string)")
    return value


def _render(value: Any) -> str:
    """A value as YAML text that parses back to the same value (``'1'`` stays a string)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    lines = [ln for ln in text.splitlines() if ln != "..."]
    return "\n".join(lines).strip()


def point_slug(point: dict[str, Any]) -> str:
    """A readable directory name for a point: ``{"kd.T": 4, "kd.alpha": 0.5}`` → ``T4_alpha0.5``.

    Each key is shortened to its shortest dotted suffix that is unique among the point's keys.
    """
    keys = list(point)
    parts = []
    for key in keys:
        label = _short_label(key, keys)
        value = re.sub(r"[^A-Za-z0-9.+-]+", "-", _render(point[key])).strip("-") or "x"
        sep = "-" if label[-1].isdigit() else ""
        parts.append(f"{label}{sep}{value}")
    slug = "_".join(parts)
    if len(slug) > 100:
        slug = slug[:80] + "_" + hashlib.sha256(slug.encode()).hexdigest()[:8]
    return slug


def _short_label(key: str, keys: list[str]) -> str:
    parts = key.split(".")
    for n in range(1, len(parts) + 1):
        label = ".".join(parts[-n:])
        if sum(1 for k in keys if k == label or k.endswith("." + label)) == 1:
            return label
    return key


# ----------------------------------------------------------------------------- selection


def select_winner(points: list[dict]) -> dict:
    """The point with the best mean validation accuracy (``val_acc_mean``); test accuracy is never read.

    Ties go to the earlier point. Points without a validation accuracy are skipped.
    """
    scored = [p for p in points if p.get("val_acc_mean") is not None and not math.isnan(p["val_acc_mean"])]
    if not scored:
        raise ValueError("no sweep point has a validation accuracy to select by")
    return max(scored, key=lambda p: p["val_acc_mean"])  # max keeps the first of equal keys


def _stats(rows: list[dict], role: str) -> dict:
    rs = [r for r in rows if r["role"] == role]
    out: dict[str, Any] = {"seeds": [r["seed"] for r in rs]}
    for key in ("val_acc", "test_acc"):
        vals = [float(r[key]) for r in rs if r.get(key) is not None]
        out[key] = vals
        out[f"{key}_mean"] = statistics.fmean(vals) if vals else None
        out[f"{key}_std"] = (statistics.stdev(vals) if len(vals) > 1 else 0.0) if vals else None
    return out


# ----------------------------------------------------------------------------- running


def _grid(axes: dict[str, list]) -> list[dict[str, Any]]:
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _control(output_dir: Path, name: str, cache: str, roles: list[str]) -> list[str]:
    return [
        f"output_dir={_render(str(output_dir))}",
        f"name={_render(name)}",
        f"teacher_cache_dir={_render(cache)}",
        f"roles=[{', '.join(roles)}]",
    ]


def _command(config_path: str | Path | None, args: list[str], smoke: bool, roles: list[str] | None) -> str:
    parts = ["kdistill", "sweep", str(config_path) if config_path is not None else "<defaults>", *args]
    if smoke:
        parts.append("--smoke")
    if roles:
        parts += ["--roles", ",".join(roles)]
    return shlex.join(parts)


def run_sweep(
    config_path: str | Path | None, args: list[str], smoke: bool = False, roles: list[str] | None = None
) -> dict:
    """Validate every point of the grid, then train each one and the reference run; write the sweep files.

    ``args`` are the command-line arguments after the config (axes and plain overrides), ``roles`` the
    roles trained at each point (default ``["kd"]``). Returns the content of ``sweep.json``.
    """
    from kdistill.pipeline import log, run_experiment

    axes, plain = parse_sweep_args(args)
    if not axes:
        raise ConfigError("no sweep axis given: name at least one key with several values, e.g. kd.T=1,2,4")
    base = load_config(config_path, plain)
    for key in axes:
        if key in RESERVED_AXES or key.split(".")[0] in RESERVED_AXES:
            hint = " (use --roles)" if key == "roles" else ""
            raise ConfigError(f"sweep axis {key}: the sweep sets this key itself; give it as a plain override{hint}")
    swept = list(dict.fromkeys(roles or ["kd"]))
    for r in swept:
        if r not in ROLES:
            raise ConfigError(f"--roles: unknown role {r!r}; valid roles: {', '.join(ROLES)}")
    select_role = "kd" if "kd" in swept else swept[0]
    references = [r for r in base.roles if r not in swept]

    sweep_dir = Path(base.output_dir) / f"{base.name}{'-smoke' if smoke else ''}-sweep"
    cache = base.teacher_cache_dir or str(Path(base.output_dir) / "_teachers")
    grid = _grid(axes)
    slugs: list[str] = []
    for point in grid:
        slug = point_slug(point)
        if slug in slugs or slug == "reference":
            slug = f"{slug}_{len(slugs)}"
        slugs.append(slug)

    # Validate everything before training anything.
    configs: list[ExperimentConfig] = []
    for i, (point, slug) in enumerate(zip(grid, slugs, strict=True)):
        point_ov = [f"{k}={_render(v)}" for k, v in point.items()]
        try:
            configs.append(load_config(config_path, [*plain, *point_ov, *_control(sweep_dir, slug, cache, swept)]))
        except ConfigError as e:
            raise ConfigError(f"sweep point {i + 1}/{len(grid)} ({' '.join(point_ov)}): {e}") from None
    ref_cfg = None
    if references:
        try:
            ref_cfg = load_config(config_path, [*plain, *_control(sweep_dir, "reference", cache, references)])
        except ConfigError as e:
            raise ConfigError(f"sweep reference run ({', '.join(references)}): {e}") from None

    sweep: dict[str, Any] = {
        "format": SWEEP_FORMAT,
        "status": "running",
        "name": base.name,
        "config_file": str(config_path) if config_path is not None else None,
        "command": _command(config_path, args, smoke, roles),
        "smoke": smoke,
        "axes": axes,
        "overrides": plain,
        "roles": swept,
        "select_role": select_role,
        "selection": f"best mean validation accuracy of the {select_role} students; test accuracy is never used",
        "teacher_cache_dir": cache,
        "points": [],
        "winner": None,
        "references": None,
        "teacher": None,
    }
    log(f"sweep: {len(grid)} points x {len(base.seeds)} seeds ({', '.join(swept)}) in {sweep_dir}")
    for i, (point, slug, cfg) in enumerate(zip(grid, slugs, configs, strict=True)):
        log(f"sweep: point {i + 1}/{len(grid)}: {slug}")
        summary = run_experiment(cfg, smoke=smoke)
        teacher = summary["rows"][0]
        rec: dict[str, Any] = {
            "index": i,
            "slug": slug,
            "overrides": point,
            "run_dir": str(Path(summary["config"]["output_dir"]) / summary["config"]["name"]),
            "teacher_key": cfg.teacher_key(),
            "teacher_source": teacher.get("source"),
            **_stats(summary["rows"], select_role),
            "roles": {r: _stats(summary["rows"], r) for r in swept},
        }
        sweep["points"].append(rec)
        if sweep["teacher"] is None:
            sweep["teacher"] = {k: teacher.get(k) for k in ("source", "weights", "val_acc", "test_acc", "params")}
        sweep["winner"] = _winner_summary(select_winner(sweep["points"]))
        write_sweep(sweep_dir, sweep, plot=False)  # progress survives an interrupted sweep

    if ref_cfg is not None:
        log(f"sweep: reference run ({', '.join(references)})")
        summary = run_experiment(ref_cfg, smoke=smoke)
        sweep["references"] = {
            "run_dir": str(Path(summary["config"]["output_dir"]) / summary["config"]["name"]),
            "teacher_source": summary["rows"][0].get("source"),
            "roles": {r: _stats(summary["rows"], r) for r in references},
        }
    sweep["status"] = "complete"
    write_sweep(sweep_dir, sweep)
    w = sweep["winner"]
    log(
        f"sweep: winner {w['slug']} ({_point_text(w['overrides'])}): val acc {_pct(w['val_acc_mean'])} %, "
        f"test acc {_pct(w['test_acc_mean'])} %; {sweep_dir / 'sweep.md'}"
    )
    return sweep


def _winner_summary(p: dict) -> dict:
    keys = ("index", "slug", "overrides", "run_dir", "val_acc_mean", "val_acc_std", "test_acc_mean", "test_acc_std")
    return {k: p.get(k) for k in keys}


# ----------------------------------------------------------------------------- outputs


def write_sweep(sweep_dir: Path, sweep: dict, plot: bool = True) -> None:
    """``sweep.json`` and ``sweep.md`` (atomically), then ``sweep.png`` drawn from the JSON just written."""
    text = json.dumps(sweep, indent=2) + "\n"
    atomic_write_text(sweep_dir / "sweep.json", text)
    atomic_write_text(sweep_dir / "sweep.md", sweep_markdown(sweep))
    if plot:
        plot_sweep(json.loads(text), sweep_dir / "sweep.png")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _pm(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{_pct(mean)} ± {_pct(std)}"


def _point_text(overrides: dict) -> str:
    return ", ".join(f"{k}={_render(v)}" for k, v in overrides.items())


def sweep_markdown(sweep: dict) -> str:
    axes = list(sweep["axes"])
    role = sweep["select_role"]
    n_grid = math.prod(len(v) for v in sweep["axes"].values())
    title = f"# Sweep: {sweep['name']}"
    if sweep["smoke"]:
        title += " (smoke run: tiny data, 1 epoch, numbers meaningless)"
    axes_text = "; ".join(f"`{k}` in {{{', '.join(_render(v) for v in vs)}}}" for k, vs in sweep["axes"].items())
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
        vals = " | ".join(_render(p["overrides"][k]) for k in axes)
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
            f"**Winner: {_point_text(w['overrides'])}** — validation {_pm(w['val_acc_mean'], w['val_acc_std'])} %, "
            f"test {_pm(w['test_acc_mean'], w['test_acc_std'])} %.",
        ]
    refs = sweep.get("references")
    t = sweep.get("teacher")
    if refs or t:
        lines += ["", "## References (base config, trained once)", "", "| role | val acc % | test acc % | seeds |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        if t:
            lines.append(f"| teacher ({t['source']}) | {_pct(t.get('val_acc'))} | {_pct(t.get('test_acc'))} | 1 |")
        for r, s in (refs or {}).get("roles", {}).items():
            lines.append(
                f"| {r} | {_pm(s['val_acc_mean'], s['val_acc_std'])} | {_pm(s['test_acc_mean'], s['test_acc_std'])} "
                f"| {len(s['seeds'])} |"
            )
    lines += ["", f"Reproduce: `{sweep['command']}`", "", "![sweep](sweep.png)", ""]
    return "\n".join(lines)


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_sweep(sweep: dict, out: Path) -> bool:
    """Validation and test accuracy of the selected role against the first axis, one line per value
    (combination) of the other axes, the reference students as horizontal lines, the winner starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sweep["points"]
    if not points:
        return False
    axes = sweep["axes"]
    first, *others = list(axes)
    xs_vals = axes[first]
    numeric = _numeric(xs_vals)
    pos = {_render(v): (v if numeric else i) for i, v in enumerate(xs_vals)}
    positive = numeric and all(v > 0 for v in xs_vals)
    logx = positive and (first == "kd.T" or max(xs_vals) / min(xs_vals) > 10)

    fig, (ax_val, ax_test) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    combos = list(itertools.product(*(axes[k] for k in others))) if others else [()]
    for combo in combos:
        want = {k: _render(v) for k, v in zip(others, combo, strict=True)}
        sel = [p for p in points if all(_render(p["overrides"][k]) == v for k, v in want.items())]
        sel.sort(key=lambda p: list(pos).index(_render(p["overrides"][first])))
        if not sel:
            continue
        label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in want.items()) or sweep["select_role"]
        x = [pos[_render(p["overrides"][first])] for p in sel]
        for ax, key in ((ax_val, "val_acc"), (ax_test, "test_acc")):
            y = [100 * p[f"{key}_mean"] for p in sel]
            err = [100 * (p[f"{key}_std"] or 0.0) for p in sel]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label, alpha=0.9)
    w = sweep.get("winner")
    if w:
        wx = pos[_render(w["overrides"][first])]
        ax_val.plot([wx], [100 * w["val_acc_mean"]], marker="*", color="gold", markersize=16, markeredgecolor="k",
                    linestyle="none", label="winner (validation)", zorder=5)  # fmt: skip
    refs = (sweep.get("references") or {}).get("roles", {})
    styles = {"scratch": ("tab:gray", "--"), "label_smoothing": ("tab:green", ":"), "kd": ("tab:red", "-.")}
    for role, s in refs.items():
        color, ls = styles.get(role, ("k", "--"))
        for ax, key in ((ax_val, "val_acc"), (ax_test, "test_acc")):
            if s.get(f"{key}_mean") is not None:
                ax.axhline(100 * s[f"{key}_mean"], color=color, linestyle=ls, label=f"{role} (reference)")
    for ax, title in ((ax_val, "Validation accuracy (selects the winner)"), (ax_test, "Test accuracy (reported only)")):
        if logx:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(list(pos.values()), list(pos))
        elif len(xs_vals) <= 12:
            ax.set_xticks(xs_vals, [_render(v) for v in xs_vals])
            ax.minorticks_off()
        ax.set(xlabel=first, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_val.set_ylabel("accuracy (%), mean ± std over seeds")
    fig.suptitle(f"Sweep {sweep['name']}" + (" (smoke)" if sweep.get("smoke") else ""))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name("." + out.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return True
