"""Augmentation on batches and the augmentation-safe teacher cache (K fixed views per sample)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from kdistill.config import AugmentConfig, TrainConfig
from kdistill.data import Split
from kdistill.distiller import Distiller, FrozenTeacher, StepOutput
from kdistill.trainer import fit
from kdistill.views import CacheError, ViewCache, apply_params, augment_batch, cache_key, draw_params

AUG = AugmentConfig(shift=2, flip=True)


def _images(n: int = 40, side: int = 8, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, side, side, generator=g)
    return Split(x, torch.randint(0, 3, (n,), generator=g), torch.arange(n) * 2 + 5)


def _teacher(side: int = 8) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * side * side, 3)).eval()


# ----------------------------------------------------------------------------- augmentation


def test_apply_params_shifts_pads_with_each_images_own_minimum_and_flips() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # dy = dx = 0 with shift 1 reads the padded image from its top-left corner: one row/column of fill.
    out = apply_params(x, torch.tensor([[0, 0, 0]]), shift=1)
    assert torch.equal(out[0, 0, 1:, 1:], x[0, 0, :3, :3])
    assert torch.all(out[0, 0, 0, :] == x.min()) and torch.all(out[0, 0, :, 0] == x.min())
    # dy = dx = shift is the identity; the flip bit mirrors the columns.
    assert torch.equal(apply_params(x, torch.tensor([[1, 1, 0]]), shift=1), x)
    assert torch.equal(apply_params(x, torch.tensor([[1, 1, 1]]), shift=1), x.flip(-1))


def test_a_samples_view_does_not_depend_on_its_batch_mates() -> None:
    x = _images().x
    p = draw_params(len(x), AUG, torch.Generator().manual_seed(0))
    whole = apply_params(x, p, AUG.shift)
    alone = torch.cat([apply_params(x[i : i + 1], p[i : i + 1], AUG.shift) for i in range(len(x))])
    assert torch.equal(whole, alone)


def test_augment_batch_is_seeded_and_off_means_identity() -> None:
    x = _images().x
    a = augment_batch(x, AUG, torch.Generator().manual_seed(1))
    b = augment_batch(x, AUG, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert augment_batch(x, AugmentConfig(), torch.Generator()) is x


# ----------------------------------------------------------------------------- the cache


def test_every_cached_row_is_the_teachers_output_on_the_input_the_student_receives() -> None:
    """Through the real training loop: at every step the teacher, run on the batch the student gets,
    gives the logits the cache hands to the loss (to float16 precision, the cache's storage)."""
    split, teacher = _images(), _teacher()
    cache = ViewCache.build(teacher, split, AUG, views=3, seed=11)
    checked: list[int] = []

    class Checking(Distiller):
        def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
            with torch.no_grad():
                online = self.teacher.model(batch["x"])
            cached = self.teacher_logits(batch)
            assert torch.allclose(cached, online.half().float(), atol=2e-3, rtol=2e-3)
            checked.append(len(batch["x"]))
            return super().forward(batch)

    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    cfg = TrainConfig(epochs=3, batch_size=16, augment=AUG)
    fit(Checking(student, FrozenTeacher(teacher), T=4.0, alpha=0.9, cache=cache), split, split, cfg, seed=0,
        verbose=False)  # fmt: skip
    assert sum(checked) == 3 * 32  # 2 full batches of 16 per epoch (drop_last), 3 epochs


def test_views_are_fixed_per_sample_and_the_choice_varies_with_epoch_and_seed() -> None:
    split, teacher = _images(), _teacher()
    cache = ViewCache.build(teacher, split, AUG, views=4, seed=2)
    # other batching and another order of the same samples
    again = ViewCache.build(teacher, split.take(torch.randperm(40)), AUG, views=4, seed=2, batch_size=7)
    rows = again.rows(cache.index)  # `again` holds the same samples in another order
    assert torch.equal(cache.params, again.params[rows])
    torch.testing.assert_close(cache.logits, again.logits[rows], atol=2e-3, rtol=2e-3)
    idx = split.index
    assert torch.equal(cache.choose(idx, 0, seed=0), cache.choose(idx, 0, seed=0))
    assert not torch.equal(cache.choose(idx, 0, seed=0), cache.choose(idx, 1, seed=0))
    assert not torch.equal(cache.choose(idx, 0, seed=0), cache.choose(idx, 0, seed=1))
    # Over many epochs every view gets used.
    used = torch.stack([cache.choose(idx, e) for e in range(20)])
    assert set(used.flatten().tolist()) == {0, 1, 2, 3}


def test_saved_cache_is_memory_mapped_back_identically(tmp_path: Path) -> None:
    split, teacher = _images(), _teacher()
    mem = ViewCache.build(teacher, split, AUG, views=2, seed=0)
    disk = ViewCache.build(teacher, split, AUG, views=2, seed=0, path=tmp_path / "c", key="k1")
    assert disk.path == tmp_path / "c"
    for name in ("logits", "params", "index"):
        assert torch.equal(getattr(mem, name), getattr(disk, name))
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["index.i64", "logits.f16", "meta.json", "params.i16"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left


def _saved(tmp_path: Path) -> Path:
    ViewCache.build(_teacher(), _images(), AUG, views=2, seed=0, path=tmp_path / "c", key="k1")
    return tmp_path / "c"


def test_truncated_cache_file_is_reported(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = (path / "logits.f16").read_bytes()
    (path / "logits.f16").write_bytes(data[:-6])
    with pytest.raises(CacheError, match=r"logits.f16 has \d+ bytes, meta.json says \d+"):
        ViewCache.open(path, "k1")


def test_corrupt_cache_file_fails_its_checksum(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = bytearray((path / "params.i16").read_bytes())
    data[3] ^= 0xFF
    (path / "params.i16").write_bytes(bytes(data))
    with pytest.raises(CacheError, match="SHA-256"):
        ViewCache.open(path, "k1")


def test_stale_or_foreign_cache_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    with pytest.raises(CacheError, match="teacher, data or augmentation changed"):
        ViewCache.open(path, "another-key")
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CacheError, match="corrupt"):
        ViewCache.open(path, "k1")
    with pytest.raises(CacheError, match="no meta.json"):
        ViewCache.open(tmp_path / "nothing-here", "k1")


def test_cache_key_changes_with_teacher_data_and_augmentation() -> None:
    split, teacher = _images(), _teacher()
    base = cache_key(teacher, split.x, split.index, AUG, 4, 0, None, 4.0)
    assert base == cache_key(teacher, split.x, split.index, AUG, 4, 0, None, 8.0)  # T unused without top-k
    other_teacher = _teacher()
    with torch.no_grad():
        other_teacher[0].weight[0, 0, 0, 0] += 1e-3
    changed = [
        cache_key(other_teacher, split.x, split.index, AUG, 4, 0, None, 4.0),
        cache_key(teacher, split.x + 1e-3, split.index, AUG, 4, 0, None, 4.0),
        cache_key(teacher, split.x, split.index + 1, AUG, 4, 0, None, 4.0),
        cache_key(teacher, split.x, split.index, AugmentConfig(shift=1, flip=True), 4, 0, None, 4.0),
        cache_key(teacher, split.x, split.index, AUG, 8, 0, None, 4.0),
        cache_key(teacher, split.x, split.index, AUG, 4, 1, None, 4.0),
        cache_key(teacher, split.x, split.index, AUG, 4, 0, 2, 4.0),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_topk_keeps_the_k_largest_soft_targets_exactly_and_spreads_the_rest() -> None:
    split, teacher = _images(), _teacher()
    full = ViewCache.build(teacher, split, AUG, views=2, seed=0)
    top = ViewCache.build(teacher, split, AUG, views=2, seed=0, topk=1, T=2.0)
    p_full = (full.logits.float() / 2.0).softmax(-1)
    p_top = (top.logits.float() / 2.0).softmax(-1)
    torch.testing.assert_close(p_top.sum(-1), torch.ones(p_top.shape[:2]), atol=1e-3, rtol=0)
    best = p_full.argmax(-1, keepdim=True)
    torch.testing.assert_close(p_top.gather(-1, best), p_full.gather(-1, best), atol=2e-3, rtol=0)
    others = p_top.masked_fill(torch.zeros_like(p_top, dtype=torch.bool).scatter(-1, best, True), float("nan"))
    rest = (1 - p_full.gather(-1, best)) / 2  # 3 classes: the remaining mass is split over 2
    torch.testing.assert_close(others.nanmean(-1, keepdim=True), rest, atol=2e-3, rtol=0)


def test_meta_records_sizes_and_checksums(tmp_path: Path) -> None:
    meta = json.loads((_saved(tmp_path) / "meta.json").read_text())
    assert meta["key"] == "k1" and meta["shape"] == [40, 2, 3]
    assert {f["name"] for f in meta["files"].values()} == {"logits.f16", "params.i16", "index.i64"}
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in meta["files"].values())


def test_feature_terms_cannot_read_a_view_cache() -> None:
    from kdistill.terms import TermContext, build_term

    split, teacher = _images(), _teacher()
    cache = ViewCache.build(teacher, split, AUG, views=2, seed=0)
    student = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    term = build_term("fitnet", TermContext("0", "0", (4, 8, 8), (4, 8, 8), 3, 200, 4.0, "none"), {}, 1.0, 0.0)
    with pytest.raises(ValueError, match="kd.cache.mode=online"):
        Distiller(student, teacher, cache=cache, terms=[term])


# ----------------------------------------------------------------------------- in the pipeline


def _run_overrides(out: Path, shift: int = 1) -> list[str]:
    return [
        "data.name=synthetic",
        "data.val_size=60",
        "data.synthetic={n_train: 300, n_test: 100, num_classes: 3, side: 8}",
        "teacher.model.arch=mlp",
        "teacher.model.kwargs={hidden: [16]}",
        "teacher.train.epochs=1",
        "student.model.kwargs={hidden: [8]}",
        "student.train.epochs=1",
        f"student.train.augment={{shift: {shift}}}",
        "kd.cache.views=2",
        "roles=[kd]",
        "threads=1",
        f"output_dir={out}",
    ]


def test_pipeline_builds_the_view_cache_once_and_rebuilds_it_when_something_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdistill.config import load_config
    from kdistill.pipeline import run_experiment

    # The report's figures are tested elsewhere; here they would only cost time.
    monkeypatch.setattr("kdistill.pipeline.build_report", lambda run_dir: run_dir / "report.html")
    run_experiment(load_config(None, _run_overrides(tmp_path)))
    assert "augmented views of 240 transfer images cached" in capsys.readouterr().out
    caches = list((tmp_path / "_teacher_cache").iterdir())
    assert len(caches) == 1

    run_experiment(load_config(None, _run_overrides(tmp_path)))
    assert "reusing view cache" in capsys.readouterr().out

    run_experiment(load_config(None, _run_overrides(tmp_path, shift=2)))  # another augmentation: another key
    assert "cached" in capsys.readouterr().out and len(list((tmp_path / "_teacher_cache").iterdir())) == 2

    logits = caches[0] / "logits.f16"
    logits.write_bytes(logits.read_bytes()[:-2])  # damaged: reported, rebuilt, never loaded
    run_experiment(load_config(None, _run_overrides(tmp_path)))
    out = capsys.readouterr().out
    assert "has 2878 bytes, meta.json says 2880" in out and "rebuilding it" in out
    assert ViewCache.open(caches[0]).logits.shape == (240, 2, 3)
