"""An encoder run's sentences and teacher as plain files, for a machine whose Python differs from this one (another
standard library, other installed packages: a GPU box), so that the run there reads exactly these sentences:

    .venv/bin/python benchmarks/encoder_portable.py OUT [--config configs/text/minilm_shrink.yaml] [--half]
        [override ...]

writes

- ``OUT/corpus.txt``: the corpus' sentences of every split, one paragraph each. Read back with ``source: files``
  they deal themselves to the same splits, since a sentence's split is a hash of its text;
- ``OUT/transfer.txt``: the transfer set's sentences (when the config has ``sentences.transfer``);
- ``OUT/teacher/``: the teacher (``save_pretrained``, tokenizer, sentence-transformers files); ``--half`` stores
  its weights in float16, half the bytes (kdistill loads them as float32), and reports the cosine and neighbour
  agreement of the half-precision teacher with the original on the test sentences;

then reads the files back as the run will and reports every sentence that lands elsewhere (a sentence with
``... `` inside reads as a doctest line and is dropped: 14 of the packages' 157,322 here), and prints the
overrides that make ``kdistill run`` read them. ``sentences.augment`` needs nothing: its variants are drawn from
the corpus' training sentences with a fixed seed, the same there.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdistill.encoder.config import EncoderExperimentConfig, TransferSource, load_encoder_config  # noqa: E402
from kdistill.encoder.evaluate import embed, mean_cosine, neighbour_agreement  # noqa: E402
from kdistill.encoder.models import load_encoder, save_encoder  # noqa: E402
from kdistill.encoder.sentences import SPLITS, tokenize  # noqa: E402


def dump(cfg: EncoderExperimentConfig, out: Path) -> tuple[list[str], dict[str, int], list[str]]:
    """Write the sentence files; the overrides that read them, per split how many sentences differ when read
    back (missing or added), and the test sentences. ``augment`` is left out of both reads: its variants are drawn
    from the corpus' training sentences the same way anywhere."""
    s = cfg.sentences.model_copy(update={"augment": None})
    got = s.read()
    n_transfer = got.transfer.get("sentences", 0)
    own = got.text["train"][: len(got.text["train"]) - n_transfer]  # the transfer sentences follow the corpus'
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.txt"
    corpus.write_text("\n\n".join(own + got.text["val"] + got.text["test"]) + "\n", encoding="utf-8")
    overrides = ["sentences.source=files", f"sentences.paths=[{corpus}]"]  # a file: the pattern is not used
    if s.separator is not None:
        overrides.append("sentences.separator=null")  # one sentence per paragraph, nothing between documents
    back_transfer = None
    if s.transfer is not None:
        transfer = out / "transfer.txt"
        transfer.write_text("\n\n".join(got.text["train"][len(own) :]) + "\n", encoding="utf-8")
        back_transfer = TransferSource(source="files", paths=[str(transfer)], limit=s.transfer.limit)
        overrides.append(f"sentences.transfer={{source: files, paths: [{transfer}]}}")
    files = {"source": "files", "paths": [str(corpus)], "separator": None, "transfer": back_transfer}
    back = s.model_copy(update=files).read()
    differ = {k: len(set(got.text[k]) ^ set(back.text[k])) for k in SPLITS}
    return overrides, differ, got.text["test"]


def teacher_files(
    cfg: EncoderExperimentConfig, out: Path, half: bool, test: list[str]
) -> tuple[str, dict[str, float] | None]:
    """The teacher saved under ``out/teacher`` (float16 weights with ``half``); with ``half``, its agreement with
    the float32 original on the ``test`` sentences."""
    teacher, tok, _ = load_encoder(cfg.teacher.path)
    teacher.eval()
    path = out / "teacher"
    stored = teacher
    if half:
        stored = copy.deepcopy(teacher)
        stored.hf.half()
    save_encoder(stored, tok, path, cfg.sentences.max_length)
    if not half:
        return f"teacher.path={path}", None
    split = tokenize(tok, test, cfg.sentences.max_length).split
    back, _, _ = load_encoder(str(path))  # as the run will load it: float32
    a, b = embed(teacher, split, teacher.pad_id), embed(back.eval(), split, back.pad_id)
    queries, k = cfg.eval.queries, min(cfg.eval.k, len(test) - 1)
    return f"teacher.path={path}", {"cos": mean_cosine(b, a), "agreement": neighbour_agreement(b, a, queries, k)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--config", default=str(ROOT / "configs" / "text" / "minilm_shrink.yaml"))
    ap.add_argument("--half", action="store_true", help="store the teacher's weights in float16")
    ap.add_argument("overrides", nargs="*", help="dotted config overrides, as kdistill run takes them")
    a = ap.parse_intermixed_args(argv)
    cfg = load_encoder_config(a.config, a.overrides)
    overrides, differ, test = dump(cfg, a.out)
    teacher, check = teacher_files(cfg, a.out, a.half, test)
    overrides.append(teacher)
    print(f"sentences that read back elsewhere (missing or added), per split: {differ}")
    if check is not None:
        print(
            f"float16 teacher against the original on the test sentences: cosine {check['cos']:.7f}, "
            f"neighbour agreement {check['agreement']:.4f}"
        )
    print("run there with: kdistill run " + shlex.join([a.config, *overrides]))
    return {"overrides": overrides, "differ": differ, "half_check": check}


if __name__ == "__main__":
    main()
