"""A tiny "pretrained" sentence encoder on disk, built here (no download): a random 3-layer BERT of width 32
with a word-level vocabulary of a small corpus, saved with save_pretrained, its tokenizer, and
sentence-transformers' module files (mean pooling, normalisation), like the teacher package's directory."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

WORDS = (
    "the a an model layer returns value file object list name data string number error user process thread "
    "call read write open close start stop test check find make build load save send receive create delete "
    "small large first last new old empty full simple default given current next each every other this that "
    "is are was be if when then and or not with from into for of to in on by as"
).split()


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences of 5-12 words ("The ... ."), capitalised, ending in a full stop."""
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 12))]
        out.add(" ".join(words).capitalize() + ".")
    return sorted(out)


def write_corpus(path: Path, n: int = 400) -> Path:
    """A text file of ``n`` sentences, one paragraph each (blank lines between)."""
    path.write_text("\n\n".join(sentences(n)) + "\n")
    return path


def write_vocab(path: Path, extra: list[str] = ()) -> Path:
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [c for c in "abcdefghijklmnopqrstuvwxyz.,"]
    words = dict.fromkeys(special + chars + [f"##{c}" for c in chars[:26]] + WORDS + list(extra))  # no duplicate id
    path.write_text("\n".join(words) + "\n")
    return path


def make_encoder_dir(path: Path, layers: int = 3, hidden: int = 32, heads: int = 4, seed: int = 0, vocab_extra=()):
    """Save a random BERT with its tokenizer as a sentence-transformers model directory; returns ``path``."""
    import transformers as tf

    path.mkdir(parents=True, exist_ok=True)
    words = write_vocab(path / "vocab.txt", list(vocab_extra)).read_text().split()
    tok = tf.BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    torch.manual_seed(seed)
    cfg = tf.BertConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=24,
    )
    tf.BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (path / "modules.json").write_text(json.dumps(modules))
    return path
