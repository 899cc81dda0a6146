"""Augmentation on batched tensors, and a teacher cache that stays correct under augmentation.

A cache keyed by sample index alone is wrong once inputs are augmented: it freezes one view (the
first epoch's crop) while the student sees new ones. Following "Fast Knowledge Distillation" (Shen &
Xing 2022), :class:`ViewCache` fixes ``K`` augmentation draws per sample by seed, runs the teacher once
on exactly those views, and stores its logits (float16, a memory-mapped file). During training each
sample is shown to the student as one of its ``K`` views (a fresh choice per epoch), so the teacher's
row always belongs to the very input the student receives.

An augmentation draw is three small integers per sample: the shift ``(dy, dx)`` into the padded image
and a flip bit. :func:`apply_params` turns them into pixels; the online path draws them per batch
(:func:`augment_batch`), the cache draws them once per (sample, view).

On disk a cache is a directory ``<dir>/<key>/`` holding ``logits.f16`` (rows x K x C), ``params.i16``
(rows x K x 3), ``index.i64`` (rows) and ``meta.json`` (the key, the shapes, each file's size and
SHA-256). The key hashes the teacher's weights, the transfer set, the augmentation, ``K``, the seed and
the top-k setting, so a change of any of them builds a new cache instead of reusing a stale one. A
file whose size or checksum does not match ``meta.json`` is reported (:class:`CacheError`), never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdistill.config import AugmentConfig
from kdistill.data import RowIndex, Split

CACHE_FORMAT = "kdistill-view-cache/1"
_FILES = {"logits": ("logits.f16", np.float16), "params": ("params.i16", np.int16), "index": ("index.i64", np.int64)}


class CacheError(RuntimeError):
    """A cache directory is corrupt, truncated, or belongs to another teacher/data/augmentation."""


# ----------------------------------------------------------------------------- augmentation


def is_augmented(cfg: AugmentConfig) -> bool:
    return cfg.shift > 0 or cfg.flip


def draw_params(n: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """``n`` augmentation draws as an ``(n, 3)`` int16 tensor: shift ``dy``, ``dx`` in ``[0, 2*shift]``, flip."""
    p = cfg.shift
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    flip = (torch.rand(n, generator=gen) < 0.5) if cfg.flip else torch.zeros(n, dtype=torch.bool)
    return torch.stack([dy, dx, flip.long()], 1).to(torch.int16)


def apply_params(x: torch.Tensor, params: torch.Tensor, shift: int) -> torch.Tensor:
    """Apply per-sample draws to a batch ``(B, C, H, W)``: pad by ``shift``, crop at ``(dy, dx)``, flip.

    Padding uses each image's own minimum (the background of normalized Fashion-MNIST/digits images), so
    a shifted image grows no artificial border and a sample's view never depends on its batch-mates,
    which is what lets the cache store a view computed in another batch.
    """
    if x.dim() != 4:
        return x
    B, C, H, W = x.shape
    params = params.to(x.device).long()
    if shift > 0:
        p = shift
        fill = x.amin(dim=(1, 2, 3), keepdim=True)
        xp = F.pad(x - fill, (p, p, p, p)) + fill  # pad with zeros around the shifted image, i.e. with `fill`
        rows = (params[:, 0, None] + torch.arange(H, device=x.device)[None])[:, None, :, None]
        cols = (params[:, 1, None] + torch.arange(W, device=x.device)[None])[:, None, None, :]
        b = torch.arange(B, device=x.device)[:, None, None, None]
        c = torch.arange(C, device=x.device)[None, :, None, None]
        x = xp[b, c, rows, cols]
    flip = params[:, 2].bool()
    if bool(flip.any()):
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Random shift (pad + crop) and optional horizontal flip, per sample, on a whole batch."""
    if x.dim() != 4 or not is_augmented(cfg):
        return x
    return apply_params(x, draw_params(x.shape[0], cfg, gen), cfg.shift)


# ----------------------------------------------------------------------------- keys and files


