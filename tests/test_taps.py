from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn

from kdistill.cli import main
from kdistill.models import build_model, count_params
from kdistill.taps import NO_SHAPE, LayerError, Outputs, Tapped, freeze, layer_table, probe_shapes


def small_cnn() -> nn.Module:
    # conv-BN-ReLU(inplace) x2, pool, conv-BN-ReLU, avgpool, flatten | dropout | classifier
    return build_model("cnn", (1, 8, 8), 5, {"channels": [4, 6], "convs_per_stage": [2, 1]})


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.blocks = nn.Sequential(Block(3), Block(3))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class SharedAct(nn.Module):
    """One ReLU used after both hidden layers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


def all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_cnn_features_match_calling_layers_in_order() -> None:
    model = small_cnn().eval()
    x = torch.randn(3, 1, 8, 8)
    expected = {}
    with torch.no_grad():
        h = x
        for i, layer in enumerate(model.features):
            h = layer(h)
            expected[f"features.{i}"] = h.clone()  # the ReLUs are in place: keep each value as it was
        logits = model.classifier(model.dropout(h))
    names = list(expected)
    with torch.no_grad(), Tapped(model, names) as tapped:
        out = tapped(x)
    assert isinstance(out, Outputs)
    assert list(out.feats) == names
    torch.testing.assert_close(out.logits, logits)
    for name in names:
        torch.testing.assert_close(out.feats[name], expected[name], msg=name)
    # BatchNorm outputs are captured before the in-place ReLU that follows them overwrites them
    assert (out.feats["features.1"] < 0).any()


def test_input_capture_equals_previous_output() -> None:
    model = small_cnn().eval()
    specs = ["features.1", "features.2:input", "features.2", "features.3:input", "classifier:input", "dropout"]
    with torch.no_grad(), Tapped(model, specs) as tapped:
        f = tapped(torch.randn(2, 1, 8, 8)).feats
    assert list(f) == specs  # keys are the spec strings exactly
    torch.testing.assert_close(f["features.2:input"], f["features.1"])  # pre-ReLU, despite inplace=True
    torch.testing.assert_close(f["features.3:input"], f["features.2"])
    torch.testing.assert_close(f["classifier:input"], f["dropout"])


def test_nested_custom_module_matches_manual_forward() -> None:
    model = Nested()
    x = torch.randn(2, 1, 6, 6)
    specs = ["stem", "blocks.0.conv1", "blocks.0.act", "blocks.1", "blocks.1.conv2:input", "head.1:input"]
    with torch.no_grad():
        s = model.stem(x)
        c1 = model.blocks[0].conv1(s)
        a1 = model.blocks[0].act(c1)
        b0 = s + model.blocks[0].conv2(a1)
        a2 = model.blocks[1].act(model.blocks[1].conv1(b0))
        b1 = b0 + model.blocks[1].conv2(a2)
        with Tapped(model, specs) as tapped:
            f = tapped(x).feats
    for spec, want in zip(specs, [s, c1, a1, b1, a2, b1.flatten(1)], strict=True):
        torch.testing.assert_close(f[spec], want, msg=spec)


def test_hooks_registered_once_and_removed_by_close() -> None:
    model = Nested()
    before = all_hooks(model)
    tapped = Tapped(model, ["stem", "blocks.0.act:input", "head"])
    assert all_hooks(model) == before + 3
    for _ in range(3):
        tapped(torch.randn(1, 1, 6, 6))
    assert all_hooks(model) == before + 3  # not one more per call
    tapped.close()
    tapped.close()  # idempotent
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(RuntimeError, match="closed"):
        tapped(torch.randn(1, 1, 6, 6))
    with Tapped(model, ["stem"]) as t2:
        assert len(model.stem._forward_hooks) == 1
        assert t2(torch.randn(1, 1, 6, 6)).feats["stem"].shape == (1, 3, 6, 6)
    assert not model.stem._forward_hooks


def test_hooks_record_only_inside_tapped_forward_and_state_resets() -> None:
    model = SharedAct()
    tapped = Tapped(model, ["fc1"])
    model(torch.randn(2, 4))  # direct call: nothing recorded, nothing kept alive
    assert tapped._store == {}
    for _ in range(2):  # a second forward does not see the first one's call
        assert tapped(torch.randn(2, 4)).feats["fc1"].shape == (2, 6)


def test_unknown_name_lists_close_matches_and_model_class() -> None:
    model = small_cnn()
    with pytest.raises(LayerError) as e:
        Tapped(model, ["featurs.3"])
    msg = str(e.value)
    assert "'featurs.3'" in msg and "CNN" in msg
    close = msg.split("closest: ")[1].split(". ")[0].split(", ")
    assert len(close) == 5 and "features.3" in close
    with pytest.raises(LayerError, match="whole model"):
        Tapped(model, [""])
    with pytest.raises(LayerError, match="'input' or 'output'"):
        Tapped(model, ["features.3:inptu"])
    with pytest.raises(LayerError, match="repeat"):
        Tapped(model, ["features.3"], repeat="middle")  # type: ignore[arg-type]
    assert isinstance(e.value, ValueError)


def test_shared_module_repeat_policy() -> None:
    model = SharedAct()
    x = torch.randn(3, 4)
    with torch.no_grad():
        first = torch.relu(model.fc1(x))
        last = torch.relu(model.fc2(first))
    with pytest.raises(LayerError) as e, Tapped(model, ["act"]) as t:
        t(x)
    msg = str(e.value)
    assert "'act'" in msg and "2 times" in msg and "repeat='first'|'last'|'all'" in msg
    for repeat, want in [("first", first), ("last", last)]:
        with Tapped(model, ["act"], repeat=repeat) as t:
            torch.testing.assert_close(t(x).feats["act"], want)
    with Tapped(model, ["act", "act:input"], repeat="all") as t:
        f = t(x).feats
    assert isinstance(f["act"], tuple) and len(f["act"]) == 2
    torch.testing.assert_close(f["act"][0], first)
    torch.testing.assert_close(f["act"][1], last)
    torch.testing.assert_close(f["act:input"][1], model.fc2(first).detach())
    # modules that ran once are unaffected by the policy
    with Tapped(model, ["fc1"]) as t:
        assert t(x).feats["fc1"].shape == (3, 6)


def test_uncalled_layer_raises() -> None:
    with Tapped(Nested(), ["unused"]) as t, pytest.raises(LayerError, match="not called"):
        t(torch.randn(1, 1, 6, 6))


def test_gradient_flows_through_captured_feature_and_teacher_gets_plain_tensors() -> None:
    student = build_model("mlp", (1, 4, 4), 3, {"hidden": [8]})  # flatten, Linear, ReLU(inplace) | Linear
    tapped = Tapped(student, ["features.1", "features.2"])
    out = tapped(torch.randn(5, 1, 4, 4))
    assert out.feats["features.1"].requires_grad
    out.feats["features.1"].pow(2).sum().backward()
    grad = student.features[1].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert student.classifier.weight.grad is None  # the loss only saw the hidden layer
    with torch.no_grad():
        f = Tapped(build_model("mlp", (1, 4, 4), 3, {"hidden": [8]}), ["features.1"])(torch.randn(2, 16)).feats
    assert not f["features.1"].requires_grad and f["features.1"].grad_fn is None


def test_clone_false_detects_in_place_overwrite() -> None:
    model = small_cnn().eval()
    with torch.no_grad():
        with Tapped(model, ["features.1"], clone=False) as t, pytest.raises(LayerError, match="in place"):
            t(torch.randn(1, 1, 8, 8))
        with Tapped(model, ["features.0"], clone=False) as t:  # conv output is not modified later: fine
            assert t(torch.randn(1, 1, 8, 8)).feats["features.0"].shape == (1, 4, 8, 8)


def test_state_dict_keys_gain_model_prefix_and_deepcopy_is_independent() -> None:
    model = small_cnn()
    tapped = Tapped(model, ["features.3"])
    assert list(tapped.state_dict()) == [f"model.{k}" for k in model.state_dict()]
    clone = copy.deepcopy(tapped)
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        clone.model.features[3].weight.zero_()
        assert tapped(x).feats["features.3"].abs().sum() > 0
        assert clone(x).feats["features.3"].abs().sum() == 0


def test_layer_table_on_cnn() -> None:
    model = small_cnn().train()
    rows = layer_table(model, (1, 8, 8))
    by_name = {r.name: r for r in rows}
    assert list(by_name) == [n for n, _ in model.named_modules()]
    assert by_name[""].type_name == "CNN" and by_name[""].output_shape == (2, 5)
    assert by_name["features.0"].output_shape == (2, 4, 8, 8)
    assert by_name["features.6"].type_name == "MaxPool2d" and by_name["features.6"].output_shape == (2, 4, 4, 4)
    assert by_name["features.8"].output_shape == (2, 6, 4, 4)
    assert by_name["features.11"].output_shape == (2, 6)
    assert by_name["features.0"].own_params == 4 * 9 and by_name["features.1"].own_params == 8
    assert by_name["features"].own_params == 0
    assert sum(r.own_params for r in rows) == count_params(model) == by_name[""].total_params
    assert by_name["features"].total_params == count_params(model.features)
    assert all(r.calls == 1 for r in rows)
    assert model.training and all(m.training for m in model.modules())  # training mode restored
    assert all(not m._forward_hooks for m in model.modules())  # temporary hooks removed
    assert layer_table(model, (1, 8, 8), batch_size=1)[0].output_shape == (1, 5)


def test_layer_table_unused_and_shared_modules() -> None:
    by_name = {r.name: r for r in layer_table(Nested(), (1, 6, 6))}
    assert by_name["unused"].calls == 0 and by_name["unused"].output_shape == NO_SHAPE
    shared = {r.name: r for r in layer_table(SharedAct(), (4,))}
    assert shared["act"].calls == 2 and shared["act"].output_shape == "(2, 6) | (2, 5)"
    with pytest.raises(LayerError, match="probe forward"):
        layer_table(SharedAct(), (7,))


def test_probe_shapes() -> None:
    model = small_cnn().train()
    shapes = probe_shapes(model, ["features.3", "features.7:input", "classifier:input"], (1, 8, 8))
    assert shapes == {"features.3": (4, 8, 8), "features.7:input": (4, 4, 4), "classifier:input": (6,)}
    assert model.training and all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert probe_shapes(SharedAct(), ["act"], (4,), repeat="all") == {"act": ((6,), (5,))}


@pytest.fixture
def restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))


def test_cli_layers_builtin_cnn(capsys: pytest.CaptureFixture[str], restore_sys_path: None) -> None:
    argv = ["layers", "cnn", "--input-shape", "1,1,8,8", "--num-classes", "5", "--kwargs", '{"channels": [4, 6]}']
    assert main(argv) == 0
    out = capsys.readouterr().out
    for text in ["(root)", "features.0", "Conv2d", "(1, 4, 8, 8)", "features.8", "classifier", "Linear", "(1, 5)"]:
        assert text in out
    model = build_model("cnn", (1, 8, 8), 5, {"channels": [4, 6]})
    assert f"total: {count_params(model):,} parameters" in out


def test_cli_layers_user_factory_with_yaml_kwargs(capsys: pytest.CaptureFixture[str], restore_sys_path: None) -> None:
    spec = "tests.fixtures.user_models:TinyNet"
    assert main(["layers", spec, "--input-shape", "1,1,8,8", "--kwargs", "width: 5"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "body.1" in lines and "Linear" in lines["body.1"] and "(1, 5)" in lines["body.1"]
    assert "head" in lines and "(1, 10)" in lines["head"]
    assert "total: 385 parameters" in out  # 64*5+5 + 5*10+10


@pytest.mark.parametrize(
    "argv, message",
    [
        (["layers", "cnn", "--input-shape", "1,x,28,28"], "--input-shape '1,x,28,28'"),
        (["layers", "cnn", "--input-shape", "28"], "starting with the batch size"),
        (["layers", "cnn", "--input-shape", "0,1,28,28"], "positive integers"),
        (["layers", "resnet", "--input-shape", "1,1,28,28"], "neither a built-in"),
        (["layers", "mlp", "--input-shape", "1,1,28,28", "--kwargs", "[1, 2]"], "--kwargs must be a mapping"),
        (["layers", "mlp", "--input-shape", "1,1,28,28", "--kwargs", '{"hidden": [8], "bad": 1}'], "bad keyword"),
    ],
)
def test_cli_layers_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], restore_sys_path: None
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdistill: error:") and message in err


def test_freeze_turns_off_the_named_modules_gradients_only() -> None:
    model = Nested()
    n = freeze(model, ["blocks.0", "head.1"])
    assert n == count_params(model.blocks[0]) + count_params(model.head[1])
    assert not any(p.requires_grad for p in model.blocks[0].parameters())
    assert all(p.requires_grad for p in model.blocks[1].parameters()) and model.stem.weight.requires_grad
    model(torch.randn(2, 1, 6, 6)).sum().backward()
    assert model.blocks[0].conv1.weight.grad is None and model.blocks[1].conv1.weight.grad is not None
    fresh = Nested()
    with pytest.raises(LayerError, match=r"unknown layer 'blocks.9'.*closest: blocks"):
        freeze(fresh, ["stem", "blocks.9"])
    assert all(p.requires_grad for p in fresh.parameters())  # nothing changed before the error
