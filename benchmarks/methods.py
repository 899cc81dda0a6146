"""Every distillation method on both demo scenarios, 3 seeds, one table.

    .venv/bin/python benchmarks/methods.py --scenario compression   # hinton.yaml + its method configs
    .venv/bin/python benchmarks/methods.py --scenario few_labels    # few_labels.yaml + few_labels_*.yaml
    .venv/bin/python benchmarks/methods.py --smoke                  # the same, tiny data, seconds

For a scenario, the base config is run for the scratch student and vanilla logit KD, then every
method config of that scenario (``configs/fashion_mnist/<method>.yaml`` with ``base: <scenario>``) for
its KD student, then every mode config of that scenario (roles ``dml``, ``born_again``, ``multi_teacher``,
``ta_chain``; kdistill.experiment.roles) for each of its students of the student's architecture and each ensemble
(one row per DML peer, born-again generation, ...; assistants, of another architecture, are left out),
all with the same seeds and the shipped teacher. The table gives mean ± std test
accuracy, the difference to scratch and to vanilla KD, the share of the teacher–student gap recovered
``(method − scratch) / (teacher − scratch)``, the extra trainable parameters (adapters, heads) and the
time per optimizer step relative to the scratch student (steps, not epochs: in the few-labels scenario
the scratch student's epoch is 2,000 images and the KD student's 55,000). Everything in one scenario
runs in this one process with a fixed thread count, so the time ratios are comparable. Writes
``<out>/<scenario>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on shared cores

import yaml  # noqa: E402

from kdistill.config import config_schema, load_config  # noqa: E402
from kdistill.environment import environment, machine_line  # noqa: E402
from kdistill.experiment.roles import ROLES  # noqa: E402
from kdistill.experiment.run import run_experiment  # noqa: E402
from kdistill.io import atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "fashion_mnist"
SCENARIOS = {"compression": "hinton.yaml", "few_labels": "few_labels.yaml"}
# Roles beyond the three students of every config (mutual learning, born-again, several teachers, chains).
MODE_ROLES = [r for r in ROLES if r not in ("scratch", "kd", "label_smoothing")]


def method_configs(scenario: str) -> list[Path]:
    """Configs built on the scenario's base that add distillation terms (experiments without terms,
    such as leave_out_dress.yaml, share the base but are not methods)."""
    out = []
    for p in sorted(CONFIGS.glob("*.yaml")):
        raw = yaml.safe_load(p.read_text()) or {}
        # leave_out_dress.yaml carries a term too, but it is an experiment on another transfer set.
        if (
            raw.get("base") == SCENARIOS[scenario]
            and raw.get("terms")
            and not (raw.get("kd") or {}).get("exclude_classes")
        ):
            out.append(p)
    return out


def mode_configs(scenario: str) -> list[Path]:
    """Configs built on the scenario's base whose roles are mode roles: mutual learning, born-again
    generations, several teachers, teacher-assistant chains."""
    out = []
    for p in sorted(CONFIGS.glob("*.yaml")):
        raw = yaml.safe_load(p.read_text()) or {}
        if raw.get("base") == SCENARIOS[scenario] and set(raw.get("roles") or []) & set(MODE_ROLES):
            out.append(p)
    return out


def mode_rows(summary: dict, name: str) -> dict[str, tuple[list[dict], str]]:
    """``{label: (rows, description)}`` of a mode run: its models of the student's spec and its ensembles."""
    groups: dict[str, tuple[list[dict], str]] = {}
    cfg = config_schema().model_validate(summary["config"])  # also for runs written before summaries held roles
    for r in summary["rows"]:
        if r["role"] not in MODE_ROLES or not (r.get("student") or r.get("ensemble")):
            continue
        label = f"{name}/{r['variant']}" if r.get("variant") else name
        if label not in groups:
            groups[label] = ([], ROLES[r["role"]].describe(cfg, r.get("variant")))
        groups[label][0].append(r)
    return groups


