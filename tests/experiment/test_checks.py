"""Bad set-ups fail before anything is trained, with the config key in the message."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kdistill.config import ConfigError, load_config
from kdistill.experiment.run import run_experiment
from kdistill.io import CheckpointError
from tests.experiment.recorder import one_seed, refuse_training


@pytest.fixture
def user_nets(tmp_path: Path, monkeypatch) -> str:
    """A module of user model factories, importable as ``user_nets`` (8x8 synthetic images)."""
    (tmp_path / "user_nets.py").write_text(
        textwrap.dedent("""
        from torch import nn

        def net(num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

        def five_classes():  # ignores the data's number of classes
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_nets"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["roles=[ta_chain]", "ta_chain={assistants: [{arch: 'user_nets:net', kwargs: {num_classes: 3}}]}"],
            r"ta_chain: the models disagree on the number of classes \(teacher.model -> 4, ta_chain.assistants\[0\] "
            r"-> 3, student.model -> 4\).*output the data's 4 classes",
        ),
        (
            ["roles=[ta_chain]", "ta_chain={assistants: [{arch: 'user_nets:five_classes'}]}"],
            r"ta_chain.assistants\[0\] -> 5",
        ),
        (
            ["roles=[ta_chain]", "ta_chain={assistants: [{arch: mlp, kwargs: {num_classes: 3}}]}"],
            r"ta_chain.assistants\[0\]: cannot build the model: .*num_classes",
        ),
        (
            ["roles=[multi_teacher]", "multi_teacher={teachers: [{model: {arch: 'user_nets:five_classes'}}]}"],
            r"multi_teacher: the models disagree on the number of classes \(teacher.model -> 4, "
            r"multi_teacher.teachers\[0\].model -> 5, student.model -> 4\)",
        ),
        (
            ["roles=[dml]", "dml.peers=[{arch: mlp}, {arch: 'user_nets:net', kwargs: {num_classes: 2}}]"],
            r"dml: .*dml.peers\[1\] -> 2",
        ),
    ],
    ids=["chain-num_classes-kwarg", "chain-factory-width", "chain-builtin-kwarg", "multi-teacher", "dml"],
)
def test_models_that_disagree_fail_before_training(
    tmp_path: Path, monkeypatch, user_nets: str, overrides: list[str], message: str
) -> None:
    refuse_training(monkeypatch)  # the teacher is not cached yet: a later check would come after training it
    with pytest.raises(ConfigError, match=message):
        run_experiment(load_config(None, one_seed(tmp_path, "bad", *overrides)))


def test_missing_checkpoint_of_a_second_teacher_fails_before_training(tmp_path: Path, monkeypatch) -> None:
    refuse_training(monkeypatch)
    section = f"multi_teacher={{teachers: [{{model: {{arch: mlp}}, checkpoint: {tmp_path / 'nope.pt'}}}]}}"
    with pytest.raises(CheckpointError, match=r"multi_teacher.teachers\[0\].checkpoint: .*nope.pt not found"):
        run_experiment(load_config(None, one_seed(tmp_path, "bad", "roles=[multi_teacher]", section)))


def test_sections_are_required_or_checked() -> None:
    with pytest.raises(ConfigError, match="role ta_chain needs a `ta_chain` section"):
        load_config(None, ["roles=[ta_chain]"])
    with pytest.raises(ConfigError, match="multi_teacher needs at least 2 teachers"):
        load_config(None, ["roles=[multi_teacher]", "multi_teacher={teachers: [], include_main: true}"])
    with pytest.raises(ConfigError, match="weights has 3 entries but there are 2 teachers"):
        load_config(None, ["multi_teacher={teachers: [{}], weights: [1, 1, 1]}"])
    with pytest.raises(ConfigError, match=r"dml.peerz: unknown key; did you mean 'dml.peers'"):
        load_config(None, ["dml.peerz=[]"])
