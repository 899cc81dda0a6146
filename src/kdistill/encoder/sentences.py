"""Unlabelled sentences for distilling a sentence encoder: real English from the machine, split, tokenized.

``source: stdlib`` takes the docstrings of the Python standard library (``ast``, never imported or run): prose
that nobody here wrote, present wherever Python is, the same corpus as the language-model runs read as code.
``source: files`` takes text files (e.g. Debian's ``fortunes``), documents cut by ``separator``. Either way the
text is cut into sentences (end punctuation followed by a capital), cleaned (whitespace collapsed; doctest
lines, reST directives and code-like lines dropped), kept when it has ``min_words..max_words`` words and
de-duplicated, then dealt to train / validation / test by a hash of the sentence, so a sentence lands in the
same split whatever else the corpus holds.

:func:`tokenize` pads every sentence to one length (the longest after truncation) with the tokenizer's own
``[CLS] ... [SEP]``; a sentence longer than ``max_length`` tokens is cut there and counted, never an error.
"""

from __future__ import annotations

import ast
import hashlib
import re
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdistill.data import Split
from kdistill.text.corpus import corpus_files
from kdistill.text.tokenizers import TextError

SPLITS = ("train", "val", "test")
_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_CODE = re.compile(r"(>>>|\.\.\. |::$|^\.\. |[{}\[\]=<>]{2}|\w+\(\)|_\w+_|\$|\\)")


@dataclass
class Sentences:
    """The sentences of each split, and what the reader kept and dropped."""

    text: dict[str, list[str]]
    sources: int
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass
class TokenizedSplit:
    """One split as padded token ids (``Split.x`` ``[N, L]``, ``y`` all -1, ``index`` the row) and its counts."""

    split: Split
    truncated: int
    lengths: torch.Tensor  # tokens per sentence after truncation, [CLS] and [SEP] included


def stdlib_sources() -> list[Path]:
    """Every ``.py`` file of the standard library (tests and site-packages left out), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for p in sorted(root.rglob("*.py")):
        parts = set(p.relative_to(root).parts)
        if parts & {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}:
            continue
        files.append(p)
    return files


def docstrings(path: Path) -> list[str]:
    """The docstrings of a Python file (module, classes, functions), by parsing it; unparsable files give none."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    out = []
    for n in nodes:
        doc = ast.get_docstring(n, clean=True)
        if doc:
            out.append(doc)
    return out


def split_sentences(text: str) -> list[str]:
    """Paragraphs (blank lines) -> sentences; code-like lines are dropped before joining a paragraph's lines."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in para.splitlines()]
        if any(_CODE.search(ln) for ln in lines):
            continue  # a paragraph with code in it is rarely prose
        joined = " ".join(ln for ln in lines if ln)
        out += [s.strip() for s in _END.split(joined) if s.strip()]
    return out


def keep(sentence: str, min_words: int, max_words: int | None) -> bool:
    words = sentence.split()
    if len(words) < min_words or (max_words is not None and len(words) > max_words):
        return False
    letters = sum(c.isalpha() for c in sentence)
    return letters >= 0.7 * sum(not c.isspace() for c in sentence) and sentence[0].isupper()


def _bucket(sentence: str, val_fraction: float, test_fraction: float) -> str:
    u = int.from_bytes(hashlib.sha256(sentence.encode()).digest()[:8], "big") / 2**64
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def read_sentences(
    source: str,
    paths: list[str] | None = None,
    pattern: str = "*",
    separator: str | None = None,
    *,
    min_words: int = 4,
    max_words: int | None = 64,
    val_fraction: float = 0.05,
    test_fraction: float = 0.1,
    limit: int | None = None,
) -> Sentences:
    """Sentences of the corpus dealt to the splits (see the module docstring); ``limit`` caps the training
    sentences (the first ones in hash order, so a smaller limit keeps a subset of a larger one)."""
    if source == "stdlib":
        files = stdlib_sources()
        texts = [d for f in files for d in docstrings(f)]
    elif source == "files":
        files = corpus_files(paths or [], pattern)
        texts = []
        for f in files:
            try:
                body = f.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise TextError(f"{f}: not UTF-8 text (byte {e.start}); convert it (iconv -t UTF-8)") from None
            texts += re.split(separator, body) if separator else [body]
    else:
        raise TextError(f"unknown sentence source {source!r}; use stdlib or files")
    seen: set[str] = set()
    split: dict[str, list[str]] = {s: [] for s in SPLITS}
    dropped = {"filtered": 0, "duplicates": 0}
    for t in texts:
        for s in split_sentences(t):
            if not keep(s, min_words, max_words):
                dropped["filtered"] += 1
            elif s in seen:
                dropped["duplicates"] += 1
            else:
                seen.add(s)
                split[_bucket(s, val_fraction, test_fraction)].append(s)
    for s in SPLITS:  # a stable order independent of file order: by hash
        split[s].sort(key=lambda x: hashlib.sha256(x.encode()).digest())
    if limit is not None:
        split["train"] = split["train"][:limit]
    for s in SPLITS:
        if len(split[s]) < 2:
            raise TextError(
                f"the {s} split has {len(split[s])} sentence(s) (from {len(files)} file(s)); give a larger corpus "
                "or lower min_words"
            )
    return Sentences(split, len(files), dropped)


def tokenize(tokenizer: Any, sentences: list[str], max_length: int) -> TokenizedSplit:
    """Token ids ``[N, L]`` padded with the tokenizer's pad id, ``L`` the longest sentence after truncation;
    ``truncated`` counts the sentences that were longer than ``max_length`` tokens."""
    full = tokenizer(sentences, add_special_tokens=True, truncation=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    truncated = sum(len(ids) > max_length for ids in full)
    cut = [ids[: max_length - 1] + [ids[-1]] if len(ids) > max_length else ids for ids in full]  # keep [SEP]
    L = max(len(ids) for ids in cut)
    x = torch.full((len(cut), L), pad, dtype=torch.long)
    for i, ids in enumerate(cut):
        x[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    lengths = torch.tensor([len(ids) for ids in cut])
    n = len(cut)
    return TokenizedSplit(Split(x, torch.full((n,), -1, dtype=torch.long), torch.arange(n)), truncated, lengths)
