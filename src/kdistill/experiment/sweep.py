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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdistill.config import ConfigError, ExperimentConfig, load_config, role_names, split_assignment, yaml_text
from kdistill.experiment.context import log
from kdistill.experiment.run import run_experiment
from kdistill.io import atomic_write_text
from kdistill.metrics import percent
from kdistill.report.figures import plot_sweep
from kdistill.report.sweep import point_text, sweep_markdown

SWEEP_FORMAT = "kdistill-sweep/1"
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


def point_slug(point: dict[str, Any]) -> str:
    """A readable directory name for a point: ``{"kd.T": 4, "kd.alpha": 0.5}`` → ``T4_alpha0.5``.

    Each key is shortened to its shortest dotted suffix that is unique among the point's keys.
    """
    keys = list(point)
    parts = []
    for key in keys:
        label = _short_label(key, keys)
        value = re.sub(r"[^A-Za-z0-9.+-]+", "-", yaml_text(point[key])).strip("-") or "x"
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
        f"output_dir={yaml_text(str(output_dir))}",
        f"name={yaml_text(name)}",
        f"teacher_cache_dir={yaml_text(cache)}",
        f"roles=[{', '.join(roles)}]",
    ]


def _command(config_path: str | Path | None, args: list[str], smoke: bool, roles: list[str] | None) -> str:
    parts = ["kdistill", "sweep", str(config_path) if config_path is not None else "<defaults>", *args]
    if smoke:
        parts.append("--smoke")
    if roles:
        parts += ["--roles", ",".join(roles)]
    return shlex.join(parts)


@dataclass
class _Plan:
    """A validated sweep: every point's config, and the reference run's, before anything is trained."""

    name: str  # the base config's
    seeds: int
    axes: dict[str, list]
    plain: list[str]
    swept: list[str]
    select_role: str
    references: list[str]
    sweep_dir: Path
    cache: str
    grid: list[dict[str, Any]]
    slugs: list[str]
    configs: list[ExperimentConfig]
    ref_cfg: ExperimentConfig | None


def _plan(config_path: str | Path | None, args: list[str], smoke: bool, roles: list[str] | None) -> _Plan:
    """Parse the arguments and validate every point of the grid (and the reference run)."""
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
        if r not in role_names():
            raise ConfigError(f"--roles: unknown role {r!r}; valid roles: {', '.join(role_names())}")
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
    configs: list[ExperimentConfig] = []
    for i, (point, slug) in enumerate(zip(grid, slugs, strict=True)):
        point_ov = [f"{k}={yaml_text(v)}" for k, v in point.items()]
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
    select_role = "kd" if "kd" in swept else swept[0]
    return _Plan(
        base.name,
        len(base.seeds),
        axes,
        plain,
        swept,
        select_role,
        references,
        sweep_dir,
        cache,
        grid,
        slugs,
        configs,
        ref_cfg,
    )


def run_sweep(
    config_path: str | Path | None, args: list[str], smoke: bool = False, roles: list[str] | None = None
) -> dict:
    """Validate every point of the grid, then train each one and the reference run; write the sweep files.

    ``args`` are the command-line arguments after the config (axes and plain overrides), ``roles`` the
    roles trained at each point (default ``["kd"]``). Returns the content of ``sweep.json``.
    """
    plan = _plan(config_path, args, smoke, roles)
    sweep = _new_sweep(plan, config_path, args, smoke, roles)
    n = len(plan.grid)
    log(f"sweep: {n} points x {plan.seeds} seeds ({', '.join(plan.swept)}) in {plan.sweep_dir}")
    for i, (point, slug, cfg) in enumerate(zip(plan.grid, plan.slugs, plan.configs, strict=True)):
        log(f"sweep: point {i + 1}/{n}: {slug}")
        summary = run_experiment(cfg, smoke=smoke)
        teacher = summary["rows"][0]
        record = {"index": i, "slug": slug, "overrides": point, "run_dir": _run_dir(summary)}
        record |= {"teacher_key": cfg.teacher_key(), "teacher_source": teacher.get("source")}
        record |= {**_stats(summary["rows"], plan.select_role)}
        sweep["points"].append({**record, "roles": {r: _stats(summary["rows"], r) for r in plan.swept}})
        if sweep["teacher"] is None:
            sweep["teacher"] = {k: teacher.get(k) for k in ("source", "weights", "val_acc", "test_acc", "params")}
        sweep["winner"] = _winner_summary(select_winner(sweep["points"]))
        write_sweep(plan.sweep_dir, sweep, plot=False)  # progress survives an interrupted sweep
    if plan.ref_cfg is not None:
        log(f"sweep: reference run ({', '.join(plan.references)})")
        summary = run_experiment(plan.ref_cfg, smoke=smoke)
        sweep["references"] = {
            "run_dir": _run_dir(summary),
            "teacher_source": summary["rows"][0].get("source"),
            "roles": {r: _stats(summary["rows"], r) for r in plan.references},
        }
    sweep["status"] = "complete"
    write_sweep(plan.sweep_dir, sweep)
    w = sweep["winner"]
    log(
        f"sweep: winner {w['slug']} ({point_text(w['overrides'])}): val acc {percent(w['val_acc_mean'])} %, "
        f"test acc {percent(w['test_acc_mean'])} %; {plan.sweep_dir / 'sweep.md'}"
    )
    return sweep


def _new_sweep(
    plan: _Plan, config_path: str | Path | None, args: list[str], smoke: bool, roles: list[str] | None
) -> dict[str, Any]:
    """``sweep.json`` before the first point has run."""
    return {
        "format": SWEEP_FORMAT,
        "status": "running",
        "name": plan.name,
        "config_file": str(config_path) if config_path is not None else None,
        "command": _command(config_path, args, smoke, roles),
        "smoke": smoke,
        "axes": plan.axes,
        "overrides": plan.plain,
        "roles": plan.swept,
        "select_role": plan.select_role,
        "selection": f"best mean validation accuracy of the {plan.select_role} students; test accuracy is never used",
        "teacher_cache_dir": plan.cache,
        "points": [],
        "winner": None,
        "references": None,
        "teacher": None,
    }


def _run_dir(summary: dict) -> str:
    return str(Path(summary["config"]["output_dir"]) / summary["config"]["name"])


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
