r"""Teacher outputs computed once: per sample (:class:`LogitCache`) or per augmented view (:class:`ViewCache`).

Both are :class:`~kdistill.teacher.TeacherSource`\ s: the training loop asks them for the batch the
student must see and for the teacher's outputs on it.

Without augmentation the teacher's output on a sample never changes: :class:`LogitCache` keeps one row
per sample index (and, optionally, tapped layers). A cache keyed by sample index alone is wrong once
inputs are augmented: it freezes one view (the first epoch's crop) while the student sees new ones, so
:class:`LogitCache` refuses augmented batches. Following "Fast Knowledge Distillation" (Shen & Xing
2022), :class:`ViewCache` fixes ``K`` augmentation draws per sample by seed, runs the teacher once on
exactly those views, and stores its logits (float16, a memory-mapped file). During training each sample
is shown to the student as one of its ``K`` views (a fresh choice per epoch), so the teacher's row
always belongs to the very input the student receives.

On disk a view cache is a directory ``<dir>/<key>/`` holding ``logits.f16`` (rows x K x C),
``params.i16`` (rows x K x 3), ``index.i64`` (rows) and ``meta.json`` (the key, the shapes, each file's
size and SHA-256). The key hashes the teacher's weights, the transfer set, the augmentation, ``K``, the
seed and the top-k setting, so a change of any of them builds a new cache instead of reusing a stale
one. A file whose size or checksum does not match ``meta.json`` is reported (:class:`CacheError`),
never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdistill.augment import Augmenter, apply_params, draw_params
from kdistill.config import AugmentConfig
from kdistill.data import Batch, RowIndex, Split, fingerprint
from kdistill.data.loader import INFERENCE_BATCH, RowBuffer, rows_of
from kdistill.data.store import Inputs
from kdistill.io import replace_dir
from kdistill.taps import Tapped
from kdistill.teacher import FrozenTeacher, Layers, TeacherOutputs, frozen_forward

CACHE_FORMAT = "kdistill-view-cache/1"
_FILES = {"logits": ("logits.f16", np.float16), "params": ("params.i16", np.int16), "index": ("index.i64", np.int64)}


class CacheError(RuntimeError):
    """A cache directory is corrupt, truncated, or belongs to another teacher/data/augmentation."""


# ----------------------------------------------------------------------------- one row per sample


class LogitCache:
    """Teacher outputs stored per sample, keyed by ``batch["index"]``: logits, and optionally layers.

    Valid only when the student sees exactly the inputs the teacher saw (no random augmentation):
    :meth:`student_batch` refuses an active augmentation. Rows are addressed by the sample's index in its
    original split, so shuffling, subsets and transfer sets all find the right row; a lookup table maps
    index to row, so a sparse subset costs memory for its own rows only. ``feats`` holds captured teacher
    layers (``{spec: (n, ...)}``) for terms that read them.
    """

    kind = "per-sample cache"

    def __init__(self, logits: torch.Tensor, index: torch.Tensor, feats: dict[str, torch.Tensor] | None = None) -> None:
        if index.dim() != 1 or len(index) != len(logits):
            raise ValueError(
                f"LogitCache needs one distinct index per row: logits {tuple(logits.shape)}, index {tuple(index.shape)}"
            )
        self.logits = logits
        self.index = index
        self.feats = dict(feats or {})
        self.layers: Layers = tuple(self.feats)
        self._rows = RowIndex(index, "teacher logit cache")

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def build(cls, teacher: nn.Module, batches: Iterable[Batch], layers: Sequence[str] = ()) -> LogitCache:
        """Run the teacher once over ``batches``, in eval mode and exact float32 (a FrozenTeacher's fast path
        is not used: these numbers are reused by every epoch and seed); ``layers`` are teacher layers to
        keep too."""
        model = teacher.model if isinstance(teacher, FrozenTeacher) else teacher
        was_training = model.training
        model.eval()
        tap = Tapped(model, list(layers)) if layers else None
        n = rows_of(batches)
        logits, index, feats = RowBuffer(n), RowBuffer(n), {name: RowBuffer(n) for name in layers}
        try:
            for b in batches:
                out, captured = frozen_forward(model, b["x"], tap)
                for name, v in captured.items():
                    feats[name].add(v)
                logits.add(out)
                index.add(b["index"])
        finally:
            if tap is not None:
                tap.close()
            model.train(was_training)
        return cls(logits.result(), index.result(), {name: v.result() for name, v in feats.items()})

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [self.logits, self._rows.table, *self.feats.values()])

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """The cached logits of these sample indices."""
        return self.logits[self._rows(index)]

    def student_batch(self, batch: Batch, epoch: int, seed: int, augment: Augmenter) -> Batch:
        if augment.active:
            raise ValueError(
                "a per-sample teacher cache is only valid without augmentation (it holds one output per sample, "
                "the student would see other inputs); use a ViewCache or run the teacher online"
            )
        return batch

    def __call__(self, batch: Batch) -> TeacherOutputs:
        device = batch["x"].device
        rows = self._rows(batch["index"])  # once per step: logits and layers share the rows
        return self.logits[rows].to(device), {k: self.feats[k][rows].to(device) for k in self.layers}


# ----------------------------------------------------------------------------- keys and files


def state_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's weights and buffers (names, shapes, values): changes when the teacher does."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(
    teacher: nn.Module,
    x: Inputs,
    index: torch.Tensor,
    aug: AugmentConfig,
    views: int,
    seed: int,
    topk: int | None,
    T: float,
    precision: str = "float32",
) -> str:
    h = hashlib.sha256()
    h.update(CACHE_FORMAT.encode())
    h.update(state_fingerprint(teacher).encode())
    h.update(fingerprint(x).encode())  # the inputs' bytes, or their file and rows when read from disk
    h.update(index.contiguous().numpy().tobytes())
    # T matters only for top-k storage (probabilities at T are stored); full logits do not depend on it.
    payload = {
        "aug": aug.key(),
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


# ----------------------------------------------------------------------------- K augmented views per sample


class ViewCache:
    """Teacher logits for ``K`` fixed augmented views of every sample of a transfer set.

    ``logits``: ``(rows, K, C)`` float16, ``params``: ``(rows, K, 3)`` draws, ``index``: each row's sample
    index (rows are found by ``batch["index"]`` as in :class:`LogitCache`). A view cache holds logits only.
    """

    kind = "view cache"
    layers: Layers = ()

    def __init__(
        self,
        logits: torch.Tensor,
        params: torch.Tensor,
        index: torch.Tensor,
        shift: int,
        seed: int,
        path: Path | None = None,
    ) -> None:
        if logits.dim() != 3 or params.shape != (*logits.shape[:2], 3) or index.shape != logits.shape[:1]:
            raise CacheError(
                f"ViewCache shapes disagree: logits {tuple(logits.shape)}, params {tuple(params.shape)}, "
                f"index {tuple(index.shape)}"
            )
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

    def student_batch(self, batch: Batch, epoch: int, seed: int = 0, augment: Augmenter | None = None) -> Batch:
        """The batch as the student must see it: each sample replaced by its chosen cached view (the
        augmenter's random draws are not used: the views were drawn when the cache was built)."""
        index = batch["index"].cpu()
        view = self.choose(index, epoch, seed)
        params = self.params[self.rows(index), view]
        return {**batch, "x": apply_params(batch["x"], params, self.shift), "view": view.to(batch["x"].device)}

    def lookup(self, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """The cached logits (float32) of view ``view[i]`` of sample ``index[i]``."""
        out = self.logits[self.rows(index), view.cpu()].float()
        return out.to(index.device)

    def __call__(self, batch: Batch) -> TeacherOutputs:
        return self.lookup(batch["index"], batch["view"]).to(batch["x"].device), {}

    # ------------------------------------------------------------------------- build / open

    @classmethod
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
        batch_size: int | None = None,
    ) -> ViewCache:
        """Draw ``views`` augmentations per sample, run the teacher on each, store the logits.

        ``teacher``: a :class:`~kdistill.teacher.FrozenTeacher` (its ``fast`` bf16 path is used when on)
        or any module (run in eval mode, float32).
        The draws of a sample depend only on ``(seed, its index)``, not on batching or split order.
        With ``path`` the cache is written there (atomically: a temporary directory renamed into place)
        and memory-mapped back. ``topk`` keeps only the ``k`` largest probabilities at temperature ``T``
        (the rest of the mass spread evenly over the other classes) and stores ``T * log p``, whose
        softmax at ``T`` is exactly that distribution.
        """
        model = teacher.model if isinstance(teacher, FrozenTeacher) else teacher
        was = model.training
        model.eval()
        n_index = int(split.index.max()) + 1 if len(split) else 0
        table = draw_params(n_index * views, aug, torch.Generator().manual_seed(seed)).view(n_index, views, 3)
        params = table[split.index]
        logits = RowBuffer(len(split))
        # Each sample is shown as ``views`` images: ``batch_size`` samples (default: INFERENCE_BATCH images in all).
        batch_size = batch_size or max(1, INFERENCE_BATCH // views)
        try:
            for i in range(0, len(split), batch_size):
                x, p = split.x[i : i + batch_size].to(device), params[i : i + batch_size]
                n = x.shape[0]
                xv = apply_params(x.repeat_interleave(views, 0), p.reshape(n * views, 3), aug.shift)
                if isinstance(teacher, FrozenTeacher):
                    out = teacher(xv)  # its own forward, with its fast bf16 path when enabled
                else:
                    out = frozen_forward(model, xv)[0]
                logits.add(out.cpu().view(n, views, -1))
        finally:
            model.train(was)
        lg = logits.result()
        if topk is not None and topk < lg.shape[-1]:
            lg = _topk_logits(lg, topk, T)
        cache = cls(lg.half(), params.clone(), split.index.clone(), aug.shift, seed)
        if path is not None:
            cache.save(Path(path), key)
            return cls.open(Path(path), key, verify=False)  # save() just hashed these very files
        return cache

    def save(self, path: Path, key: str) -> None:
        """Write the cache into ``path`` (a directory), replacing what is there only once it is complete."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            meta: dict = {
                "format": CACHE_FORMAT,
                "key": key,
                "shift": self.shift,
                "seed": self.seed,
                "shape": list(self.logits.shape),
                "files": {},
            }
            for name, (fname, dtype) in _FILES.items():
                arr = getattr(self, name).numpy().astype(dtype, copy=False)
                arr.tofile(tmp / fname)
                meta["files"][name] = {
                    "name": fname,
                    "bytes": arr.nbytes,
                    "sha256": _sha256(tmp / fname),
                    "shape": list(arr.shape),
                }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            replace_dir(tmp, path)
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
        arrays = {name: _open_array(path, name, meta["files"][name], verify) for name in _FILES}
        return cls(arrays["logits"], arrays["params"], arrays["index"], int(meta["shift"]), int(meta["seed"]), path)


def _open_array(path: Path, name: str, info: dict, verify: bool) -> torch.Tensor:
    """One file of a saved cache, memory-mapped read-only after its size (and checksum) is checked."""
    fname, dtype = _FILES[name]
    f = path / fname
    size = f.stat().st_size if f.is_file() else -1
    if size != info["bytes"]:
        raise CacheError(
            f"teacher view cache file {f} has {size} bytes, meta.json says {info['bytes']} (truncated or "
            "replaced); delete the directory to rebuild it"
        )
    if verify and _sha256(f) != info["sha256"]:
        raise CacheError(
            f"teacher view cache file {f} fails its SHA-256 check (corrupt); delete the directory to rebuild it"
        )
    if not info["bytes"]:  # numpy cannot memory-map an empty file
        return torch.from_numpy(np.zeros(info["shape"], dtype))
    return _readonly_tensor(np.memmap(f, dtype=dtype, mode="r", shape=tuple(info["shape"])))


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
