"""A text corpus: files or a directory -> documents -> train / validation / test by document -> token ids
packed into fixed-length blocks.

Documents, not windows, are split: a file is a document (or, with ``separator``, each piece of it, e.g.
``"\\n%\\n"`` between the fortunes of Debian's ``fortunes`` files), the documents are shuffled with a fixed
seed and dealt to the splits by their share of the corpus' characters. Each split's documents are then
tokenized, joined with the end-of-document id and cut into non-overlapping blocks of ``block + 1`` tokens:
``x = block[:-1]``, ``y = block[1:]`` (the next token at every position). Block ``i`` of a split has sample
index ``i``, so the teacher's cache rows align with what the student sees.

``source: stdlib`` reads the Python standard library's own ``.py`` files (real text that nobody here wrote,
present wherever Python is): a small "code model" corpus.
"""

from __future__ import annotations

import hashlib
import random
import re
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdistill.data import Split
from kdistill.text.tokenizers import TextError, Tokenizer

SPLITS = ("train", "val", "test")


@dataclass
class Corpus:
    """The documents of each split (text), and where they came from."""

    docs: dict[str, list[str]]
    sources: list[str]
    notes: list[str] = field(default_factory=list)

    def chars(self, split: str) -> int:
        return sum(len(d) for d in self.docs[split])


@dataclass
class TextData:
    """Packed blocks of each split as :class:`~kdistill.data.Split` (``x``, ``y``: ``[N, block]`` token ids)."""

    train: Split
    val: Split
    test: Split
    block: int
    vocab_size: int
    tokenizer: Tokenizer
    fingerprint: str
    prompts: list[list[int]]  # the first tokens of test documents: every model continues the same prompts
    notes: list[str] = field(default_factory=list)


def stdlib_files(max_bytes: int | None = None) -> list[Path]:
    """The standard library's top-level ``.py`` files, sorted, up to ``max_bytes`` in all."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for p in sorted(root.glob("*.py")):
        size = p.stat().st_size
        if max_bytes is not None and total + size > max_bytes:
            continue
        files.append(p)
        total += size
    return files


def corpus_files(paths: list[str], pattern: str = "*", max_bytes: int | None = None) -> list[Path]:
    """Files named, or found (recursively, matching ``pattern``) under directories named; sorted. With
    ``max_bytes``, the leading files up to that many bytes (at least one)."""
    out: list[Path] = []
    for name in paths:
        p = Path(name).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob(pattern) if f.is_file() and not f.name.startswith("."))
            if not found:
                raise TextError(f"corpus directory {p} holds no file matching {pattern!r}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise TextError(f"corpus path {p}: no such file or directory")
    if max_bytes is None:
        return out
    kept, total = [], 0
    for f in out:
        total += f.stat().st_size
        if total > max_bytes and kept:
            break
        kept.append(f)
    return kept


def read_corpus(
    files: list[Path],
    separator: str | None = None,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
) -> Corpus:
    """Read and split ``files`` by document (see the module docstring). Empty or non-UTF-8 files are errors."""
    if not files:
        raise TextError("the corpus has no file; give text.corpus.paths (files or directories) or source: stdlib")
    docs: list[str] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise TextError(
                f"{f}: not UTF-8 text (byte {e.start}: {e.reason}); convert it (iconv -t UTF-8) or leave it out"
            ) from None
        if not text.strip():
            raise TextError(f"{f}: the file is empty; remove it from the corpus")
        pieces = re.split(separator, text) if separator else [text]
        docs += [d.strip("\n") for d in pieces if d.strip()]
    if len(docs) < 3:
        raise TextError(f"the corpus has {len(docs)} document(s); train, validation and test need 3 at least")
    random.Random(seed).shuffle(docs)
    total = sum(len(d) for d in docs)
    split: dict[str, list[str]] = {s: [] for s in SPLITS}
    # Deal documents until each held-out split has its share of the characters (at least one document each).
    for s, frac in (("test", test_fraction), ("val", val_fraction)):
        while docs and (not split[s] or sum(len(d) for d in split[s]) < frac * total) and len(docs) > 1:
            split[s].append(docs.pop())
    split["train"] = docs
    return Corpus(split, [str(f) for f in files])


def pack(docs: list[str], tokenizer: Tokenizer, block: int) -> torch.Tensor:
    """Token ids of ``docs`` joined by the end-of-document id, cut into ``[N, block + 1]`` (the tail dropped)."""
    ids: list[int] = []
    for d in docs:
        ids += tokenizer.encode(d)
        ids.append(tokenizer.eos_id)
    n = len(ids) // (block + 1)
    return torch.tensor(ids[: n * (block + 1)], dtype=torch.long).view(n, block + 1)


def build_text_data(
    corpus: Corpus, tokenizer: Tokenizer, block: int, prompts: int = 4, prompt_len: int = 24
) -> TextData:
    """Pack every split; a split shorter than one block is an error naming it and the fix."""
    splits = {}
    for s in SPLITS:
        blocks = pack(corpus.docs[s], tokenizer, block)
        if len(blocks) == 0:
            raise TextError(
                f"the {s} split ({len(corpus.docs[s])} documents, {corpus.chars(s):,} characters) is shorter than one "
                f"block of {block + 1} tokens; use a longer corpus, a smaller text.block, or a larger {s} fraction"
            )
        splits[s] = Split(blocks[:, :-1].contiguous(), blocks[:, 1:].contiguous(), torch.arange(len(blocks)))
    h = hashlib.sha256()
    for s in SPLITS:
        h.update(splits[s].x.numpy().tobytes())
    starts = [tokenizer.encode(d)[:prompt_len] for d in corpus.docs["test"][:prompts]]
    return TextData(
        splits["train"],
        splits["val"],
        splits["test"],
        block,
        tokenizer.vocab_size,
        tokenizer,
        h.hexdigest()[:20],
        [p for p in starts if p],
        list(corpus.notes),
    )