def state_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's weights and buffers (names, shapes, values): changes when the teacher does."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(teacher: nn.Module, x: torch.Tensor, index: torch.Tensor, aug: AugmentConfig, views: int,
              seed: int, topk: int | None, T: float, precision: str = "float32") -> str:  # fmt: skip
    h = hashlib.sha256()
    h.update(CACHE_FORMAT.encode())
    h.update(state_fingerprint(teacher).encode())
    h.update(x.contiguous().numpy().tobytes())
    h.update(index.contiguous().numpy().tobytes())
    # T matters only for top-k storage (probabilities at T are stored); full logits do not depend on it.
    payload = {
        "aug": aug.model_dump(),
        "views": views,
        "seed": seed,
        "topk": topk,
        "T": T if topk else None,
        "precision": precision,
    }
    h.update(json.dumps(payload, sort_keys=True).encode())
    return h.hexdigest()[:20]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- the cache


class ViewCache:
    """Teacher logits for ``K`` fixed augmented views of every sample of a transfer set.

    ``logits``: ``(rows, K, C)`` float16, ``params``: ``(rows, K, 3)`` draws, ``index``: each row's sample
    index (rows are found by ``batch["index"]`` as in :class:`~kdistill.distiller.LogitCache`).
    """

    def __init__(self, logits: torch.Tensor, params: torch.Tensor, index: torch.Tensor, shift: int, seed: int,
                 path: Path | None = None) -> None:  # fmt: skip
        if logits.dim() != 3 or params.shape != (*logits.shape[:2], 3) or index.shape != logits.shape[:1]:
            raise CacheError(f"ViewCache shapes disagree: logits {tuple(logits.shape)}, params "
                             f"{tuple(params.shape)}, index {tuple(index.shape)}")  # fmt: skip
        self.logits, self.params, self.index = logits, params, index
        self.shift, self.seed, self.path = shift, seed, path
        self.views = logits.shape[1]
        self.rows = RowIndex(index, "teacher view cache")
        self._epoch: tuple[int, int] | None = None
        self._choice = torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.index)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.logits, self.params, self.index))

    def choose(self, index: torch.Tensor, epoch: int, seed: int = 0) -> torch.Tensor:
        """Which of its ``K`` views each sample shows in ``epoch`` to the student of ``seed``.

        A pure function of ``(cache seed, seed, epoch, index)``: no state to save, so a resumed run and
        every process of a distributed run pick the same views as one uninterrupted process.
        """
        if (epoch, seed) != self._epoch:
            mixed = np.random.SeedSequence([self.seed, seed, 104729, epoch]).generate_state(1, np.uint64)[0]
            g = torch.Generator().manual_seed(int(mixed >> 1))
            self._choice = torch.randint(0, self.views, (len(self.rows),), generator=g)
            self._epoch = (epoch, seed)
        return self._choice[index.cpu()]

    def student_batch(self, batch: dict[str, torch.Tensor], epoch: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """The batch as the student must see it: each sample replaced by its chosen cached view."""
        index = batch["index"].cpu()
        view = self.choose(index, epoch, seed)
        params = self.params[self.rows(index), view]
        return {**batch, "x": apply_params(batch["x"], params, self.shift), "view": view.to(batch["x"].device)}

    def __call__(self, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        out = self.logits[self.rows(index), view.cpu()].float()
        return out.to(index.device)

    # ------------------------------------------------------------------------- build / open

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        teacher: nn.Module,
        split: Split,
        aug: AugmentConfig,
        views: int,
        seed: int,
        path: Path | None = None,
        key: str = "",
        topk: int | None = None,
        T: float = 1.0,
        device: torch.device | str = "cpu",
        batch_size: int = 256,
    ) -> ViewCache:
        """Draw ``views`` augmentations per sample, run the teacher on each, store the logits.

        ``teacher``: a :class:`~kdistill.distiller.FrozenTeacher` (its ``fast`` bf16 path is used when on)
        or any module (run in eval mode, float32).
        The draws of a sample depend only on ``(seed, its index)``, not on batching or split order.
        With ``path`` the cache is written there (atomically: a temporary directory renamed into place)
        and memory-mapped back. ``topk`` keeps only the ``k`` largest probabilities at temperature ``T``
        (the rest of the mass spread evenly over the other classes) and stores ``T * log p``, whose
        softmax at ``T`` is exactly that distribution.
        """
        model = getattr(teacher, "model", teacher)
        was = model.training
        model.eval()
        n_index = int(split.index.max()) + 1 if len(split) else 0
        table = draw_params(n_index * views, aug, torch.Generator().manual_seed(seed)).view(n_index, views, 3)
        params = table[split.index]
        logits = []
        try:
            for i in range(0, len(split), batch_size):
                x, p = split.x[i : i + batch_size].to(device), params[i : i + batch_size]
                n = x.shape[0]
                xv = apply_params(x.repeat_interleave(views, 0), p.reshape(n * views, 3), aug.shift)
                # A FrozenTeacher runs its own forward (with its fast bf16 path when enabled); a bare
                # module runs in eval mode as it is.
                out = teacher(xv) if hasattr(teacher, "fast") else model(xv)
                logits.append(out.float().cpu().view(n, views, -1))
        finally:
            model.train(was)
        lg = torch.cat(logits)
        if topk is not None and topk < lg.shape[-1]:
            lg = _topk_logits(lg, topk, T)
        cache = cls(lg.half(), params.clone(), split.index.clone(), aug.shift, seed)
        if path is not None:
            cache.save(Path(path), key)
            return cls.open(Path(path), key, verify=False)  # save() just hashed these very files
        return cache

    def save(self, path: Path, key: str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            meta: dict = {"format": CACHE_FORMAT, "key": key, "shift": self.shift, "seed": self.seed,
                          "shape": list(self.logits.shape), "files": {}}  # fmt: skip
            for name, (fname, dtype) in _FILES.items():
                arr = getattr(self, name).numpy().astype(dtype, copy=False)
                arr.tofile(tmp / fname)
                meta["files"][name] = {"name": fname, "bytes": arr.nbytes, "sha256": _sha256(tmp / fname),
                                       "shape": list(arr.shape)}  # fmt: skip
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def open(cls, path: Path, key: str | None = None, verify: bool = True) -> ViewCache:
        """Memory-map a saved cache. Raises :class:`CacheError` when it is missing, stale or damaged."""
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise CacheError(f"teacher view cache {path}: no meta.json (not a cache, or its writing was interrupted)")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise CacheError(f"teacher view cache {meta_path} is corrupt: {e}") from None
        if meta.get("format") != CACHE_FORMAT:
            raise CacheError(f"teacher view cache {path}: format {meta.get('format')!r}, expected {CACHE_FORMAT!r}")
        if key is not None and meta.get("key") != key:
            raise CacheError(
                f"teacher view cache {path} was built for key {meta.get('key')}, this run needs {key} "
                "(teacher, data or augmentation changed)"
            )
        arrays = {}
        for name, (fname, dtype) in _FILES.items():
            info, f = meta["files"][name], path / fname
            size = f.stat().st_size if f.is_file() else -1
            if size != info["bytes"]:
                raise CacheError(f"teacher view cache file {f} has {size} bytes, meta.json says {info['bytes']} "
                                 "(truncated or replaced); delete the directory to rebuild it")  # fmt: skip
            if verify and _sha256(f) != info["sha256"]:
                raise CacheError(f"teacher view cache file {f} fails its SHA-256 check (corrupt); delete the "
                                 "directory to rebuild it")  # fmt: skip
            mm = np.memmap(f, dtype=dtype, mode="r", shape=tuple(info["shape"])) if info["bytes"] else np.zeros(
                info["shape"], dtype)  # fmt: skip
            arrays[name] = _readonly_tensor(mm)
        return cls(arrays["logits"], arrays["params"], arrays["index"], int(meta["shift"]), int(meta["seed"]), path)


def _readonly_tensor(mm: np.ndarray) -> torch.Tensor:
    # A read-only memory map: torch warns that the array is not writable, and nothing ever writes to it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(mm)


def _topk_logits(logits: torch.Tensor, k: int, T: float) -> torch.Tensor:
    """Keep the top-``k`` probabilities at temperature ``T``; spread the rest evenly; return ``T * log p``."""
    p = (logits / T).softmax(-1)
    top, idx = p.topk(k, dim=-1)
    rest = (1.0 - top.sum(-1, keepdim=True)).clamp_min(0) / (p.shape[-1] - k)
    q = rest.expand_as(p).clone()
    q.scatter_(-1, idx, top)
    return T * q.clamp_min(1e-12).log()