def stats(rows: list[dict], key: str) -> tuple[float, float]:
    vals = [float(r[key]) for r in rows]
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def _per_step(rows: list[dict]) -> float:
    return statistics.fmean(r["train_seconds"] / max(1, r["steps"]) for r in rows)


def same_config(old: Any, new: Any, default: Any) -> bool:
    """Equal configs, where a key the old run did not know yet counts as equal if it has its default."""
    if isinstance(old, dict) and isinstance(new, dict):
        d = default if isinstance(default, dict) else {}
        return all(same_config(old[k], v, d.get(k)) if k in old else v == d.get(k) for k, v in new.items())
    return old == new


def run_config(cfg: Any, smoke: bool, reuse: bool) -> dict:
    """Run one config, or with ``reuse`` take its finished run when the resolved config is identical."""
    done = Path(cfg.output_dir) / cfg.name / "summary.json"
    if reuse and not smoke and done.is_file():
        old = json.loads(done.read_text())
        new = json.loads(json.dumps(cfg.model_dump(mode="json")))
        if same_config(old["config"], new, json.loads(json.dumps(type(cfg)().model_dump(mode="json")))):
            print(f"[methods] reusing {done} (same resolved config)", flush=True)
            return {**old, "reused": True}
    return run_experiment(cfg, smoke=smoke)


