"""Tokenizers: bytes (any text, vocabulary 257), characters (the training split's alphabet), or a model's own
Hugging Face tokenizer. Each maps a document to token ids and back, and names an end-of-document id that
separates documents inside a packed block."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class TextError(ValueError):
    """Bad text input (a corpus, a model directory, mismatched vocabularies): says what, where and the fix."""


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int
    name: str

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes 0..255 plus 256 = end of document: no training, nothing unknown, the same on every machine."""

    vocab_size, eos_id, name = 257, 256, "byte"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def state(self) -> dict:
        return {"kind": "byte"}


class CharTokenizer:
    """One id per character of the training split (sorted), then ``<unk>`` and end of document."""

    name = "char"

    def __init__(self, alphabet: str) -> None:
        self.alphabet = "".join(sorted(set(alphabet)))
        self.ids = {c: i for i, c in enumerate(self.alphabet)}
        self.unk_id, self.eos_id = len(self.alphabet), len(self.alphabet) + 1
        self.vocab_size = len(self.alphabet) + 2

    @classmethod
    def fit(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls("".join(seen))

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(c, self.unk_id) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.alphabet[i] if i < len(self.alphabet) else "" for i in ids)

    def state(self) -> dict:
        return {"kind": "char", "alphabet": self.alphabet}


class HFTokenizer:
    """A ``transformers`` tokenizer (the model's own); its EOS token separates documents."""

    name = "hf"

    def __init__(self, tokenizer) -> None:  # noqa: ANN001 - a transformers PreTrainedTokenizer
        self.tok = tokenizer
        self.vocab_size = len(tokenizer)
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if eos is None:
            raise TextError(f"tokenizer {tokenizer.name_or_path!r} has no EOS (or SEP) token to separate documents")
        self.eos_id = int(eos)

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def state(self) -> dict:
        return {"kind": "hf", "name": str(self.tok.name_or_path)}


def tokenizer_from_state(state: dict) -> Tokenizer:
    """Rebuild a byte or char tokenizer from what :meth:`state` saved (an HF one is loaded with its model)."""
    if state["kind"] == "byte":
        return ByteTokenizer()
    if state["kind"] == "char":
        return CharTokenizer(state["alphabet"])
    raise TextError(f"tokenizer {state} is loaded with its model directory, not from a state")
