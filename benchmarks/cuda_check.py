"""One short check of kdistill's CUDA path, for a machine with a GPU (never part of CI).

    .venv/bin/python benchmarks/cuda_check.py [--out /tmp/kdistill-cuda]

Runs the same tiny synthetic experiment (teacher CNN, scratch and KD students; augmentation on, so the
teacher view cache is built on the GPU) on the CPU and on CUDA (bf16 autocast), then a 1-process
torchrun with NCCL, and prints the test accuracies side by side. Where transformers is installed, it also
distils the tests' tiny random BERT (``tests/encoder/tiny.py``) into a one-layer student with ``task:
encoder`` on both devices (teacher cache, training, scoring on the GPU; latency and ONNX from CPU copies).
Exit status 0 means every run finished, the CUDA accuracies are within 5 points of the CPU ones and the
encoder student's cosine with its teacher within 0.02 (bf16 and cuDNN change the arithmetic, so equality is
not expected).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.encoder.tiny: the tiny BERT the tests build (no download)

from kdistill.config import load_config  # noqa: E402
from kdistill.experiment.run import run_experiment  # noqa: E402

OVERRIDES = [
    "data.name=synthetic",
    "data.val_size=200",
    "data.synthetic={n_train: 3000, n_test: 1000, num_classes: 6, side: 16}",
    "teacher.model.arch=cnn",
    "teacher.model.kwargs={channels: [16, 32], convs_per_stage: [1, 1]}",
    "teacher.train.epochs=3",
    "student.model.arch=mlp",
    "student.model.kwargs={hidden: [64]}",
    "student.train.epochs=3",
    "student.train.augment={shift: 2}",
    "roles=[scratch, kd]",
    "seeds=[0]",
]


def accuracies(summary: dict) -> dict[str, float]:
    return {r["role"]: r["test_acc"] for r in summary["rows"]}


def encoder_check(out: Path, devices: tuple[str, ...] = ("cpu", "cuda")) -> dict[str, dict[str, float]] | None:
    """The kd student's cosine and neighbour agreement with the tiny teacher, and whether its ONNX export
    matched, per device; None where transformers is missing."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("transformers is not installed: encoder check skipped")
        return None
    from tests.encoder.tiny import make_encoder_dir, write_corpus

    from kdistill.encoder.config import load_encoder_config
    from kdistill.experiment.encoder_run import run_encoder

    out.mkdir(parents=True, exist_ok=True)
    teacher, corpus = make_encoder_dir(out / "enc_teacher"), write_corpus(out / "enc_corpus.txt", n=400)
    res = {}
    for device in devices:
        over = [f"teacher.path={teacher}", "sentences.source=files", f"sentences.paths=[{corpus}]"]
        over += ["sentences.max_length=16", "students=[{name: S, layers: 1, hidden: 16, heads: 2, init: copy}]"]
        over += ["roles=[kd]", "seeds=[0]", "train.steps=76", "train.batch_size=16", "train.lr=0.003"]
        over += ["eval.queries=30", "eval.k=5", "eval.repeats=2", f"output_dir={out}/enc_{device}", f"device={device}"]
        summary = run_encoder(load_encoder_config(ROOT / "configs" / "text" / "minilm_shrink.yaml", over))
        a = summary["aggregate"]["S/kd"]
        res[device] = {"cos": a["cos_mean"], "agreement": a["agreement_mean"], "onnx": summary["exports"]["S"]["ok"]}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/kdistill-cuda")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device visible to torch; nothing to check")
        return 1
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}")
    res = {}
    for device in ("cpu", "cuda"):
        cfg = load_config(None, [*OVERRIDES, f"device={device}", f"output_dir={args.out}/{device}"])
        res[device] = accuracies(run_experiment(cfg))
    cfg_file = Path(args.out) / "empty.yaml"
    cfg_file.write_text("{}\n")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        "-m",
        "kdistill",
        "run",
        str(cfg_file),
        *OVERRIDES,
        "device=cuda",
        f"output_dir={args.out}/ddp",
    ]
    done = subprocess.run(cmd, env={**os.environ}, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-3000:])
        return 1
    summary = json.loads(next(Path(args.out, "ddp").glob("*/summary.json")).read_text())
    res["cuda_torchrun_nccl"] = accuracies(summary)
    enc = encoder_check(Path(args.out))
    print(json.dumps({**res, "encoder": enc}, indent=1))
    ok = all(abs(res[d][r] - res["cpu"][r]) <= 0.05 for d in ("cuda", "cuda_torchrun_nccl") for r in res["cpu"])
    enc_ok = enc is None or (abs(enc["cuda"]["cos"] - enc["cpu"]["cos"]) <= 0.02 and enc["cuda"]["onnx"])
    print("CUDA path OK" if ok else "CUDA accuracies differ from CPU by more than 5 points")
    print(
        "encoder on CUDA OK" if enc_ok else "encoder on CUDA: cosine differs from CPU by more than 0.02, or ONNX failed"
    )
    return 0 if ok and enc_ok else 1


if __name__ == "__main__":
    sys.exit(main())
