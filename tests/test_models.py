from __future__ import annotations

import pytest
import torch

from kdistill.models import CNN, build_model, count_params, load_state_strict


def test_builtin_shapes_and_sizes() -> None:
    x = torch.randn(2, 1, 28, 28)
    teacher = build_model("cnn", (1, 28, 28), 10, {"channels": [32, 64, 128], "convs_per_stage": [2, 2, 1]})
    student = build_model(
        "cnn", (1, 28, 28), 10, {"channels": [16, 32, 64], "convs_per_stage": [1, 1, 1], "stem_stride": 2}
    )
    mlp = build_model("mlp", (1, 28, 28), 10, {"hidden": [800, 800], "dropout": 0.5})
    for m in (teacher, student, mlp):
        assert m(x).shape == (2, 10)
    # 5 convs: 1*32*9 + 32*32*9 + 32*64*9 + 64*64*9 + 64*128*9 weights, BN affine 2*(32+32+64+64+128), head 128*10+10
    assert count_params(teacher) == 138528 + 640 + 1290
    assert count_params(mlp) == 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10
    assert count_params(teacher) / count_params(student) > 5


def test_cnn_rejects_mismatched_stage_counts() -> None:
    with pytest.raises(ValueError, match="one count per stage"):
        CNN(1, 10, channels=[8, 16], convs_per_stage=[1])


def test_user_model_by_import_path_with_kwargs() -> None:
    m = build_model("tests.fixtures.user_models:TinyNet", (1, 8, 8), 7, {"width": 5})
    assert m(torch.randn(3, 1, 8, 8)).shape == (3, 7)  # num_classes passed because the signature takes it
    assert m.head.in_features == 5
    plain = build_model("tests.fixtures.user_models:make_plain", (1, 8, 8), 7, {"width": 6})
    assert plain(torch.randn(3, 1, 8, 8)).shape == (3, 6)


@pytest.mark.parametrize(
    "arch, message",
    [
        ("resnet", "neither a built-in"),
        ("no_such_pkg.mod:Net", "cannot import module 'no_such_pkg.mod'"),
        ("tests.fixtures.user_models:Missing", "has no attribute 'Missing'"),
        ("tests.fixtures.user_models:not_a_model", "not an nn.Module"),
    ],
)
def test_bad_model_specs_explain_themselves(arch: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(arch, (1, 8, 8), 10)


def test_user_factory_kwargs_that_do_not_fit_its_signature_are_named() -> None:
    with pytest.raises(
        ValueError, match=r"user_models:make_plain'\(width: int = 4\).*cannot take kwargs \{'depth': 2\}"
    ):
        build_model("tests.fixtures.user_models:make_plain", (1, 8, 8), 7, {"depth": 2})
    with pytest.raises(ValueError, match="missing a required argument: 'n'.*give every required argument there"):
        build_model("tests.fixtures.user_models:needs_n", (1, 8, 8), 7, {})


def test_bad_builtin_kwargs_name_the_arch() -> None:
    with pytest.raises(ValueError, match="model arch 'mlp': bad keyword arguments"):
        build_model("mlp", (1, 8, 8), 10, {"hiden": [3]})


def test_load_state_strict_names_missing_unexpected_and_shapes() -> None:
    a = build_model("mlp", (1, 8, 8), 10, {"hidden": [16]})
    b = build_model("mlp", (1, 8, 8), 10, {"hidden": [32, 32]})
    with pytest.raises(ValueError) as e:
        load_state_strict(a, b.state_dict(), "other.pt")
    msg = str(e.value)
    assert "other.pt" in msg and "not in model: features.3.bias, features.3.weight" in msg
    assert "features.1.weight: checkpoint (32, 64) vs model (16, 64)" in msg
    load_state_strict(a, a.state_dict(), "same.pt")  # a matching state loads silently
