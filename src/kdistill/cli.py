"""Command line: ``kdistill run CONFIG [dotted.key=value ...] [--smoke] [--resume] [--device auto|cpu|cuda]``
(also under ``torchrun --nproc_per_node=N -m kdistill run ...``),
``kdistill sweep CONFIG kd.T=1,2,4 kd.alpha=0.5,0.9 [dotted.key=value ...] [--smoke] [--roles kd]`` and
``kdistill layers MODEL_SPEC --input-shape 1,1,28,28 [--num-classes 10] [--kwargs '{"hidden": [300]}']`` and
``kdistill report RUN_DIR [--toy]`` and ``kdistill data CONFIG [dotted.key=value ...]`` and
``kdistill export RUN_DIR [--format onnx,safetensors,torchscript] [--role R] [--seed S] [--out DIR]``."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import yaml

from kdistill import dist
from kdistill.caches import CacheError
from kdistill.config import ConfigError, load_config, task_of
from kdistill.data import DataError, load_data
from kdistill.data.inspect import describe
from kdistill.dist import DistError
from kdistill.encoder.config import load_encoder_config
from kdistill.experiment.encoder_run import run_encoder
from kdistill.experiment.regression_run import run_regression
from kdistill.experiment.run import JobError, run_experiment
from kdistill.experiment.sweep import run_sweep
from kdistill.experiment.text_run import run_text
from kdistill.export import DEFAULT_FORMATS, export_run
from kdistill.io import CheckpointError
from kdistill.lock import RunDirBusy
from kdistill.models import build_model
from kdistill.regression.config import load_regression_config
from kdistill.regression.teacher import TeacherError
from kdistill.report.encoder import encoder_markdown
from kdistill.report.figures import plot_decision_regions
from kdistill.report.html import build_report
from kdistill.report.regression import rebuild_regression_report, regression_markdown
from kdistill.report.summary import summary_markdown
from kdistill.report.sweep import sweep_markdown
from kdistill.report.text import text_markdown
from kdistill.taps import format_layer_table, layer_table
from kdistill.text.config import load_text_config
from kdistill.text.tokenizers import TextError
from kdistill.toy import run_toy
from kdistill.trainer import RunInterrupted


def _cmd_run(args: argparse.Namespace) -> int:
    task = task_of(args.config, list(args.overrides))
    one_process = task in ("text", "encoder", "regression")  # the image experiment alone splits seeds and ranks
    if one_process and args.jobs != 1:
        raise ConfigError(f"--jobs applies to image runs; a {task} config trains its seeds in one process")
    if one_process and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # each rank would run the whole job and write the same run directory: one process, one device
        raise ConfigError(f"a {task} run trains in one process: run it without torchrun (image runs scale with it)")
    if task in ("text", "regression") and args.device not in (None, "cpu"):
        raise ConfigError(f"--device {args.device}: a {task} run trains on the CPU; drop --device")
    device = [f"device={args.device}"] if args.device else []
    if task == "text":  # a language-model run
        summary = run_text(load_text_config(args.config, list(args.overrides)), smoke=args.smoke, resume=args.resume)
        print(text_markdown(summary).split("\n**")[0])
        return 0
    if task == "encoder":  # a sentence encoder made smaller
        cfg = load_encoder_config(args.config, list(args.overrides) + device)
        print(encoder_markdown(run_encoder(cfg, smoke=args.smoke, resume=args.resume)), end="")
        return 0
    if task == "regression":  # float targets: does distillation work for regression?
        cfg = load_regression_config(args.config, list(args.overrides))
        print(regression_markdown(run_regression(cfg, smoke=args.smoke, resume=args.resume)).split("\n![")[0])
        return 0
    cfg = load_config(args.config, list(args.overrides) + device)
    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: give a number of processes >= 1")
    seeds = [int(s) for s in args.worker_seeds.split(",")] if args.worker_seeds else None
    try:
        summary = run_experiment(cfg, smoke=args.smoke, resume=args.resume, jobs=args.jobs, worker_seeds=seeds)
    finally:
        dist.teardown()
    if summary:  # rank 0 of a distributed run, or a single process
        print(summary_markdown(summary).split("\n## Every model")[0])
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    roles = [r.strip() for r in args.roles.split(",") if r.strip()] if args.roles else None
    sweep = run_sweep(args.config, args.overrides, smoke=args.smoke, roles=roles)
    print(sweep_markdown(sweep).split("\nReproduce:")[0])
    return 0


def _parse_input_shape(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.strip().strip("()[]").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise ValueError(
            f"--input-shape {text!r}: expected comma-separated positive integers starting with the batch size, "
            "e.g. 1,1,28,28 (batch, channels, height, width) or 1,784"
        )
    return shape


def _cmd_layers(args: argparse.Namespace) -> int:
    shape = _parse_input_shape(args.input_shape)
    kwargs = {}
    if args.kwargs:
        try:
            kwargs = yaml.safe_load(args.kwargs)  # JSON is YAML too
        except yaml.YAMLError as e:
            raise ValueError(f"--kwargs: not valid JSON/YAML: {e}") from e
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, dict):
            raise ValueError(f"--kwargs must be a mapping such as '{{\"hidden\": [300]}}', got {args.kwargs!r}")
    model = build_model(args.model, shape[1:], args.num_classes, kwargs)
    print(f"{args.model} ({type(model).__name__}), input {shape}")
    print(format_layer_table(layer_table(model, shape[1:], batch_size=shape[0])))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / "summary.json").is_file():
        raise ValueError(f"{run_dir} is not a kdistill run directory (no summary.json); give runs/<name>")
    if args.toy:  # a small experiment of its own (seconds), drawn beside the run's figures
        res = run_toy("spirals")
        plot_decision_regions(res["models"], res["train"], run_dir / "toy.png", test=res["test"])
    if json.loads((run_dir / "summary.json").read_text())["config"].get("task") == "regression":
        print(rebuild_regression_report(run_dir))
        return 0
    print(build_report(run_dir))
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, list(args.overrides))
    d = cfg.data
    kwargs = d.load_kwargs(cfg.output_dir)
    data = load_data(d.name, **kwargs, transfer=cfg.kd.transfer, exclude_classes=cfg.kd.exclude_classes)
    print(f"config: {args.config}; data.root: {d.root}; prepared files: {kwargs['cache_dir']}")
    print(describe(data))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    res = export_run(
        args.run_dir, args.format or DEFAULT_FORMATS, args.out, args.role, args.seed, check_images=args.check_images
    )
    print(f"exported {res['source']['role']} seed {res['source']['seed']} to {res['out_dir']}")
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", allow_abbrev=False, help="train/load the teacher, then scratch, KD and label-smoothing students"
    )
    p.add_argument("config", help="YAML experiment config, e.g. configs/fashion_mnist/hinton.yaml")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. kd.T=8 seeds=[0,1]")
    p.add_argument("--smoke", action="store_true", help="a few hundred samples, one epoch: checks a config in seconds")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run of the same config from its last checkpoints"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="train the seeds in N processes (threads split between them) and write one summary",
    )
    p.add_argument("--worker-seeds", default=None, help=argparse.SUPPRESS)  # a --jobs worker's share
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=None,
        help="where to train (default: the config's device, auto = CUDA when available)",
    )
    p.set_defaults(func=_cmd_run)


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", allow_abbrev=False, help="grid search: key=v1,v2,... axes; the winner is chosen on validation accuracy"
    )
    p.add_argument("config", help="YAML experiment config, e.g. configs/fashion_mnist/hinton.yaml")
    p.add_argument(
        "overrides",
        nargs="*",
        help="key=v1,v2,... sweep axes (e.g. kd.T=1,2,4) and key=value overrides for every point; a value with "
        "brackets or braces is one override, never split (seeds=[0,1,2])",
    )
    p.add_argument("--smoke", action="store_true", help="a few hundred samples, one epoch per point")
    p.add_argument(
        "--roles",
        default=None,
        help="comma-separated roles trained at every point (default kd); the config's other roles are trained once "
        "as references",
    )
    p.set_defaults(func=_cmd_sweep)


def _add_layers_and_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "layers", allow_abbrev=False, help="list a model's layers: dotted name, type, output shape, parameters"
    )
    p.add_argument("model", metavar="MODEL_SPEC", help="mlp, cnn or a user factory package.module:factory")
    p.add_argument("--input-shape", required=True, help="input shape with the batch dim, e.g. 1,1,28,28")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--kwargs", default=None, help="model kwargs as JSON or YAML, e.g. '{\"hidden\": [300]}'")
    p.set_defaults(func=_cmd_layers)
    p = sub.add_parser("report", allow_abbrev=False, help="(re)build RUN_DIR/report.html from the run's files")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/fashion_mnist_hinton")
    p.add_argument("--toy", action="store_true", help="also train the 2-D toy problem and draw its decision regions")
    p.set_defaults(func=_cmd_report)


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data", allow_abbrev=False, help="what a config's data source finds: classes, counts, shape, mean/std, problems"
    )
    p.add_argument("config", help="YAML experiment config, e.g. configs/own_data/folder.yaml")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. data.root=DIR")
    p.set_defaults(func=_cmd_data)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", allow_abbrev=False, help="write the run's student as ONNX / safetensors, checked against PyTorch"
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory, e.g. runs/fashion_mnist_hinton")
    p.add_argument(
        "--format",
        action="append",
        default=None,
        metavar="FMT",
        help="onnx, safetensors or torchscript; repeat or comma-separate (default onnx,safetensors)",
    )
    p.add_argument("--role", default=None, help="export this role's student (default: best validation accuracy)")
    p.add_argument("--seed", type=int, default=None, help="export this seed's student")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/export), replaced as a whole")
    p.add_argument("--check-images", type=int, default=1000, help="test images the exported files are checked on")
    p.set_defaults(func=_cmd_export)


def parser() -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(prog="kdistill", description="Knowledge distillation toolkit")
    out.add_argument("--debug", action="store_true", help="on an error, show the Python traceback too")
    sub = out.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_sweep, _add_layers_and_report, _add_data, _add_export):
        add(sub)
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser()
    # parse_known_args: `run CONFIG --smoke kd.T=8` puts the overrides after an option, which a plain
    # nargs="*" positional would reject; they are collected here instead.
    args, rest = p.parse_known_args(argv)
    if rest and (args.command not in ("run", "sweep", "data") or any(r.startswith("-") for r in rest)):
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    # The console script, unlike `python -m kdistill`, does not put the current directory on sys.path;
    # user factories (`mypkg.nets:factory`) are looked up there in both cases.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return int(args.func(args))
    except RunInterrupted as e:
        again = [*(sys.argv[1:] if argv is None else argv)]
        if args.command == "run" and "--resume" not in again:
            again.append("--resume")
        print(f"kdistill: interrupted: {e}", file=sys.stderr)
        if args.command == "run":
            print(f"  continue with: kdistill {shlex.join(again)}", file=sys.stderr)
        return 130
    # ValueError: model spec / checkpoint shape problems carry their own explanation; FloatingPointError: a
    # diverging run, with its role, seed, epoch and step.
    except (
        ConfigError,
        DataError,
        CheckpointError,
        CacheError,
        DistError,
        TextError,
        RunDirBusy,
        JobError,
        TeacherError,
        ValueError,
        FloatingPointError,
    ) as e:
        if args.debug:
            raise
        print(f"kdistill: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
