"""Augmentation on batches: shifts pad with each image's own minimum, a view never depends on its batch-mates,
draws are seeded, and no augmentation means the very batch."""

from __future__ import annotations

import torch

from kdistill.augment import Augmenter, apply_params, augment_batch, draw_params, mix_batch
from kdistill.config import AugmentConfig
from kdistill.distiller import Distiller
from tests.images import AUG, images


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
    x = images().x
    p = draw_params(len(x), AUG, torch.Generator().manual_seed(0))
    whole = apply_params(x, p, AUG.shift)
    alone = torch.cat([apply_params(x[i : i + 1], p[i : i + 1], AUG.shift) for i in range(len(x))])
    assert torch.equal(whole, alone)


def test_augment_batch_is_seeded_and_off_means_identity() -> None:
    x = images().x
    a = augment_batch(x, AUG, torch.Generator().manual_seed(1))
    b = augment_batch(x, AUG, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert augment_batch(x, AugmentConfig(), torch.Generator()) is x


def test_augmenter_draws_from_its_generator_only_when_augmenting() -> None:
    batch = {"x": images().x, "y": torch.zeros(40, dtype=torch.long)}
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    assert Augmenter(AugmentConfig(), gen)(batch) is batch and torch.equal(gen.get_state(), state)
    out = Augmenter(AUG, gen)(batch)
    assert torch.equal(out["x"], augment_batch(batch["x"], AUG, torch.Generator().manual_seed(5)))
    assert out["y"] is batch["y"] and not torch.equal(gen.get_state(), state)


def test_any_image_size_and_channel_count_is_augmented() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 7, 5, generator=g)  # RGB, not square
    params = draw_params(6, AUG, torch.Generator().manual_seed(1))
    out = apply_params(x, params, AUG.shift)
    assert out.shape == x.shape
    for i in range(6):  # each image: its own crop of its own padded self, the same for every channel
        dy, dx, flip = (int(v) for v in params[i])
        padded = torch.nn.functional.pad(x[i] - x[i].min(), (2, 2, 2, 2)) + x[i].min()
        want = padded[:, dy : dy + 7, dx : dx + 5]
        assert torch.equal(out[i], want.flip(-1) if flip else want)


# ----------------------------------------------------------------------------- mixup / cutmix (function matching)


def test_mixup_is_a_seeded_blend_with_a_batch_partner_and_unlabels_the_rows() -> None:
    x = images().x
    cfg = AugmentConfig(mixup=0.4)
    mixed, perm, lam = mix_batch(x, cfg, torch.Generator().manual_seed(3))
    assert 0 < lam < 1 and sorted(perm.tolist()) == list(range(len(x))) and not torch.equal(perm, torch.arange(len(x)))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[perm])
    again = mix_batch(x, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], mixed) and again[2] == lam
    out = Augmenter(cfg, torch.Generator().manual_seed(3))({"x": x, "y": torch.arange(len(x))})
    assert torch.equal(out["x"], mixed) and bool((out["y"] == -1).all())


def test_cutmix_pastes_one_box_of_the_partner_and_reports_the_share_kept() -> None:
    x = torch.arange(3 * 8 * 8, dtype=torch.float32).view(3, 1, 8, 8)
    checked = 0
    for seed in range(30):
        out, perm, lam = mix_batch(x, AugmentConfig(cutmix=1.0), torch.Generator().manual_seed(seed))
        from_partner = out != x  # no two images share a pixel value, so a changed pixel came from the partner
        assert torch.equal(out[from_partner], x[perm][from_partner])
        moved = [i for i in range(3) if perm[i] != i]
        if not moved:
            continue
        m = from_partner[moved[0], 0]
        rows, cols = m.any(1).nonzero(), m.any(0).nonzero()
        if len(rows):  # the pasted region is one rectangle, the same for every image
            assert bool(m[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all())
        assert lam == 1 - m.float().mean().item()
        checked += 1
    assert checked > 10


def test_online_teacher_labels_exactly_the_mixed_input_the_student_sees() -> None:
    seen: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}

    class Spy(torch.nn.Module):
        def __init__(self, who: str, seed: int) -> None:
            super().__init__()
            torch.manual_seed(seed)
            self.who, self.lin = who, torch.nn.Linear(64, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen[self.who].append(x.detach().clone())
            return self.lin(x.flatten(1))

    x = images().x[:, :1, :8, :8].contiguous()
    batch = {"x": x, "y": torch.zeros(len(x), dtype=torch.long), "index": torch.arange(len(x))}
    teacher = Spy("teacher", 1)
    d = Distiller(Spy("student", 0), teacher, T=2.0, alpha=1.0)
    aug = Augmenter(AugmentConfig(shift=1, mixup=1.0, cutmix=1.0), torch.Generator().manual_seed(0))
    for _ in range(4):
        sb = d.student_batch(batch, 0, 0, aug)
        out = d(sb)
        assert torch.equal(seen["teacher"][-1], seen["student"][-1]) and not torch.equal(seen["student"][-1], x)
        with torch.no_grad():
            want = teacher.lin(sb["x"].flatten(1))
        torch.testing.assert_close(d.teacher_logits(sb), want)
        assert out.parts["hard"].item() == 0.0 and out.parts["soft"].item() > 0
