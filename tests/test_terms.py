"""Wiring of extra distillation terms: adapters, term building, the Distiller's sum, config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from kdistill.adapters import AdapterError, make_adapter
from kdistill.caches import LogitCache
from kdistill.config import ConfigError, load_config
from kdistill.data import BatchLoader, load_data
from kdistill.distiller import Distiller
from kdistill.experiment.run import run_experiment
from kdistill.losses import attention_transfer_loss, hint_loss
from kdistill.models import build_model
from kdistill.terms import TERMS, Term, TermContext, TermError, build_term, build_terms, register
from tests.helpers import synthetic_overrides

CNN_T = {"channels": [8, 16], "convs_per_stage": [1, 1]}
CNN_S = {"channels": [4, 8], "convs_per_stage": [1, 1]}


def _data():
    return load_data("synthetic", val_size=60, synthetic={"n_train": 300, "n_test": 100, "num_classes": 4, "side": 8})


def _cnn(kwargs: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn", (1, 8, 8), 4, kwargs)


def _ctx(s_shape, t_shape, s="s", t="t", pool="none") -> TermContext:
    return TermContext(s, t, tuple(s_shape), tuple(t_shape), 4, 100, 4.0, pool)


# ----------------------------------------------------------------------------- adapters


@pytest.mark.parametrize(
    "s_shape, t_shape, pool",
    [
        ((4, 8, 8), (16, 8, 8), "none"),  # channels differ: 1x1 conv
        ((4, 8, 8), (4, 8, 8), "none"),  # equal: identity
        ((8, 8, 8), (16, 4, 4), "avg"),  # spatial differ: pool the larger down, then conv
        ((12,), (20,), "none"),  # vectors: linear
        ((4, 8, 8), (20,), "avg"),  # map vs vector: pool, then linear
    ],
)
def test_adapter_makes_shapes_match(s_shape, t_shape, pool) -> None:
    a_s, a_t = make_adapter("s.layer", s_shape, "t.layer", t_shape, pool)
    out_s, out_t = a_s(torch.randn(3, *s_shape)), a_t(torch.randn(3, *t_shape))
    assert out_s.shape == out_t.shape


def test_equal_shapes_need_no_parameters() -> None:
    a_s, a_t = make_adapter("s", (4, 8, 8), "t", (4, 8, 8))
    assert sum(p.numel() for p in [*a_s.parameters(), *a_t.parameters()]) == 0


def test_map_against_vector_without_pool_names_both_layers_and_the_fix() -> None:
    with pytest.raises(AdapterError) as e:
        make_adapter("features.6", (32, 7, 7), "features", (128,))
    msg = str(e.value)
    assert "features.6" in msg and "(32, 7, 7)" in msg and "'features' (128,)" in msg and "pool: avg" in msg


def test_spatial_mismatch_without_pool_is_an_error() -> None:
    with pytest.raises(AdapterError, match="spatial sizes differ.*pool: avg"):
        make_adapter("a", (4, 8, 8), "b", (4, 4, 4))


# ----------------------------------------------------------------------------- terms


def test_fitnet_term_is_hint_loss_after_its_adapter() -> None:
    term = build_term("fitnet", _ctx((4, 8, 8), (16, 8, 8)))
    s, t = torch.randn(5, 4, 8, 8), torch.randn(5, 16, 8, 8)
    torch.testing.assert_close(term(s, t, {}), hint_loss(term.adapt_s(s), t))
    assert sum(p.numel() for p in term.parameters()) == 4 * 16 + 2 * 16  # 1x1 conv (no bias) + BatchNorm


def test_at_term_calls_the_pure_function_with_its_option() -> None:
    term = build_term("at", _ctx((4, 8, 8), (16, 8, 8)), {"p": 4.0})
    s, t = torch.randn(5, 4, 8, 8), torch.randn(5, 16, 8, 8)
    torch.testing.assert_close(term(s, t, {}), attention_transfer_loss(s, t, 4.0))


def test_at_term_refuses_vectors() -> None:
    with pytest.raises(AdapterError, match="feature maps"):
        build_term("at", _ctx((12,), (12,)))


def test_warmup_ramps_the_weight() -> None:
    term = build_term("dkd", _ctx((4,), (4,), "logits", "logits"), weight=2.0, warmup_epochs=4)
    assert [term.weight_at(e) for e in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]


class _Exploding(Term):
    def loss(self, s, t, batch):  # noqa: ANN001, ANN201
        raise AssertionError("a term with weight 0 must not be computed")


def test_weight_zero_term_is_not_computed() -> None:
    data = _data()
    term = _Exploding(_ctx((4,), (4,), "logits", "logits"))
    term.weight = 0.0
    d = Distiller(_cnn(CNN_S), _cnn(CNN_T, 1), terms=[term])
    batch = next(iter(BatchLoader(data.train, 16)))
    out = d(batch)
    assert "_Exploding" not in out.parts and torch.isfinite(out.loss)


def test_distiller_sums_terms_and_trains_adapters_not_teacher() -> None:
    data = _data()
    student, teacher = _cnn(CNN_S), _cnn(CNN_T, 1)
    ctx = _ctx((4, 8, 8), (8, 8, 8), "features.2", "features.2")
    fitnet = build_term("fitnet", ctx, weight=3.0)
    d = Distiller(student, teacher, T=2.0, alpha=0.5, terms=[fitnet])
    batch = next(iter(BatchLoader(data.train, 16)))
    d.train()
    out = d(batch)
    # the term's part is its weighted value, and the loss is soft + hard + the parts of the terms
    torch.testing.assert_close(out.loss.detach(), out.parts["soft"] + out.parts["hard"] + out.parts["fitnet"])
    s_feat = student.features[:3](batch["x"])
    with torch.no_grad():
        t_feat = teacher.features[:3](batch["x"])
    torch.testing.assert_close(out.parts["fitnet"], 3.0 * hint_loss(fitnet.adapt_s(s_feat), t_feat).detach())
    out.loss.backward()
    assert fitnet.adapt_s[1].weight.grad is not None and student.features[0].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    assert d.extra_params() == 4 * 8 + 2 * 8


def test_term_needing_index_fails_on_first_batch_without_it() -> None:
    data = _data()
    crd = build_term("crd", _ctx((16,), (16,), "features", "features"), {"negatives": 8})
    d = Distiller(_cnn(CNN_S), _cnn(CNN_T, 1), terms=[crd])
    batch = next(iter(BatchLoader(data.train, 16)))
    del batch["index"]
    with pytest.raises(ValueError, match=r"crd term .* needs batch\['index'\]"):
        d(batch)


# ----------------------------------------------------------------------------- config -> terms


def _cfg(tmp_path: Path, terms: str, *extra: str):
    return load_config(
        None,
        synthetic_overrides(tmp_path)
        + [
            "teacher.model.arch=cnn",
            f"teacher.model.kwargs={CNN_T}",
            "student.model.arch=cnn",
            f"student.model.kwargs={CNN_S}",
            f"terms={terms}",
            *extra,
        ],
    )


def _terms(cfg, student: nn.Module, teacher: nn.Module, data) -> list[Term]:  # noqa: ANN001
    return build_terms(cfg.terms, student, teacher, data.input_shape, data.num_classes, data.transfer_set, cfg.kd.T)


def test_unknown_layer_is_reported_with_close_matches(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "[{method: fitnet, layers: [[features.22, features.2]]}]")
    data = _data()
    with pytest.raises(TermError) as e:
        _terms(cfg, _cnn(CNN_S), _cnn(CNN_T), data)
    msg = str(e.value)
    assert "terms[0] (fitnet)" in msg and "features.22" in msg and "features.2" in msg


def test_layer_list_builds_one_term_per_pair(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "[{method: at, layers: [[features.2, features.2], [features.6, features.6]]}]")
    terms = _terms(cfg, _cnn(CNN_S), _cnn(CNN_T), _data())
    assert [(t.student_layer, t.teacher_layer) for t in terms] == [
        ("features.2", "features.2"),
        ("features.6", "features.6"),
    ]


def test_label_reading_term_on_unlabelled_transfer_set_fails_before_training(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "[{method: dkd}]", "data.labelled=40", "kd.transfer=all")
    data = load_data(
        "synthetic",
        val_size=60,
        labelled=40,
        transfer="all",
        synthetic={"n_train": 400, "n_test": 200, "num_classes": 4, "side": 8},
    )
    with pytest.raises(TermError, match=r"terms\[0\] \(dkd\) reads every sample's label.*unlabelled"):
        _terms(cfg, _cnn(CNN_S), _cnn(CNN_T), data)


def test_shape_error_reaches_the_user_before_training(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "[{method: fitnet, layers: [[features.2, features]]}]")
    with pytest.raises(ConfigError, match=r"terms\[0\] \(fitnet\).*pool: avg"):
        run_experiment(cfg)
    assert not list((tmp_path / "syn").glob("*/last.pt"))  # not even the teacher was trained
    assert not (tmp_path / "_teachers").exists()


def test_run_with_terms_saves_adapters_and_counts_extra_params(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        "[{method: fitnet, layers: [[features.2, features.2]]}, {method: dkd, warmup_epochs: 2}]",
        "roles=[kd]",
        "seeds=[0]",
    )
    summary = run_experiment(cfg)
    kd = [r for r in summary["rows"] if r["role"] == "kd"][0]
    assert kd["extra_params"] == 4 * 8 + 2 * 8
    ckpt = torch.load(tmp_path / "syn" / "kd-seed0" / "last.pt", weights_only=True)
    assert any(k.startswith("terms.0.adapt_s") for k in ckpt["objective_state"])
    assert not any(k.startswith(("model.", "teacher.")) for k in ckpt["objective_state"])

    rows = [json.loads(line) for line in (tmp_path / "syn" / "kd-seed0" / "metrics.jsonl").read_text().splitlines()]
    assert {"train_fitnet", "train_dkd"} <= set(rows[0])


def test_a_new_method_needs_only_a_function_and_a_term(tmp_path: Path) -> None:
    def l1_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # 1. the pure function
        return (s - t).abs().mean()

    @register("l1_logits")  # 2. the term
    class L1(Term):
        default_layers = ("logits", "logits")

        def loss(self, s, t, batch):  # noqa: ANN001, ANN201
            return l1_loss(s, t)

    try:
        cfg = _cfg(tmp_path, "[{method: l1_logits, weight: 0.5}]", "roles=[kd]", "seeds=[0]")  # 3. the config
        summary = run_experiment(cfg)
        assert [r["role"] for r in summary["rows"]] == ["teacher", "kd"]
    finally:
        TERMS.pop("l1_logits")


def test_cached_teacher_layers_equal_the_online_teacher_after_shuffling() -> None:
    data = _data()
    teacher = _cnn(CNN_T, 1)
    cache = LogitCache.build(teacher, BatchLoader(data.train, 50), ["features.2"])
    ctx = _ctx((4, 8, 8), (8, 8, 8), "features.2", "features.2")
    student = _cnn(CNN_S)
    term = build_term("fitnet", ctx)
    online = Distiller(student, teacher, terms=[term])
    cached = Distiller(student, teacher, terms=[term], source=cache)
    online.eval()  # same student forward (BatchNorm in eval) for both
    cached.eval()
    batch = next(iter(BatchLoader(data.train, 32, shuffle=True, seed=3)))
    a, b = online(batch), cached(batch)
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.parts["fitnet"], b.parts["fitnet"])
    with pytest.raises(ValueError, match="holds no outputs of teacher layers"):
        Distiller(
            student,
            teacher,
            terms=[build_term("at", _ctx((4, 8, 8), (16, 4, 4), "features.2", "features.6"))],
            source=cache,
        )


def test_rkd_angle_rows_limits_the_triplets() -> None:
    from kdistill.losses import rkd_angle_loss, rkd_distance_loss

    s, t = torch.randn(40, 6), torch.randn(40, 9)
    full = build_term("rkd", _ctx((6,), (9,)), {"angle_rows": None})
    sub = build_term("rkd", _ctx((6,), (9,)), {"angle_rows": 5})
    torch.testing.assert_close(full(s, t, {}), rkd_distance_loss(s, t) + 2.0 * rkd_angle_loss(s, t))
    torch.testing.assert_close(sub(s, t, {}), rkd_distance_loss(s, t) + 2.0 * rkd_angle_loss(s[:5], t[:5]))
    with pytest.raises(ValueError, match="angle needs 3 samples"):
        build_term("rkd", _ctx((6,), (9,)), {"angle_rows": 2})


# ----------------------------------------------------------------------------- recent logit methods


def test_recent_logit_terms_call_their_pure_functions() -> None:
    from kdistill.losses import logit_standardized_kd, wttm_loss

    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen)
    ctx = _ctx((4,), (4,), "logits", "logits")
    torch.testing.assert_close(build_term("logit_std", ctx)(s, t, {}), logit_standardized_kd(s, t, 4.0))  # kd.T
    torch.testing.assert_close(build_term("logit_std", ctx, {"T": 2.0})(s, t, {}), logit_standardized_kd(s, t, 2.0))
    torch.testing.assert_close(build_term("wttm", ctx, {"gamma": 0.5})(s, t, {}), wttm_loss(s, t, 0.5))
    with pytest.raises(TermError, match="gamma"):
        build_term("wttm", ctx, {"gamma": 2.0})
    with pytest.raises(TermError, match="t_min < T < t_max"):
        build_term("ctkd", ctx, {"T": 30.0})


def test_ctkd_temperature_follows_its_curriculum_and_ascends_the_loss() -> None:
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(16, 4, generator=gen, requires_grad=True)
    t = torch.randn(16, 4, generator=gen) * 3
    term = build_term("ctkd", _ctx((4,), (4,), "logits", "logits"), {"T": 4.0, "ramp_epochs": 4})
    torch.testing.assert_close(term.temperature(), torch.tensor(4.0))
    scales = []
    for e in range(6):
        term.set_epoch(e)
        scales.append(round(term.scale, 6))
    assert scales == [
        0.0,
        round((1 - math.cos(math.pi / 4)) / 2, 6),
        0.5,
        round((1 + math.cos(math.pi / 4)) / 2, 6),
        1.0,
        1.0,
    ]
    # Epoch 0: the reversal's scale is 0, the temperature gets no gradient (a fixed, easy start).
    term.set_epoch(0)
    term(s, t, {}).backward()
    assert term.theta.grad.item() == 0.0
    # Later: a descent step on the loss moves the temperature *up* the loss (gradient reversed).
    term.set_epoch(10)
    term.theta.grad = None
    before = term(s, t, {}).item()
    term(s, t, {}).backward()
    with torch.no_grad():
        term.theta -= 0.5 * term.theta.grad
    assert term(s, t, {}).item() > before
    assert set(term.logged()) == {"ctkd_T"}
    assert "theta" in dict(term.named_parameters())  # trained with the student, saved in checkpoints


def test_distiller_passes_epochs_to_terms_and_logs_the_learned_temperature() -> None:
    data = _data()
    ctkd = build_term("ctkd", _ctx((4,), (4,), "logits", "logits"), {"T": 2.0, "ramp_epochs": 2})
    d = Distiller(_cnn(CNN_S), _cnn(CNN_T, 1), T=2.0, alpha=0.0, terms=[ctkd])
    d.set_epoch(1)
    assert ctkd.scale == pytest.approx(0.5)
    out = d(next(iter(BatchLoader(data.train, 16))))
    assert out.parts["ctkd_T"].item() == pytest.approx(2.0)
    assert d.extra_params() == 1
