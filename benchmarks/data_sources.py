"""The user-data paths against the in-memory one: epoch time and peak memory, measured in one run.

    .venv/bin/python benchmarks/data_sources.py                 # Fashion-MNIST, 1 thread, 3 repeats
    .venv/bin/python benchmarks/data_sources.py --smoke         # 2,000 images, seconds

1. Fashion-MNIST's 60,000 training images (and 10,000 test images) are written out as a PNG folder
   (``train/<class>/*.png``, ``test/<class>/*.png``) and as ``.npy`` files, into a scratch directory.
2. The folder is prepared (decoded once into uint8 ``.npy``): images per second are reported.
3. One KD epoch of the compression student (teacher outputs cached, as a run does) on each source, in this one
   process, modes in rotating order, median of the repeats: in memory (``fashion_mnist``), the arrays read from
   disk a batch at a time (``data.memory_budget_mb`` below their size), the prepared folder read the same way.
   Printed as ratios to the in-memory epoch.
4. Peak resident memory (``ru_maxrss`` of a child process) of a whole ``kdistill run`` (MLP teacher and student,
   one epoch each) on an array dataset 4x larger than its memory budget, against the same run on a dataset
   that fits in memory: the difference is what the data costs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on shared cores

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from kdistill.caches import LogitCache  # noqa: E402
from kdistill.config import load_config  # noqa: E402
from kdistill.data import BatchLoader, load_data, load_fashion_arrays  # noqa: E402
from kdistill.distiller import Distiller  # noqa: E402
from kdistill.environment import environment, machine_line  # noqa: E402
from kdistill.models import build_model, load_weights_into  # noqa: E402
from kdistill.teacher import FrozenTeacher  # noqa: E402
from kdistill.trainer import fit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fashion_mnist" / "hinton.yaml"


def write_sources(out: Path, n_train: int, n_test: int) -> tuple[Path, Path]:
    """Fashion-MNIST as a PNG folder and as .npy files."""
    a = load_fashion_arrays(download=False)
    x = {"train": a["train_images"][:n_train], "test": a["test_images"][:n_test]}
    y = {"train": a["train_labels"][:n_train], "test": a["test_labels"][:n_test]}
    folder, arrays = out / "folder", out / "arrays"
    arrays.mkdir(parents=True, exist_ok=True)
    for s in ("train", "test"):
        np.save(arrays / f"x_{s}.npy", x[s])
        np.save(arrays / f"y_{s}.npy", y[s].astype(np.int64))
        for i, (img, label) in enumerate(zip(x[s], y[s], strict=True)):
            d = folder / s / f"{int(label)}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:05d}.png")
    return folder, arrays


def epoch_ratios(folder: Path, arrays: Path, cache: Path, repeats: int, smoke: bool, n_train: int) -> dict:
    cfg = load_config(CONFIG)
    common = {"val_size": 0.1 if smoke else 5000, "cache_dir": cache}
    t0 = time.perf_counter()
    limit = {"limit_train": n_train, "limit_test": 500} if smoke else {}  # the same number of images
    sources = {
        "in memory": load_data("fashion_mnist", download=False, **common, **limit),
        "folder, prepared, read from disk": load_data("folder", root=str(folder), memory_budget_mb=1, **common),
    }
    decode = [n for n in sources["folder, prepared, read from disk"].notes if "decoded" in n]
    prepare_seconds = time.perf_counter() - t0
    sources["arrays (.npy), read from disk"] = load_data("arrays", root=str(arrays), memory_budget_mb=1, **common)
    t, s = cfg.teacher.model, cfg.student.model
    data = sources["in memory"]
    teacher = build_model(t.arch, data.input_shape, data.num_classes, t.kwargs)
    load_weights_into(teacher, ROOT / cfg.teacher.checkpoint)
    frozen = FrozenTeacher(teacher)
    caches = {name: LogitCache.build(frozen, BatchLoader(d.transfer_set, 1000)) for name, d in sources.items()}
    train_cfg = cfg.student.train.model_copy(update={"epochs": 1, "steps": None})
    times: dict[str, list[float]] = {m: [] for m in sources}
    names = list(sources)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate: drift hits every mode alike
            d = sources[name]
            torch.manual_seed(0)
            student = build_model(s.arch, d.input_shape, d.num_classes, s.kwargs)
            objective = Distiller(student, frozen, cfg.kd.T, cfg.kd.alpha, source=caches[name])
            res = fit(objective, d.transfer_set, d.val, train_cfg, seed=r, verbose=False, progress=False)
            times[name].append(res.train_seconds)
    med = {m: statistics.median(v) for m, v in times.items()}
    base = med["in memory"]
    return {
        "images": len(data.train) + len(data.val),
        "decode": decode[0] if decode else "",
        "prepare_seconds": prepare_seconds,
        "epoch_seconds": med,
        "ratios": {m: v / base for m, v in med.items()},
    }


# The child reports its own peak (VmHWM of its address space): ru_maxrss would also count the parent's
# memory at fork time, which Linux carries over exec.
RUN = """
import sys
from pathlib import Path
from kdistill.cli import main
rc = main(sys.argv[1:])
hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
print("MAXRSS_KB", hwm.split()[1])
sys.exit(rc)
"""


def peak_rss(root: Path, out: Path, budget_mb: float, name: str) -> int:
    """Peak resident memory (KiB) of a whole `kdistill run` on the arrays in ``root``."""
    args = [
        "run",
        str(ROOT / "configs" / "own_data" / "arrays.yaml"),
        f"data.root={root}",
        f"data.memory_budget_mb={budget_mb}",
        "data.val_size=0.05",
        "teacher.model.arch=mlp",
        "teacher.model.kwargs={hidden: [256]}",
        "teacher.train={epochs: 1, augment: {shift: 0}}",
        "student.model.arch=mlp",
        "student.model.kwargs={hidden: [64]}",
        "student.train.epochs=1",
        "roles=[kd]",
        "threads=1",
        f"output_dir={out}",
        f"name={name}",
    ]
    proc = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("MAXRSS_KB")))


def memory(tmp: Path, budget_mb: float, copies: int) -> dict:
    """A dataset ``copies`` x Fashion-MNIST's training images, as float32 over 4x ``budget_mb``."""
    a = load_fashion_arrays(download=False)
    big, small = tmp / "big", tmp / "small"
    for d, n in ((big, copies), (small, 0)):
        d.mkdir(parents=True, exist_ok=True)
        x = np.concatenate([a["train_images"]] * n) if n else a["train_images"][:2000]
        y = np.concatenate([a["train_labels"]] * n) if n else a["train_labels"][:2000]
        np.save(d / "x_train.npy", x)
        np.save(d / "y_train.npy", y.astype(np.int64))
        np.save(d / "x_test.npy", a["test_images"][:2000])
        np.save(d / "y_test.npy", a["test_labels"][:2000].astype(np.int64))
    float32_mb = (len(a["train_images"]) * copies + 2000) * 784 * 4 / 2**20
    return {
        "dataset_float32_mb": float32_mb,
        "budget_mb": budget_mb,
        "baseline_rss_mb": peak_rss(small, tmp / "runs", 4096, "small") / 1024,
        "streamed_rss_mb": peak_rss(big, tmp / "runs", budget_mb, "big") / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--copies", type=int, default=4, help="Fashion-MNIST training sets in the memory test's data")
    p.add_argument("--budget-mb", type=float, default=150.0)
    p.add_argument("--smoke", action="store_true", help="2,000 images, 1 repeat, a small memory test")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    n_train, n_test = (2000, 500) if args.smoke else (60000, 10000)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        folder, arrays = write_sources(tmp / "fmnist", n_train, n_test)
        speed = epoch_ratios(folder, arrays, tmp / "prepared", 1 if args.smoke else args.repeats, args.smoke, n_train)
        mem = memory(tmp / "memory", 20.0 if args.smoke else args.budget_mb, 1 if args.smoke else args.copies)
    res = {"speed": speed, "memory": mem, "threads": args.threads, "environment": environment()}
    print(f"{speed['images']:,} training images; {speed['decode']}")
    print(f"{'source':<36} {'epoch s (median)':>17} {'ratio to memory':>16}")
    for m, v in speed["epoch_seconds"].items():
        print(f"{m:<36} {v:>17.2f} {speed['ratios'][m]:>16.3f}")
    grow = mem["streamed_rss_mb"] - mem["baseline_rss_mb"]
    print(
        f"memory: data {mem['dataset_float32_mb']:.0f} MiB as float32, budget {mem['budget_mb']:.0f} MiB; peak RSS "
        f"{mem['streamed_rss_mb']:.0f} MiB against {mem['baseline_rss_mb']:.0f} MiB for a run on 2,000 images in "
        f"memory: +{grow:.0f} MiB"
    )
    print(machine_line({**res["environment"], "threads": args.threads}))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