def run_scenario(
    scenario: str, seeds: list[int], threads: int, out: Path, smoke: bool, reuse: bool = False, skip: tuple = ()
) -> dict:
    common = [f"seeds={seeds}", f"threads={threads}", f"output_dir={out / scenario}"]
    base_path = CONFIGS / SCENARIOS[scenario]
    t0 = time.perf_counter()
    base = run_config(load_config(base_path, [*common, "roles=[scratch,kd]"]), smoke, reuse)
    summaries = [base]
    rows_by = {
        "scratch": [r for r in base["rows"] if r["role"] == "scratch"],
        "kd (vanilla)": [r for r in base["rows"] if r["role"] == "kd"],
    }
    teacher_acc = next(r["test_acc"] for r in base["rows"] if r["role"] == "teacher")
    described = {"scratch": "CE on the labelled set", "kd (vanilla)": "CE + logit KD (T, α of the base config)"}
    skipped: list[str] = []
    for path in method_configs(scenario):
        cfg = load_config(path, [*common, "roles=[kd]"])
        name = path.stem
        if name in skip:
            print(f"[methods] {scenario}: skipping {name} (--skip)", flush=True)
            skipped.append(name)
            continue
        print(f"[methods] {scenario}: {name} ({time.perf_counter() - t0:.0f}s so far)", flush=True)
        summary = run_config(cfg, smoke, reuse)
        summaries.append(summary)
        rows_by[name] = [r for r in summary["rows"] if r["role"] == "kd"]
        terms = ", ".join(f"{t['method']}×{t['weight']:g}" for t in summary["config"]["terms"])
        described[name] = ("CE + logit KD + " if cfg.kd.alpha > 0 else "CE + ") + terms

    for path in mode_configs(scenario):
        name = path.stem
        if name in skip:
            print(f"[methods] {scenario}: skipping {name} (--skip)", flush=True)
            skipped.append(name)
            continue
        roles = [r for r in load_config(path).roles if r in MODE_ROLES]
        cfg = load_config(path, [*common, f"roles=[{', '.join(roles)}]"])
        print(f"[methods] {scenario}: {name} ({time.perf_counter() - t0:.0f}s so far)", flush=True)
        summary = run_config(cfg, smoke, reuse)
        summaries.append(summary)
        for label, (rows, text) in mode_rows(summary, name).items():
            rows_by[label], described[label] = rows, text

    scratch_acc, _ = stats(rows_by["scratch"], "test_acc")
    kd_acc, _ = stats(rows_by["kd (vanilla)"], "test_acc")
    scratch_step = max(_per_step(rows_by["scratch"]), 1e-9)
    table = []
    for name, rows in rows_by.items():
        mean, std = stats(rows, "test_acc")
        gap = (mean - scratch_acc) / (teacher_acc - scratch_acc) if abs(teacher_acc - scratch_acc) > 1e-12 else None
        table.append(
            {
                "method": name,
                "loss": described[name],
                "n": len(rows),
                "test_acc_mean": mean,
                "test_acc_std": std,
                "delta_scratch": mean - scratch_acc,
                "delta_kd": mean - kd_acc,
                "gap_recovered": gap,
                "extra_params": int(rows[0].get("extra_params", 0)),
                "step_time_ratio": _per_step(rows) / scratch_step,
            }
        )
    result = {
        "scenario": scenario,
        "base": SCENARIOS[scenario],
        "seeds": seeds,
        "threads": threads,
        "smoke": smoke,
        "teacher_test_acc": teacher_acc,
        "wall_seconds": time.perf_counter() - t0,
        "table": table,
        "reused": [s["config"]["name"] for s in summaries if s.get("reused")],
        # what trained each run (a --reuse table may be assembled elsewhere): from the run's own summary
        "trained_on": {
            s["config"]["name"]: machine_line(s.get("environment")) or "not recorded (a run older than the record)"
            for s in summaries
        },
        "skipped": skipped,
        "environment": {**environment(), "threads": threads},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    return result


def markdown(res: dict) -> str:
    lines = [
        f"### {res['scenario']} ({res['base']}; seeds {res['seeds']}; teacher {100 * res['teacher_test_acc']:.2f} %)"
        + (" — smoke run, numbers meaningless" if res["smoke"] else ""),
        "",
        "| method | loss | test acc % (mean ± std) | Δ scratch | Δ vanilla KD | gap recovered | extra params "
        "| time/step vs scratch |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["table"]:
        gap = f"{100 * r['gap_recovered']:.0f} %" if r["gap_recovered"] is not None else "–"
        lines.append(
            f"| {r['method']} | {r['loss']} | {100 * r['test_acc_mean']:.2f} ± {100 * r['test_acc_std']:.2f} "
            f"| {100 * r['delta_scratch']:+.2f} | {100 * r['delta_kd']:+.2f} | {gap} | {r['extra_params']:,} "
            f"| {r['step_time_ratio']:.2f}× |"
        )
    if res.get("skipped"):
        lines += ["", f"Not run (`--skip`): {', '.join(res['skipped'])}."]
    reused = f"; {len(res['reused'])} finished run(s) reused: {', '.join(res['reused'])}" if res.get("reused") else ""
    lines += [
        "",
        f"{res['wall_seconds'] / 60:.0f} min on {res['threads']} thread(s) in this invocation{reused}; "
        f"command: `{res['command']}`",
    ]
    by_machine: dict[str, list[str]] = {}
    for name, machine in (res.get("trained_on") or {}).items():
        by_machine.setdefault(machine, []).append(name)
    if by_machine:
        lines += ["", "Trained on (each run's own record):"]
        lines += [f"- {m.removeprefix('Measured on ')}: {', '.join(names)}" for m, names in by_machine.items()]
    if machine := machine_line(res.get("environment")):
        lines += ["", f"Table assembled on: {machine.removeprefix('Measured on ')}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=[*SCENARIOS, "both"], default="both")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/methods")
    ap.add_argument("--smoke", action="store_true", help="tiny data, one epoch: checks the benchmark runs")
    ap.add_argument("--reuse", action="store_true", help="take finished runs under --out whose config is unchanged")
    ap.add_argument("--skip", default="", help="method configs not to run, e.g. few_labels_rkd,crd")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    for scenario in SCENARIOS if args.scenario == "both" else [args.scenario]:
        skip = tuple(n.strip() for n in args.skip.split(",") if n.strip())
        res = run_scenario(scenario, seeds, args.threads, out, args.smoke, args.reuse, skip)
        atomic_write_text(out / f"{scenario}.json", json.dumps(res, indent=2))
        atomic_write_text(out / f"{scenario}.md", markdown(res))
        print(markdown(res), flush=True)


if __name__ == "__main__":
    main()
