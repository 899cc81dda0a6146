"""Distill intermediate layers of your own models, in your own loop, without touching their code.

    python examples/own_layers.py          # about a minute on 2 CPU cores, scikit-learn's bundled digits

The teacher and student of examples/own_loop.py (plain nn.Modules). Layers are named by their dotted
module paths, which kdistill.taps.layer_table lists; kdistill.Distiller captures them with forward hooks
and adds a FitNets hint (through a linear adapter it sizes itself) and RKD to logit KD.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reuse the models and loop of own_loop.py
from own_loop import MyStudent, MyTeacher, accuracy, train  # noqa: E402

from kdistill import Distiller  # noqa: E402
from kdistill.data import BatchLoader, load_data  # noqa: E402
from kdistill.taps import format_layer_table, layer_table, probe_shapes  # noqa: E402
from kdistill.terms import TermContext, build_term  # noqa: E402


def main(epochs: int = 20) -> dict[str, float]:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    data = load_data("digits", val_size=150)
    teacher = MyTeacher()
    train(
        teacher,
        lambda b: F.cross_entropy(teacher(b["x"]), b["y"]),
        BatchLoader(data.train, 64, shuffle=True),
        max(1, epochs + epochs // 2),
    )
    print(format_layer_table(layer_table(MyStudent(), (1, 8, 8))))

    # student layer net.2 (hidden ReLU, 16 values) <- teacher layer net.6 (flattened features, 256 values)
    s_layer, t_layer = "net.2", "net.6"
    s_shape = probe_shapes(MyStudent(), [s_layer], (1, 8, 8))[s_layer]
    t_shape = probe_shapes(teacher, [t_layer], (1, 8, 8))[t_layer]
    ctx = TermContext(s_layer, t_layer, s_shape, t_shape, num_classes=10, n_data=len(data.train), T=4.0)
    torch.manual_seed(1)
    student = MyStudent()
    terms = [build_term("fitnet", ctx, weight=1.0), build_term("rkd", ctx, weight=10.0)]
    distiller = Distiller(student, teacher, T=4.0, alpha=0.9, terms=terms)  # the teacher is frozen inside

    # Only 100 labels; soft targets and layer hints on every training image.
    transfer = data.train.unlabelled()
    transfer.y[:100] = data.train.y[:100]
    # Distiller.parameters() = the student's + the adapters' (the frozen teacher's need no gradient).
    train(distiller, lambda b: distiller(b).loss, BatchLoader(transfer, 32, shuffle=True), epochs)
    result = {
        "teacher": accuracy(teacher, data.test.x, data.test.y),
        "student": accuracy(student, data.test.x, data.test.y),
    }
    print(
        f"teacher test acc {result['teacher']:.3f}; student (logit KD + hint + RKD, "
        f"{distiller.extra_params()} adapter params) test acc {result['student']:.3f}"
    )
    return result


if __name__ == "__main__":
    main()
