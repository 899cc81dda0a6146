"""Does KD work for regression? Run every ``configs/regression/*.yaml`` (3 seeds each) and collect their tables and
figures into ``benchmarks/results/regression.md`` (+ ``regression/<config>-*.png``, ``regression.json``).

    .venv/bin/python benchmarks/regression.py                 # ~4 min on 2 cores (configs in two processes)
    .venv/bin/python benchmarks/regression.py --smoke --out /tmp/r

Each config is one ``kdistill run``; a finished run directory is reused only when its config is the same
(``--resume`` semantics), so re-running after an interruption continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdistill.environment import environment  # noqa: E402
from kdistill.experiment.regression_run import run_regression  # noqa: E402
from kdistill.regression.config import load_regression_config  # noqa: E402
from kdistill.report.page import md_table  # noqa: E402
from kdistill.report.regression import gain_table, quality_table  # noqa: E402

CONFIGS = sorted((ROOT / "configs" / "regression").glob("*.yaml"))


def _one(config: Path, runs: Path, smoke: bool) -> dict:
    cfg = load_regression_config(config, [f"output_dir={runs}", "threads=1"])
    run_dir = runs / (cfg.name + ("-smoke" if smoke else ""))
    resume = (run_dir / "config.yaml").is_file()
    return run_regression(cfg, smoke=smoke, resume=resume)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "regression")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--jobs", type=int, default=2, help="configs trained at once (1 thread each)")
    args = ap.parse_args(argv)
    with ProcessPoolExecutor(args.jobs) as pool:
        summaries = list(pool.map(_one, CONFIGS, [args.runs] * len(CONFIGS), [args.smoke] * len(CONFIGS)))
    figs = args.out / "regression"
    figs.mkdir(parents=True, exist_ok=True)
    env = environment()
    lines = [
        "# Does KD work for regression? (benchmarks/regression.py)",
        "",
        f"Machine: {env.get('cpu', '?')}; torch {env['torch']}; 1 thread per run.",
        "",
    ]
    if args.smoke:
        lines += ["**Smoke run: tiny data and steps, numbers meaningless.**", ""]
    for config, s in zip(CONFIGS, summaries, strict=True):
        name = config.stem
        lines += [
            f"## {name} (`configs/regression/{config.name}`)",
            "",
            f"Reproduce: `.venv/bin/kdistill run configs/regression/{config.name}`",
            "",
        ]
        lines += md_table(*quality_table(s)) + [""] + md_table(*gain_table(s)) + [""]
        run_dir = args.runs / (s["config"]["name"] + ("-smoke" if args.smoke else ""))
        for f in s.get("figures", []):
            shutil.copyfile(run_dir / f, figs / f"{name}-{f}")
            lines += [f"![{name} {f}](regression/{name}-{f})", ""]
    (args.out / "regression.md").write_text("\n".join(lines))
    keep = ("config", "rows", "aggregate", "gains", "environment", "teacher")
    (args.out / "regression.json").write_text(json.dumps([{k: s[k] for k in keep} for s in summaries], indent=1))
    print(f"wrote {args.out / 'regression.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
