"""Causal language models: anything that maps token ids ``[B, L]`` to logits ``[B, L, V]``.

- :class:`TinyGPT`: kdistill's own small GPT (pre-norm blocks, causal attention through
  ``F.scaled_dot_product_attention``, tied embeddings), for models trained here.
- a Hugging Face causal LM, from a local directory (:func:`load_hf`) or from a small config dict
  (:func:`build_hf`, e.g. ``{model_type: gpt2, n_layer: 2, n_embd: 64, ...}``), wrapped by :class:`HFCausalLM` so
  that it too returns plain logits; :func:`save_hf` writes it with ``save_pretrained``.
- your own ``nn.Module`` (by import path), used as it is.

``transformers`` is imported only here and only when asked for (:func:`require_transformers`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.text.tokenizers import TextError

EXTRA = "transformers is not installed: install the text extra, scripts/setup.sh text (or pip install -e '.[text]')"


def require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise TextError(EXTRA) from None
    transformers.utils.logging.disable_progress_bar()  # a bar per weight file load and save buries kdistill's log
    return transformers


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        drop = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        x = x + self.proj(a.transpose(1, 2).reshape(B, L, D))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A small decoder-only transformer: ids ``[B, L]`` -> logits ``[B, L, vocab]`` (``L <= context``)."""

    def __init__(
        self, vocab_size: int, context: int, layers: int = 2, dim: int = 64, heads: int = 2, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"TinyGPT: dim {dim} must be divisible by heads {heads}")
        self.vocab_size, self.context = vocab_size, context
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied: fewer parameters, and it trains better at this size
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith(("proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        L = ids.shape[1]
        if L > self.context:
            raise ValueError(f"TinyGPT: {L} tokens exceed its context of {self.context}")
        x = self.tok(ids) + self.pos(torch.arange(L, device=ids.device))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


class HFCausalLM(nn.Module):
    """A ``transformers`` causal LM that returns plain logits (``model(ids).logits``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.hf = model
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=ids).logits


def auto_config(config: dict, examples: str = "gpt2, llama, bert") -> Any:
    """A ``transformers`` config from a dict with ``model_type`` (the rest are its fields)."""
    tf = require_transformers()
    kwargs = dict(config)
    kind = kwargs.pop("model_type", None)
    if kind is None:
        raise TextError(f"a transformers model config needs model_type ({examples}, ...)")
    return tf.AutoConfig.for_model(kind, **kwargs)


def build_hf(config: dict) -> HFCausalLM:
    """A fresh ``transformers`` causal LM from a config dict with ``model_type`` (``gpt2``, ``llama``, ...)."""
    tf = require_transformers()
    return HFCausalLM(tf.AutoModelForCausalLM.from_config(auto_config(config, "gpt2, llama")))


def model_dir(path: str | Path) -> Path:
    """A local model directory with its config, weights and a tokenizer, or an error naming the directory and what
    it lacks."""
    d = Path(path).expanduser()
    if not d.is_dir():
        raise TextError(f"model directory {d}: no such directory")
    if not any((d / f).is_file() for f in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")):
        raise TextError(f"model directory {d} has no weights (model.safetensors or pytorch_model.bin)")
    if not any((d / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise TextError(f"model directory {d} has no tokenizer (tokenizer.json or tokenizer_config.json)")
    if not (d / "config.json").is_file():
        raise TextError(f"model directory {d} has no config.json (a transformers model saved with save_pretrained)")
    return d


def load_hf_tokenizer(path: str | Path) -> Any:
    """The tokenizer of a model directory alone (tokenizing a corpus needs no weights)."""
    tf = require_transformers()
    return tf.AutoTokenizer.from_pretrained(model_dir(path))


def load_hf(path: str | Path) -> tuple[HFCausalLM, Any]:
    """A causal LM and its tokenizer from a local directory; a missing piece is an error naming the directory."""
    tf = require_transformers()
    d = model_dir(path)
    return HFCausalLM(tf.AutoModelForCausalLM.from_pretrained(d)), tf.AutoTokenizer.from_pretrained(d)


def save_hf(model: HFCausalLM, tokenizer: Any, path: str | Path) -> None:
    """``save_pretrained`` of the model (and the tokenizer when there is one): transformers loads it back."""
    model.hf.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def vocab_size_of(model: nn.Module) -> int:
    """The size of the logits' last dimension (one probe forward when the model does not say)."""
    if hasattr(model, "vocab_size"):
        return int(model.vocab_size)
    with torch.no_grad():
        return int(model(torch.zeros(1, 2, dtype=torch.long)).shape[-1])


def check_same_vocabulary(teacher: nn.Module, student: nn.Module, t_tok: Any = None, s_tok: Any = None) -> int:
    """Teacher and student must predict the same tokens: sizes equal and, when both tokenizers are known,
    the same token for every id. Returns the vocabulary size; otherwise an error naming both."""
    vt, vs = vocab_size_of(teacher), vocab_size_of(student)
    if vt != vs:
        raise TextError(
            f"teacher vocabulary has {vt:,} tokens, student vocabulary {vs:,}: token-level distillation compares "
            "distributions over one vocabulary; give both models the same tokenizer (or resize the student's "
            "embeddings to the teacher's tokenizer)"
        )
    if t_tok is not None and s_tok is not None and hasattr(t_tok, "get_vocab") and hasattr(s_tok, "get_vocab"):
        a, b = t_tok.get_vocab(), s_tok.get_vocab()
        if a != b:
            diff = sorted(set(a.items()) ^ set(b.items()), key=lambda kv: kv[1])[:3]
            raise TextError(
                f"teacher tokenizer {getattr(t_tok, 'name_or_path', '?')!r} and student tokenizer "
                f"{getattr(s_tok, 'name_or_path', '?')!r} have {vt:,} tokens each but map them differently "
                f"(e.g. {diff}); use one tokenizer for both"
            )
    return vt
