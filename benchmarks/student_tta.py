"""Test-time shifts for the student (issue 16): what averaging a trained student's logits over shifted views of
each test image buys it, for KD and scratch students alike, and what it costs at inference.

    .venv/bin/python benchmarks/student_tta.py NAME=RUN_DIR[,RUN_DIR...] [NAME=...] [--root DIR] [--shift 1]
        [--teacher checkpoints/fashion_mnist_cnn_teacher.pt] [--repeats 20]

Each RUN_DIR is a Fashion-MNIST run whose student was saved as ``<role>-seed<k>/weights.pt`` (one per directory,
as ``patient.yaml``'s runs of one role and seed); a group's directories are its seeds. Every student is scored
on the 10,000 test images as trained (1 view), over its image and four 1-pixel shifts (``plus``, 5 views) and
over all nine offsets (``grid``), the views that ``teacher.tta`` gives a teacher (:class:`kdistill.tta.ShiftAveraged`).
Then the first student is timed with each view count against the teacher (1 thread, one process): a student
answering from 9 views runs 9 forward passes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdistill.data import Split  # noqa: E402
from kdistill.data.fashion_mnist import load_fashion_arrays  # noqa: E402
from kdistill.data.store import Normalization, normalize  # noqa: E402
from kdistill.deploy import measure_many  # noqa: E402
from kdistill.environment import environment, machine_line  # noqa: E402
from kdistill.models import load_model_file  # noqa: E402
from kdistill.trainer import evaluate  # noqa: E402
from kdistill.tta import ShiftAveraged  # noqa: E402

VIEWS = {"1 view": None, "plus (5)": "plus", "grid (9)": "grid"}


def parse_groups(specs: list[str]) -> dict[str, list[Path]]:
    """``NAME=DIR[,DIR...]`` -> {name: [student weights file of each directory]}."""
    groups: dict[str, list[Path]] = {}
    for spec in specs:
        name, sep, dirs = spec.partition("=")
        if not sep or not name or not dirs:
            raise SystemExit(f"student_tta: bad group {spec!r}; write NAME=RUN_DIR[,RUN_DIR...]")
        files = []
        for d in dirs.split(","):
            found = sorted(Path(d).glob("*-seed*/weights.pt"))
            if len(found) != 1:
                raise SystemExit(
                    f"student_tta: {d} holds {len(found)} student weights files (*-seed*/weights.pt), not 1"
                )
            files.append(found[0])
        groups[name] = files
    return groups


def views(model: nn.Module, pattern: str | None, shift: int) -> nn.Module:
    return model if pattern is None else ShiftAveraged(model, shift, pattern).eval()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("groups", nargs="+", help="NAME=RUN_DIR[,RUN_DIR...]")
    ap.add_argument("--root", default=None, help="directory with the Fashion-MNIST files (searched first)")
    ap.add_argument("--shift", type=int, default=1)
    ap.add_argument("--teacher", default=str(ROOT / "checkpoints" / "fashion_mnist_cnn_teacher.pt"))
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args(argv)
    groups = parse_groups(a.groups)
    arrays = load_fashion_arrays(a.root, download=False)
    raw, y = arrays["test_images"], torch.from_numpy(arrays["test_labels"].astype(np.int64))
    out: dict = {"groups": {}}
    first: nn.Module | None = None
    for name, files in groups.items():
        per_view: dict[str, list[float]] = {v: [] for v in VIEWS}
        for f in files:
            model, obj = load_model_file(f)
            norm = obj["normalize"]  # the model's own input statistics (its training split's)
            if not norm:
                raise SystemExit(f"student_tta: {f} records no input normalization; save it from a kdistill run")
            x = normalize(raw[:, None], Normalization(norm["scale"], tuple(norm["mean"]), tuple(norm["std"])))
            test = Split(x, y, torch.arange(len(y)))
            if first is None:
                first = model
            for label, pattern in VIEWS.items():
                per_view[label].append(100.0 * evaluate(views(model, pattern, a.shift), test).acc)
        out["groups"][name] = per_view
    print("| students | " + " | ".join(f"test acc %, {v}" for v in VIEWS) + " |")
    print("|---|" + "---:|" * len(VIEWS))
    for name, per_view in out["groups"].items():
        cells = []
        for accs in per_view.values():
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{statistics.mean(accs):.2f} ± {sd:.2f} ({' / '.join(f'{v:.2f}' for v in accs)})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    assert first is not None
    models = {f"student, {v}": views(first, p, a.shift) for v, p in VIEWS.items()}
    if a.teacher and Path(a.teacher).is_file():
        models["teacher"] = load_model_file(a.teacher)[0]
    torch.set_num_threads(1)  # what is timed, and what the machine line reports
    fig = measure_many(models, (1, *raw.shape[1:]), threads=1, repeats=a.repeats)
    out["latency_ms_b1"] = {k: f["latency_ms_b1"] for k, f in fig.items()}
    print("\n| model | ms at batch 1 |" + (" × faster than the teacher |" if "teacher" in fig else ""))
    print("|---|---:|" + ("---:|" if "teacher" in fig else ""))
    for k, ms in out["latency_ms_b1"].items():
        ratio = f" {out['latency_ms_b1']['teacher'] / ms:.1f} |" if "teacher" in fig else ""
        print(f"| {k} | {ms:.3f} |{ratio}")
    print(f"\n{len(y):,} test images, views shifted by {a.shift} px. {machine_line(environment())}")
    return out


if __name__ == "__main__":
    main()
