"""Distill inside your own training loop: your models, your loop, two kdistill objects.

    python examples/own_loop.py            # ~20 s on 2 CPU cores, scikit-learn's bundled digits

A teacher and a student, both defined here as plain nn.Modules, on the 8x8 digits that ship inside
scikit-learn (no download). The teacher is trained on hard labels; the student then learns from the
teacher's soft targets (kdistill.kd_loss + kdistill.FrozenTeacher) in a loop you control.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdistill import FrozenTeacher, kd_loss
from kdistill.data import BatchLoader, load_data


class MyTeacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(256, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MyStudent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def train(model: nn.Module, loss_fn: Callable[[dict], torch.Tensor], loader: BatchLoader, epochs: int) -> None:
    """Your loop: nothing kdistill-specific except that batches are dicts {"x", "y", "index"}."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(epochs):
        model.train()
        loader.set_epoch(epoch)
        for batch in loader:
            loss = loss_fn(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> dict[str, float]:
    """Train the three models; print and return their test accuracies."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    data = load_data("digits", val_size=150)
    # The student has labels for only 100 digits; the teacher's soft targets are what it learns from.
    few = data.train.take(torch.arange(100))
    test_x, test_y = data.test.x, data.test.y

    teacher = MyTeacher()
    train(teacher, lambda b: F.cross_entropy(teacher(b["x"]), b["y"]), BatchLoader(data.train, 64, shuffle=True), 30)
    acc = {"teacher": accuracy(teacher, test_x, test_y)}
    print(f"teacher   ({params(teacher):>6} params): test acc {acc['teacher']:.3f}")

    torch.manual_seed(1)
    scratch = MyStudent()
    train(scratch, lambda b: F.cross_entropy(scratch(b["x"]), b["y"]), BatchLoader(few, 32, shuffle=True), 60)
    acc["scratch"] = accuracy(scratch, test_x, test_y)
    print(f"scratch   ({params(scratch):>6} params): test acc {acc['scratch']:.3f}")

    torch.manual_seed(1)
    student = MyStudent()
    frozen = FrozenTeacher(teacher)  # eval mode + no grad, whatever the surrounding code does

    def distill(b: dict) -> torch.Tensor:
        # alpha * T^2 * KL(teacher^T || student^T) + (1 - alpha) * CE on the labelled rows (y = -1: no label)
        return kd_loss(student(b["x"]), frozen(b["x"]), b["y"], T=4.0, alpha=0.9)

    # Soft targets on every training image; hard labels kept only for the 100 labelled ones.
    transfer = data.train.unlabelled()
    transfer.y[:100] = data.train.y[:100]
    train(student, distill, BatchLoader(transfer, 32, shuffle=True), 20)
    acc["distilled"] = accuracy(student, test_x, test_y)
    print(f"distilled ({params(student):>6} params): test acc {acc['distilled']:.3f}")
    # Equivalent, as a module: kdistill.Distiller(student, teacher, T=4.0, alpha=0.9)(batch).loss
    return acc


if __name__ == "__main__":
    main()
