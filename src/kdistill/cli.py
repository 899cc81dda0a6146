"""Command line: ``kdistill run CONFIG [dotted.key=value ...] [--smoke]``."""

from __future__ import annotations

import argparse
import sys

from kdistill.config import ConfigError, load_config
from kdistill.data import DataError
from kdistill.io import CheckpointError


def _cmd_run(args: argparse.Namespace) -> int:
    from kdistill.pipeline import run_experiment
    from kdistill.report import summary_markdown

    cfg = load_config(args.config, args.overrides)
    summary = run_experiment(cfg, smoke=args.smoke)
    print(summary_markdown(summary).split("\n## Every model")[0])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kdistill", description="Knowledge distillation toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train/load the teacher, then scratch, KD and label-smoothing students")
    p.add_argument("config", help="YAML experiment config, e.g. configs/fashion_mnist/hinton.yaml")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. kd.T=8 seeds=[0,1]")
    p.add_argument("--smoke", action="store_true", help="a few hundred samples, one epoch: checks a config in seconds")
    p.set_defaults(func=_cmd_run)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"kdistill: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # model spec / checkpoint shape problems carry their own explanation
        print(f"kdistill: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
