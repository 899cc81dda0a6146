"""Augmentation on batches: shifts pad with each image's own minimum, a view never depends on its batch-mates,
draws are seeded, and no augmentation means the very batch."""

from __future__ import annotations

import torch

from kdistill.augment import Augmenter, apply_params, augment_batch, draw_params
from kdistill.config import AugmentConfig
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
