"""Unlabelled sentences for distilling a sentence encoder: real English from the machine, split, tokenized.

``source: stdlib`` takes the docstrings of the Python standard library (``ast``, never imported or run): prose
that nobody here wrote, present wherever Python is, the same corpus as the language-model runs read as code.
``source: packages`` takes the docstrings of the installed packages (``paths``: their names; all of them by
default), ``source: files`` text files (e.g. Debian's ``fortunes``), documents cut by ``separator``. Either way the
text is cut into sentences (end punctuation followed by a capital), cleaned (whitespace collapsed; doctest
lines, reST directives and code-like lines dropped), kept when it has ``min_words..max_words`` words and
de-duplicated, then dealt to train / validation / test by a hash of the sentence, so a sentence lands in the
same split whatever else the corpus holds. A ``transfer`` source adds sentences to the training split only;
``augment`` adds variants of the corpus' training sentences (:func:`augment_sentences`), training only too.

:func:`tokenize` pads every sentence to one length (the longest after truncation) with the tokenizer's own
``[CLS] ... [SEP]``; a sentence longer than ``max_length`` tokens is cut there and counted, never an error.
"""

from __future__ import annotations

import ast
import hashlib
import random
import re
import sysconfig
from collections.abc import Callable
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
    transfer: dict[str, int] = field(default_factory=dict)  # training-only sentences: added, files, dropped
    augmented: int = 0  # variants of the training sentences added to the training split


@dataclass
class TokenizedSplit:
    """One split as padded token ids (``Split.x`` ``[N, L]``, ``y`` all -1, ``index`` the row) and its counts."""

    split: Split
    truncated: int
    lengths: torch.Tensor  # tokens per sentence after truncation, [CLS] and [SEP] included


def python_sources(root: Path, skip: set[str]) -> list[Path]:
    """The ``.py`` files under ``root`` whose path has none of the directory names in ``skip``, sorted."""
    files = []
    for p in sorted(root.rglob("*.py")):
        if not set(p.relative_to(root).parts[:-1]) & skip:
            files.append(p)
    return files


def stdlib_sources() -> list[Path]:
    """Every ``.py`` file of the standard library (tests and site-packages left out), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return python_sources(root, {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


def package_sources(names: list[str]) -> list[Path]:
    """The ``.py`` files of the installed packages (this interpreter's site-packages; ``names``: only these
    top-level packages), without tests and vendored copies of other projects (``_vendor``: pip's and setuptools'
    copies of libraries, some of them of the standard library the evaluation sentences come from)."""
    root = Path(sysconfig.get_paths()["purelib"])
    skip = {"test", "tests", "testing", "_vendor", "vendored", "_distutils", "__pycache__"}
    missing = [n for n in names if not (root / n).is_dir()]
    if missing:
        raise TextError(f"no installed package {missing} in {root}; give top-level package names (e.g. numpy)")
    tops = [root / n for n in names] if names else sorted(p for p in root.iterdir() if p.is_dir())
    return [f for t in tops if not t.name.endswith((".dist-info", ".egg-info")) for f in python_sources(t, skip)]


def docstrings(path: Path) -> list[str]:
    """The docstrings of a Python file (module, classes, functions), by parsing it; unparsable files give none."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError, RecursionError):
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


def _hash_order(sentences: list[str]) -> list[str]:
    """A stable order independent of file order: by hash (so a ``limit`` keeps a subset of a larger limit)."""
    return sorted(sentences, key=lambda x: hashlib.sha256(x.encode()).digest())


def _normal(sentence: str) -> str:
    """The sentence's words, lower case, without punctuation: two copies that differ in case, spacing or
    punctuation are one sentence."""
    return " ".join(re.findall(r"[a-z0-9]+", sentence.lower()))


def corpus_texts(
    source: str, paths: list[str] | None = None, pattern: str = "*", separator: str | None = None
) -> tuple[list[str], int]:
    """The documents of a source (docstrings, or files cut at ``separator``) and how many files they came from."""
    if source in ("stdlib", "packages"):
        files = stdlib_sources() if source == "stdlib" else package_sources(paths or [])
        return [d for f in files for d in docstrings(f)], len(files)
    if source == "files":
        files = corpus_files(paths or [], pattern)
        texts = []
        for f in files:
            try:
                body = f.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise TextError(f"{f}: not UTF-8 text (byte {e.start}); convert it (iconv -t UTF-8)") from None
            texts += re.split(separator, body) if separator else [body]
        return texts, len(files)
    raise TextError(f"unknown sentence source {source!r}; use stdlib, packages or files")


