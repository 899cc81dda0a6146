"""Mutual learning, born-again generations, several teachers, teacher-assistant chains (kdistill.modes).

What must hold: a DML peer's loss never sends gradient into another peer and every peer runs once per
step; each born-again generation / chain stage learns from the previous one exactly as saved, frozen;
the multi-teacher target is the weighted mean of the teachers' soft targets; bad set-ups fail before
anything is trained, with the config key in the message.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from kdistill import modes
from kdistill.config import ConfigError, TrainConfig, load_config
from kdistill.data import Split
from kdistill.distiller import FrozenTeacher
from kdistill.export import choose_student
from kdistill.io import CheckpointError, safe_load
from kdistill.losses import kd_loss, soft_target_kl
from kdistill.models import build_model
from kdistill.multi import Cohort, MultiTeacher, mixture_logits
from kdistill.pipeline import run_experiment
from kdistill.trainer import fit, score
from test_pipeline import synthetic_overrides


def _mlp(hidden: int, seed: int, n_in: int = 6, n_out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def _overrides(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [*synthetic_overrides(tmp_path, name), "seeds=[0]", *extra]


class Recorder:
    """Wraps ``kdistill.modes.fit``: notes, for every model trained, what its objective learns from."""

    def __init__(self) -> None:
        self.calls: dict[str, dict] = {}

    def __call__(self, objective: nn.Module, *args, **kwargs):
        teacher = getattr(objective, "teacher", None)
        note: dict = {"objective": type(objective).__name__}
        if isinstance(teacher, FrozenTeacher):
            note["teacher_state"] = {k: v.detach().clone() for k, v in teacher.model.state_dict().items()}
            note["teacher_grad"] = [p.requires_grad for p in teacher.parameters()]
            note["teacher_training"] = teacher.model.training
        self.calls[kwargs["out_dir"].name] = note
        return fit(objective, *args, **kwargs)


def _saved(path: Path) -> dict[str, torch.Tensor]:
    return safe_load(path)["state_dict"]


# ----------------------------------------------------------------------------- deep mutual learning


def test_peer_loss_sends_gradient_into_that_peer_only() -> None:
    peers = [_mlp(8, 0), _mlp(5, 1), _mlp(8, 2)]  # different shapes and initialisations
    cohort = Cohort(peers, T=2.0, alpha=0.7)
    g = torch.Generator().manual_seed(0)
    batch = {"x": torch.randn(16, 6, generator=g), "y": torch.randint(0, 3, (16,), generator=g)}
    losses, logits, _ = cohort.peer_losses(batch)
    alone = []
    for i, loss in enumerate(losses):
        cohort.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        for j, peer in enumerate(peers):
            grads = [p.grad for p in peer.parameters()]
            if j == i:
                assert all(gr is not None for gr in grads) and any(float(gr.abs().sum()) > 0 for gr in grads)
            else:
                assert all(gr is None for gr in grads), f"peer {i}'s loss reached peer {j}"
        alone.append([p.grad.clone() for p in peers[i].parameters()])
        # The loss is kd_loss against each other peer's (detached) logits, averaged over the other peers.
        others = [kd_loss(logits[i], logits[j].detach(), batch["y"], 2.0, 0.7) for j in range(3) if j != i]
        assert float(loss.detach()) == pytest.approx(float(sum(others).detach() / 2), rel=1e-6)
    # The objective's loss (their sum) gives each peer exactly the gradient of its own loss.
    cohort.zero_grad(set_to_none=True)
    cohort(batch).loss.backward()
    for peer, own in zip(peers, alone, strict=True):
        for p, gr in zip(peer.parameters(), own, strict=True):
            torch.testing.assert_close(p.grad, gr)


def test_every_peer_runs_once_per_training_step_in_fit() -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(100, 6, generator=g), torch.randint(0, 3, (100,), generator=g)
    train, val = Split(x[:80], y[:80], torch.arange(80)), Split(x[80:], y[80:], torch.arange(80, 100))
    peers = [_mlp(8, 0), _mlp(4, 1), _mlp(8, 2)]
    calls = {"train": [0, 0, 0], "eval": [0, 0, 0]}

    def counter(i: int):
        def hook(module: nn.Module, args, output) -> None:
            calls["train" if module.training else "eval"][i] += 1

        return hook

    for i, p in enumerate(peers):
        p.register_forward_hook(counter(i))
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, eval_batch_size=8)
    res = fit(Cohort(peers, T=2.0, alpha=0.5), train, val, cfg, seed=0, verbose=False, progress=False)
    assert res.steps == 3 * 5
    assert calls["train"] == [res.steps] * 3  # one forward per peer per optimizer step
    assert calls["eval"] == [3 * 3] * 3  # validation: 3 epochs x 3 batches of 8 (20 rows), once per peer


def test_cohort_of_one_peer_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"dml\.peers: .*at least 2 peers, got 1"):
        load_config(None, ["roles=[dml]", "dml.peers=[{arch: mlp}]"])
    with pytest.raises(ValueError, match="at least 2 peers"):
        Cohort([_mlp(4, 0)])


def test_dml_run_reports_each_peer_and_their_ensemble(tmp_path: Path) -> None:
    peers = "dml.peers=[{arch: mlp, kwargs: {hidden: [8]}}, {arch: mlp, kwargs: {hidden: [12]}}]"
    s = run_experiment(load_config(None, _overrides(tmp_path, "dml", "roles=[dml]", peers)))
    rows = [r for r in s["rows"] if r["role"] == "dml"]
    assert [r["variant"] for r in rows] == ["peer0", "peer1", "ensemble"]
    assert [r.get("peer") for r in rows[:2]] == [0, 1]
    assert rows[0]["student"] and not rows[1]["student"]  # peer 0 has the student's spec (hidden [8])
    assert rows[0]["params"] < rows[1]["params"]
    assert list(s["aggregate"]) == ["teacher", "dml/peer0", "dml/peer1", "dml/ensemble"]
    run = tmp_path / "dml"
    data_y = safe_load(run / "teacher" / "predictions.pt")["test_labels"]
    tests = []
    for r, hidden in zip(rows[:2], (8, 12), strict=True):
        saved = safe_load(run / r["dir"] / "weights.pt")
        model = build_model("mlp", saved["input_shape"], saved["num_classes"], {"hidden": [hidden]})
        model.load_state_dict(saved["state_dict"])
        logits = safe_load(run / r["dir"] / "predictions.pt")["test_logits"]
        assert score(logits, data_y).acc == r["test_acc"]
        tests.append(logits)
    assert score(mixture_logits(tests), data_y).acc == rows[2]["test_acc"]
    assert choose_student(run)["dir"] in ("dml-seed0/peer0", "dml-seed0/peer1")  # export finds the peers
    assert "dml/peer1" in (run / "summary.md").read_text()


# ----------------------------------------------------------------------------- born-again networks


def test_born_again_generation_learns_from_the_saved_previous_one(tmp_path: Path, monkeypatch) -> None:
    rec = Recorder()
    monkeypatch.setattr(modes, "fit", rec)
    ov = _overrides(tmp_path, "ban", "roles=[born_again]", "born_again.generations=2")
    s = run_experiment(load_config(None, ov))
    run = tmp_path / "ban"
    assert rec.calls["born_again-seed0-gen0"] == {"objective": "Supervised"}  # Furlanello et al.: labels only
    for k in (1, 2):
        note = rec.calls[f"born_again-seed0-gen{k}"]
        assert note["objective"] == "Distiller"
        previous = _saved(run / f"born_again-seed0-gen{k - 1}" / "weights.pt")
        assert note["teacher_state"].keys() == previous.keys()
        for key, value in previous.items():
            assert torch.equal(note["teacher_state"][key], value), key
        assert not any(note["teacher_grad"]) and note["teacher_training"] is False
    rows = [r for r in s["rows"] if r["role"] == "born_again"]
    assert [r["variant"] for r in rows] == ["gen0", "gen1", "gen2", "ensemble"]
    assert [r["headline"] for r in rows] == [False, False, True, False]
    labels = safe_load(run / "teacher" / "predictions.pt")["test_labels"]
    gens = [safe_load(run / r["dir"] / "predictions.pt")["test_logits"] for r in rows[:3]]
    mean = torch.stack([g.softmax(1) for g in gens]).mean(0)
    assert rows[3]["test_acc"] == pytest.approx(float((mean.argmax(1) == labels).float().mean()))
    assert rows[3]["test_nll"] == pytest.approx(float(-mean[torch.arange(len(labels)), labels].log().mean()), rel=1e-5)


def test_born_again_can_start_from_the_teacher(tmp_path: Path, monkeypatch) -> None:
    rec = Recorder()
    monkeypatch.setattr(modes, "fit", rec)
    ov = _overrides(tmp_path, "ban", "roles=[born_again]", "born_again={generations: 1, start: teacher}")
    run_experiment(load_config(None, ov))
    note, teacher = rec.calls["born_again-seed0-gen0"], _saved(tmp_path / "ban" / "teacher" / "weights.pt")
    assert note["objective"] == "Distiller" and not any(note["teacher_grad"])
    assert all(torch.equal(note["teacher_state"][k], v) for k, v in teacher.items())
    assert rec.calls["born_again-seed0-gen1"]["objective"] == "Distiller"


def test_born_again_resume_keeps_finished_generations(tmp_path: Path, monkeypatch) -> None:
    ov = _overrides(tmp_path, "ban", "roles=[born_again]", "born_again.generations=2")
    first = run_experiment(load_config(None, ov))
    last = tmp_path / "ban" / "born_again-seed0-gen2"
    (last / "row.json").unlink()  # as if interrupted before generation 2 finished
    rec = Recorder()
    monkeypatch.setattr(modes, "fit", rec)
    again = run_experiment(load_config(None, ov), resume=True)
    assert list(rec.calls) == ["born_again-seed0-gen2"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]
    assert strip(again["rows"][1:]) == strip(first["rows"][1:])


# ----------------------------------------------------------------------------- several teachers


def test_multi_teacher_targets_are_the_weighted_mean_of_soft_targets() -> None:
    z1, z2 = [2.0, 0.0, -1.0], [0.0, 1.0, 3.0]
    T, w = 2.0, [1.0, 3.0]  # normalised: 0.25, 0.75

    class Fixed(nn.Module):
        def __init__(self, z: list[float]) -> None:
            super().__init__()
            self.z = nn.Parameter(torch.tensor([z], dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.z.expand(x.shape[0], -1)

    def softmax(z: list[float]) -> list[float]:
        e = [math.exp(v / T) for v in z]
        return [v / sum(e) for v in e]

    by_hand = [0.25 * a + 0.75 * b for a, b in zip(softmax(z1), softmax(z2), strict=True)]
    mixed = MultiTeacher([Fixed(z1), Fixed(z2)], weights=w, T=T)
    out = mixed(torch.zeros(2, 1))  # float64 all the way
    assert torch.allclose((out / T).softmax(1), torch.tensor([by_hand] * 2, dtype=torch.float64), atol=1e-12)
    frozen = FrozenTeacher(mixed)(torch.zeros(2, 1))  # as a Distiller's teacher: float32, no grad
    assert not frozen.requires_grad and torch.allclose(frozen.double(), out, atol=1e-5)
    # The KD loss at T therefore sees exactly the averaged soft targets.
    s = torch.tensor([[0.5, -0.5, 1.0]], dtype=torch.float64)
    q = softmax(s[0].tolist())
    kl = sum(m * math.log(m / qc) for m, qc in zip(by_hand, q, strict=True))
    assert float(soft_target_kl(s, out[:1], T)) == pytest.approx(kl, rel=1e-10)
    y = torch.tensor([2])
    ce = -math.log(softmax([2 * v for v in s[0].tolist()])[2])  # softmax(s) at T=1
    assert float(kd_loss(s, out[:1], y, T, 0.4)) == pytest.approx(0.4 * T * T * kl + 0.6 * ce, rel=1e-10)
    assert mixture_logits([torch.tensor([z1])], T=T)[0].tolist() == pytest.approx(  # one model: unchanged softmax
        [T * math.log(p) for p in softmax(z1)]
    )


def test_multi_teacher_run_trains_its_second_teacher_once(tmp_path: Path, monkeypatch) -> None:
    section = ("multi_teacher={teachers: [{model: {arch: mlp, kwargs: {hidden: [16]}}, train: {epochs: 2}}], "
               "weights: [1, 3]}")  # fmt: skip
    rec = Recorder()
    monkeypatch.setattr(modes, "fit", rec)
    s = run_experiment(load_config(None, _overrides(tmp_path, "mt", "roles=[multi_teacher]", section)))
    row = s["rows"][1]
    assert row["role"] == "multi_teacher" and "variant" not in row
    assert [t["source"] for t in row["teachers"]] == ["trained", "trained"]
    assert row["teacher_weights"] == [0.25, 0.75]
    assert (tmp_path / "mt" / "multi_teacher-t0" / "weights.pt").is_file()
    # The student's teacher: both teachers, frozen, as trained.
    note = rec.calls["multi_teacher-seed0"]
    assert not any(note["teacher_grad"]) and note["teacher_training"] is False
    second = _saved(tmp_path / "mt" / "multi_teacher-t0" / "weights.pt")
    assert all(torch.equal(note["teacher_state"][f"teachers.1.{k}"], v) for k, v in second.items())
    again = run_experiment(load_config(None, _overrides(tmp_path, "mt2", "roles=[multi_teacher]", section)))
    assert [t["source"] for t in again["rows"][1]["teachers"]] == ["reused", "reused"]
    assert again["rows"][1]["teacher_mean_test_acc"] == row["teacher_mean_test_acc"]


# ----------------------------------------------------------------------------- teacher-assistant chains


def test_ta_chain_stage_learns_from_the_saved_previous_stage(tmp_path: Path, monkeypatch) -> None:
    rec = Recorder()
    monkeypatch.setattr(modes, "fit", rec)
    ov = _overrides(tmp_path, "ta", "roles=[ta_chain]", "ta_chain={assistants: [{arch: mlp, kwargs: {hidden: [16]}}]}")
    s = run_experiment(load_config(None, ov))
    run = tmp_path / "ta"
    rows = s["rows"][1:]
    assert [(r["variant"], r["stage"], r["headline"]) for r in rows] == [("assistant1", 1, False), ("student", 2, True)]
    for name, previous in [("ta_chain-seed0-assistant1", run / "teacher" / "weights.pt"),
                           ("ta_chain-seed0-student", run / "ta_chain-seed0-assistant1" / "weights.pt")]:  # fmt: skip
        note, saved = rec.calls[name], _saved(previous)
        assert note["objective"] == "Distiller" and not any(note["teacher_grad"])
        assert note["teacher_state"].keys() == saved.keys()
        assert all(torch.equal(note["teacher_state"][k], v) for k, v in saved.items())
    assert rows[0]["params"] > rows[1]["params"]


# ----------------------------------------------------------------------------- bad set-ups fail before training


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


def _no_training(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("something was trained before the bad config was reported")

    monkeypatch.setattr("kdistill.pipeline.fit", refuse)
    monkeypatch.setattr(modes, "fit", refuse)


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
    _no_training(monkeypatch)  # the teacher is not cached yet: a later check would come after training it
    with pytest.raises(ConfigError, match=message):
        run_experiment(load_config(None, _overrides(tmp_path, "bad", *overrides)))


def test_missing_checkpoint_of_a_second_teacher_fails_before_training(tmp_path: Path, monkeypatch) -> None:
    _no_training(monkeypatch)
    section = f"multi_teacher={{teachers: [{{model: {{arch: mlp}}, checkpoint: {tmp_path / 'nope.pt'}}}]}}"
    with pytest.raises(CheckpointError, match=r"multi_teacher.teachers\[0\].checkpoint: .*nope.pt not found"):
        run_experiment(load_config(None, _overrides(tmp_path, "bad", "roles=[multi_teacher]", section)))


def test_sections_are_required_or_checked() -> None:
    with pytest.raises(ConfigError, match="role ta_chain needs a `ta_chain` section"):
        load_config(None, ["roles=[ta_chain]"])
    with pytest.raises(ConfigError, match="multi_teacher needs at least 2 teachers"):
        load_config(None, ["roles=[multi_teacher]", "multi_teacher={teachers: [], include_main: true}"])
    with pytest.raises(ConfigError, match="weights has 3 entries but there are 2 teachers"):
        load_config(None, ["multi_teacher={teachers: [{}], weights: [1, 1, 1]}"])
    with pytest.raises(ConfigError, match=r"dml.peerz: unknown key; did you mean 'dml.peers'"):
        load_config(None, ["dml.peerz=[]"])