def _clean(
    texts: list[str],
    min_words: int,
    max_words: int | None,
    seen: set[str],
    dropped: dict,
    key: Callable[[str], str] = str,
) -> list[str]:
    """The sentences of ``texts`` that :func:`keep` keeps and whose ``key`` is not in ``seen`` (added to it)."""
    out = []
    for t in texts:
        for s in split_sentences(t):
            if not keep(s, min_words, max_words):
                dropped["filtered"] += 1
            elif (k := key(s)) in seen:
                dropped["duplicates"] += 1
            else:
                seen.add(k)
                out.append(s)
    return out


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
    transfer: dict | None = None,
    augment: dict | None = None,
) -> Sentences:
    """Sentences of the corpus dealt to the splits (see the module docstring); ``limit`` caps the training
    sentences (the first ones in hash order, so a smaller limit keeps a subset of a larger one).

    ``transfer`` (``source``, ``paths``, ``pattern``, ``separator``, ``limit``) names more text for training
    only: its sentences (``limit`` of them, in hash order) join the training split, except those that are,
    up to case and punctuation, a sentence of this corpus (held out or not), so that validation and test stay
    the main corpus' own sentences whatever the transfer set holds."""
    texts, n_files = corpus_texts(source, paths, pattern, separator)
    seen: set[str] = set()
    split: dict[str, list[str]] = {s: [] for s in SPLITS}
    dropped = {"filtered": 0, "duplicates": 0}
    for s in _clean(texts, min_words, max_words, seen, dropped):
        split[_bucket(s, val_fraction, test_fraction)].append(s)
    split = {k: _hash_order(v) for k, v in split.items()}
    if limit is not None:
        split["train"] = split["train"][:limit]
    own_train = list(split["train"])  # what augment varies: the corpus' own sentences, not a transfer set's
    for s in SPLITS:
        if len(split[s]) < 2:
            raise TextError(
                f"the {s} split has {len(split[s])} sentence(s) (from {n_files} file(s)); give a larger corpus "
                "or lower min_words"
            )
    out = Sentences(split, n_files, dropped)
    # the corpus' sentences up to case and punctuation: what neither a transfer set nor a variant may repeat
    corpus = {_normal(x) for x in seen} if transfer is not None or augment is not None else set()
    if transfer is not None:
        more_texts, more_files = corpus_texts(
            transfer["source"], transfer.get("paths"), transfer.get("pattern", "*"), transfer.get("separator")
        )
        more = {"filtered": 0, "duplicates": 0}
        extra = _clean(more_texts, min_words, max_words, set(corpus), more, key=_normal)
        extra = _hash_order(extra)[: transfer.get("limit")]
        split["train"] += extra
        out.sources += more_files
        out.transfer = {"sentences": len(extra), "files": more_files, **more}
    if augment is not None:
        variants = [v for v in augment_sentences(own_train, **augment) if _normal(v) not in corpus]
        split["train"] += variants
        out.augmented = len(variants)
    return out


def augment_sentences(
    sentences: list[str], views: int = 4, replace: float = 0.15, drop: float = 0.1, seed: int = 0
) -> list[str]:
    """``views`` variants of each sentence: every word dropped with probability ``drop``, else replaced with
    probability ``replace`` by a word drawn from all the sentences' words (by frequency); at least two words
    kept, variants equal to their sentence or to another variant left out. TinyBERT's data augmentation
    (Jiao et al. 2020) with the corpus' own words instead of a masked LM's predictions: the teacher labels any
    text, so near-copies of the training sentences show the student more of the teacher's function around
    them than the sentences alone."""
    if views < 1 or not (0 <= replace <= 1 and 0 <= drop < 1):
        raise ValueError(f"augment needs views >= 1, 0 <= replace <= 1, 0 <= drop < 1; got {views}, {replace}, {drop}")
    rng = random.Random(seed)
    pool = [w for x in sentences for w in x.split()]
    out, seen = [], set(sentences)
    for x in sentences:
        words = x.split()
        for _ in range(views):
            new = []
            for w in words:
                r = rng.random()
                if r < drop:
                    continue
                new.append(rng.choice(pool) if r < drop + replace * (1 - drop) else w)
            v = " ".join(new)
            if len(new) >= 2 and v not in seen:
                seen.add(v)
                out.append(v)
    return out


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
    split = Split(x, torch.full((n,), -1, dtype=torch.long), torch.arange(n), lengths)
    return TokenizedSplit(split, truncated, lengths)
