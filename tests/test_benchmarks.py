"""benchmarks/methods.py in smoke mode: the table it publishes has the rows, statistics and provenance it claims."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import skip_without_fashion

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"kdistill_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _methods():
    return _load("methods")


def test_reuse_compares_resolved_configs_with_defaults_for_new_keys() -> None:
    same = _methods().same_config
    default = {"kd": {"T": 4.0, "cache": {"mode": "auto"}}}
    # A key the old run did not know yet counts as equal when the new run leaves it at its default.
    assert same({"kd": {"T": 2.0}}, {"kd": {"T": 2.0, "cache": {"mode": "auto"}}}, default)
    assert not same({"kd": {"T": 2.0}}, {"kd": {"T": 2.0, "cache": {"mode": "online"}}}, default)
    assert not same({"kd": {"T": 2.0}}, {"kd": {"T": 4.0}}, default)


def test_methods_smoke_table_has_base_method_and_mode_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    skip_without_fashion()
    monkeypatch.chdir(ROOT)  # the configs name the shipped teacher checkpoint relative to the repo root
    m = _methods()
    keep = {"sp", "born_again"}
    configs = [*m.method_configs("compression"), *m.mode_configs("compression")]
    skip = tuple(p.stem for p in configs if p.stem not in keep)
    res = m.run_scenario("compression", [0, 1], 1, tmp_path, smoke=True, skip=skip)
    table = {r["method"]: r for r in res["table"]}
    gens = [f"born_again/gen{k}" for k in range(4)]
    assert list(table) == ["scratch", "kd (vanilla)", "sp", *gens, "born_again/ensemble"]
    assert all(r["n"] == 2 for r in res["table"])
    assert table["scratch"]["delta_scratch"] == 0 and table["kd (vanilla)"]["delta_kd"] == 0
    for r in res["table"]:
        assert r["delta_scratch"] == pytest.approx(r["test_acc_mean"] - table["scratch"]["test_acc_mean"])
    # Generation 0 is trained on the labels with the scratch student's seed and recipe: the same model.
    assert table["born_again/gen0"]["test_acc_mean"] == table["scratch"]["test_acc_mean"]
    assert table["sp"]["extra_params"] == 0 and table["born_again/ensemble"]["extra_params"] > 0
    md = m.markdown(res)
    assert "| born_again/ensemble |" in md and "Not run (`--skip`)" in md
    # each run names the machine that trained it (from its own summary), the table the one that assembled it
    assert f"Table assembled on: {res['environment']['cpu']}" in md and "1 thread(s)" in md
    names = {"fashion_mnist_hinton-smoke", "fashion_mnist_sp-smoke", "fashion_mnist_born_again-smoke"}
    assert set(res["trained_on"]) == names
    assert f"- {res['environment']['cpu']}" in md


def _row(recipe: str, budget: int, acc: float, scratch: float) -> dict:
    return {"recipe": recipe, "budget": budget, "test_acc_mean": acc, "delta_scratch": acc - scratch}


def test_patient_goal_needs_accuracy_and_margin_at_one_budget() -> None:
    goal = _load("patient").goal
    table = [_row("scratch", 16, 0.905, 0.905), _row("kd", 16, 0.918, 0.905), _row("kd", 64, 0.921, 0.915)]
    res = goal(table)  # 91.8 misses the accuracy, 92.1 at 64 epochs misses the margin (+0.6)
    assert not res["met"] and res["best"]["budget"] == 64
    res = goal([*table, _row("logit_std", 64, 0.926, 0.915)])
    assert res["met"] and res["best"]["recipe"] == "logit_std"


def test_patient_smoke_compares_recipes_at_equal_budgets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    skip_without_fashion()
    monkeypatch.chdir(ROOT)
    p = _load("patient")
    recipes = ["scratch", "kd", "kd_tta", "ensemble", "fm_mixup", "scratch_ema", "kd_tta9_ema", "kd_tta9_views"]
    res = p.run_all(recipes, [1], [0], 1, 1, tmp_path, smoke=True, reuse=False, views=(2,))
    table = {r["recipe"]: r for r in res["table"]}
    assert list(table) == recipes and all(r["budget"] == 1 for r in res["table"])
    tta = json.loads((tmp_path / "kd_tta_e1-smoke" / "summary.json").read_text())
    assert tta["config"]["teacher"]["tta"] == {"shift": 1, "pattern": "plus", "flip": False}
    assert tta["rows"][0]["arch"] == "cnn + tta (5 views, 1 px)"
    # the ensemble's student names both teachers, the second with its mirrored views
    ens = json.loads((tmp_path / "ensemble_e1-smoke" / "summary.json").read_text())
    student = next(r for r in ens["rows"] if r["role"] == "multi_teacher")
    assert [t["name"] for t in student["teachers"]] == ["teacher", "multi_teacher.teachers[0]"]
    assert ens["config"]["multi_teacher"]["teachers"][0]["tta"] == {"shift": 1, "pattern": "plus", "flip": True}
    assert ens["rows"][0]["arch"] == "cnn + tta (9 views, 1 px)"
    assert table["kd"]["delta_scratch"] == pytest.approx(
        table["kd"]["test_acc_mean"] - table["scratch"]["test_acc_mean"]
    )
    # weight averaging is measured against scratch averaged the same way, and both runs really average
    ema = table["kd_tta9_ema"]
    assert ema["baseline"] == "scratch_ema" and table["scratch_ema"]["delta_scratch"] is None
    assert ema["delta_scratch"] == pytest.approx(ema["test_acc_mean"] - table["scratch_ema"]["test_acc_mean"])
    for name in ("scratch_ema", "kd_tta9_ema"):
        cfg = json.loads((tmp_path / f"{name}_e1-smoke" / "summary.json").read_text())["config"]
        assert cfg["student"]["train"]["ema"] == 0.999
    views = table["kd_tta9_views"]  # its baseline (scratch on the same shifts) is not in this invocation: no Δ
    assert views["baseline"] == "scratch_shift1" and views["delta_scratch"] is None
    cfg = json.loads((tmp_path / "kd_tta9_views_e1-smoke" / "summary.json").read_text())["config"]
    assert cfg["kd"]["cache"]["views"] == 4 and cfg["student"]["train"]["augment"]["shift"] == 1
    fm = json.loads(
        (tmp_path / "fm_mixup_e1-smoke" / "summary.json")  # smoke runs get their own directory
        .read_text()
    )["config"]
    assert fm["kd"]["alpha"] == 1.0 and fm["student"]["train"]["augment"]["mixup"] == 0.2
    # each row names the machine that trained it, from the run's own summary
    assert table["kd"]["trained_on"].startswith(res["environment"]["cpu"]) and "1 thr" in table["kd"]["trained_on"]
    assert table["kd"]["trained_on"].endswith(", float32")  # and the precision the student trained in
    # a view costs one row of float16 logits (10 classes) and one int16 draw (3 numbers); each image one int64 index
    (cost,) = res["view_cost"]
    assert cost["views"] == 2 and cost["mib_55k"] == pytest.approx(55_000 * (2 * (10 * 2 + 3 * 2) + 8) / 2**20)
    md = p.markdown(res)
    assert "Goal (≥ 92.0 %" in md and "- K = 2:" in md


def test_cross_fit_labels_every_image_by_the_teacher_that_did_not_train_on_it(tmp_path: Path) -> None:
    skip_without_fashion()
    import torch

    from kdistill.io import safe_load
    from kdistill.models import load_weights_into
    from kdistill.trainer import predict
    from kdistill.tta import ShiftAveraged

    cf = _load("cross_fit")
    res = cf.main(["--smoke", "--folds", "2", "--jobs", "1", "--out", str(tmp_path)])
    saved = safe_load(Path(res["slot"]))
    cfg = cf.load_config(cf.CONFIG)
    ts = cf._data(cfg, smoke=True).transfer_set
    assert torch.equal(saved["index"], ts.index) and saved["logits"].shape == (len(ts), 10)
    held = cf.held_out(len(ts), 2)
    assert sorted(torch.cat(held).tolist()) == list(range(len(ts)))  # a partition: every image labelled once
    for k, rows in enumerate(held):
        model = cf._teacher(cfg, cf._data(cfg, smoke=True))
        load_weights_into(model, tmp_path / f"fold{k}" / "best.pt")
        expected = predict(ShiftAveraged(model, 1, "grid"), ts.take(rows))
        assert torch.allclose(saved["logits"][rows], expected, atol=1e-5)
        assert res["fold_train_rows"][k] == len(ts) - len(rows)  # trained on the other fold only
    with pytest.raises(SystemExit):
        cf.main(["--folds", "1", "--out", str(tmp_path)])


def test_regression_benchmark_smoke_collects_every_config(tmp_path: Path) -> None:
    mod = _load("regression")
    assert mod.main(["--smoke", "--jobs", "1", "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")]) == 0
    md = (tmp_path / "out" / "regression.md").read_text()
    assert "Smoke run" in md
    for config in mod.CONFIGS:
        assert f"## {config.stem} " in md
    saved = json.loads((tmp_path / "out" / "regression.json").read_text())
    assert len(saved) == len(mod.CONFIGS) and all(s["gains"] for s in saved)
    assert (tmp_path / "out" / "regression" / "toy1d-curves.png").stat().st_size > 1000


def test_step_speed_smoke_writes_ratios_for_both_students(tmp_path: Path) -> None:
    mod = _load("step_speed")
    assert mod.main(["--smoke", "--out", str(tmp_path / "s.md")]) == 0
    md = (tmp_path / "s.md").read_text()
    assert "| compression CNN |" in md and "| few-labels MLP |" in md and md.count("×") >= 6
    assert "| fused (kdistill) |" in md and md.count("| compression CNN |") == 2
    assert "`aten::convolution_backward`" in md  # the profiler saw the step's heaviest operator
    assert "inside kdistill's `fit`" in md


def test_encoder_shapes_keeps_heads_by_slicing_exactly(tmp_path: Path) -> None:
    """Keeping the first h heads equals the unsliced layer with the other heads' output columns zeroed."""
    pytest.importorskip("transformers")
    import copy

    import torch

    from kdistill.encoder.models import load_encoder
    from tests.encoder.tiny import make_encoder_dir

    bench = _load("encoder_shapes")
    teacher, _, _ = load_encoder(str(make_encoder_dir(tmp_path / "t")))  # 3 layers x 32, 4 heads of 8
    name, student = bench.build(teacher, "S=2:16:0,2")
    assert name == "S" and len(student.hf.encoder.layer) == 2
    zeroed = copy.deepcopy(student)
    for layer in zeroed.hf.encoder.layer:
        layer.attention.output.dense.weight.data[:, 8:] = 0.0  # heads 1-3 contribute nothing
    bench.keep_heads(student, 1)
    att = student.hf.encoder.layer[0].attention
    assert att.self.query.out_features == 8 and att.output.dense.in_features == 8
    ids = torch.randint(5, 40, (3, 7))
    with torch.no_grad():
        assert torch.allclose(student(ids), zeroed(ids), atol=1e-6)
    with pytest.raises(SystemExit, match="keep 5 heads: the layers have 1"):
        bench.keep_heads(student, 5)
    with pytest.raises(SystemExit, match="bad shape 'S=2:16'"):
        bench.build(teacher, "S=2:16")


def test_encoder_portable_files_read_back_as_the_same_splits(tmp_path: Path) -> None:
    """The dumped sentences deal themselves to the same splits when read as files, the transfer sentences stay
    training-only, and the float16 teacher loads as float32 within rounding of the original."""
    pytest.importorskip("transformers")
    from kdistill.encoder.config import load_encoder_config
    from kdistill.encoder.models import load_encoder
    from kdistill.encoder.sentences import read_sentences
    from tests.encoder.tiny import make_encoder_dir, sentences, write_corpus

    bench = _load("encoder_portable")
    teacher = make_encoder_dir(tmp_path / "t")
    (tmp_path / "corpus").mkdir()
    corpus = write_corpus(tmp_path / "corpus" / "c.txt", n=300)
    more = tmp_path / "more.txt"
    more.write_text("\n".join(sentences(200, seed=7)) + "\n")
    over = [f"teacher.path={teacher}", "sentences.source=files", f"sentences.paths=[{corpus.parent}]"]
    over += ["sentences.max_length=16", f"sentences.transfer={{source: files, paths: [{more}]}}", "eval.queries=20"]
    out = bench.main([str(tmp_path / "out"), "--half", *over])
    assert out["differ"] == {"train": 0, "val": 0, "test": 0}
    assert out["half_check"]["cos"] > 0.999 and out["half_check"]["agreement"] > 0.5
    cfg = load_encoder_config(bench.ROOT / "configs" / "text" / "minilm_shrink.yaml", over)
    kw = {"val_fraction": cfg.sentences.val_fraction, "test_fraction": cfg.sentences.test_fraction}
    want = read_sentences("files", [str(corpus.parent)], transfer={"source": "files", "paths": [str(more)]}, **kw)
    moved = load_encoder_config(bench.ROOT / "configs" / "text" / "minilm_shrink.yaml", [*over, *out["overrides"]])
    s = moved.sentences
    got = read_sentences(s.source, s.paths, s.pattern, s.separator, transfer=s.transfer.model_dump(), **kw)
    assert got.text == want.text and got.transfer["sentences"] == want.transfer["sentences"] > 0
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(tmp_path / "out" / "teacher" / "model.safetensors").values()} >= {torch.float16}
    back, _, _ = load_encoder(moved.teacher.path)
    assert {p.dtype for p in back.parameters()} == {torch.float32}


def test_encoder_fit_gap_scores_training_and_test_sentences_alike(tmp_path: Path) -> None:
    """The teacher as its own student finds all its neighbours in both sets; a shrunk student gets scores in range."""
    pytest.importorskip("transformers")
    from kdistill.encoder.models import load_encoder, save_encoder, shrink
    from tests.encoder.tiny import make_encoder_dir, write_corpus

    bench = _load("encoder_fit_gap")
    teacher_dir = make_encoder_dir(tmp_path / "t")
    corpus = write_corpus(tmp_path / "c.txt", n=300)
    teacher, tok, _ = load_encoder(str(teacher_dir))
    save_encoder(shrink(teacher, 1), tok, tmp_path / "s")
    args = [str(teacher_dir), str(tmp_path / "s"), "--teacher", str(teacher_dir), "--files", str(corpus)]
    out = bench.main([*args, "--n", "40", "--queries", "20", "--k", "5", "--max-length", "16"])
    same, small = out[str(teacher_dir)], out[str(tmp_path / "s")]
    assert same == {
        "train_cos": pytest.approx(1.0),
        "train_agreement": 1.0,
        "test_cos": pytest.approx(1.0),
        "test_agreement": 1.0,
    }
    assert all(0.0 <= small[k] < 1.0 for k in ("train_agreement", "test_agreement"))
    assert -1.0 <= small["train_cos"] < 0.9999


def test_encoder_int8_scores_float_and_low_precision_copies_against_the_float_teacher(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The float32 teacher is its own perfect student; its int8 and bf16 copies differ a little; the models scored
    stay float (the copies are separate); every speed ratio is relative to the float32 teacher and to the teacher
    in the same precision; an unknown variant is refused by name."""
    pytest.importorskip("transformers")
    from torch import nn

    from kdistill.encoder.models import load_encoder, save_encoder, shrink
    from kdistill.precision import int8_copy, int8_rows, low_precision
    from tests.encoder.tiny import make_encoder_dir, write_corpus

    bench = _load("encoder_int8")
    teacher_dir = make_encoder_dir(tmp_path / "t")
    corpus = write_corpus(tmp_path / "c.txt", n=300)
    teacher, tok, _ = load_encoder(str(teacher_dir))
    save_encoder(shrink(teacher, 1), tok, tmp_path / "run" / "S1" / "hf")
    args = [str(tmp_path / "run" / "S1" / "hf"), "--teacher", str(teacher_dir), "--files", str(corpus)]
    out = bench.main([*args, "--queries", "20", "--k", "5", "--max-length", "16", "--tokens", "8", "--repeats", "2"])
    variants = ["int8", "int8-pc", "int8-sq", "bf16"]
    assert list(out) == ["teacher", *(f"teacher {v}" for v in variants), "S1", *(f"S1 {v}" for v in variants)]
    assert out["teacher"]["cos"] == pytest.approx(1.0) and out["teacher"]["agreement"] == 1.0
    assert out["teacher"]["x_b1"] == 1.0 and all(out[f"teacher {v}"]["x_same"] == 1.0 for v in variants)
    assert out["S1 int8"]["x_same"] == pytest.approx(out["teacher int8"]["ms_b1"] / out["S1 int8"]["ms_b1"])
    assert out["S1"]["x_same"] == pytest.approx(out["S1"]["x_b1"])  # float32: the same teacher twice
    for v in variants:  # lower precision moves the embeddings, a little (below; the cosine may round to 1)
        assert 0.99 < out[f"teacher {v}"]["cos"] <= 1.0, v
    assert all(0.0 <= r["agreement"] <= 1.0 and r["ms_b1"] > 0 for r in out.values())
    with pytest.raises(SystemExit):
        bench.main([*args, "--variants", "int8,int4"])
    capsys.readouterr()
    bench.main(
        [*args, "--variants", "int8-sq", "--sweep-alpha", "0.5,1", "--queries", "10", "--k", "3", "--repeats", "1"]
    )
    sweep = capsys.readouterr().out.split("\n\n")[1]  # the validation table comes before the test one
    assert [line.split(" | ")[0] for line in sweep.splitlines()[2:]] == ["| none (int8-pc)", "| 0.5", "| 1"]
    fused = bench.main([*args, "--variants", "int8-pc,int8-sq", "--unfused", "--queries", "10", "--repeats", "1"])
    assert list(fused)[:5] == [
        "teacher",
        "teacher int8-pc",
        "teacher int8-pc unfused",
        "teacher int8-sq",
        "teacher int8-sq unfused",
    ]
    pc, pc_apart = fused["teacher int8-pc"], fused["teacher int8-pc unfused"]  # the same int8 result, bit for bit
    assert (pc["cos"], pc["agreement"]) == (pc_apart["cos"], pc_apart["agreement"])
    assert fused["teacher int8-sq unfused"]["x_same"] == pytest.approx(
        fused["teacher int8-sq"]["ms_b1"] / fused["teacher int8-sq unfused"]["ms_b1"]
    )  # like for like: against the fused teacher copy of its precision
    if importlib.util.find_spec("onnxruntime") is not None:  # the onnx extra: copies served by onnxruntime
        served = bench.main([*args, "--variants", "onnx,onnx-int8-sq", "--queries", "10", "--repeats", "1"])
        assert list(served) == ["teacher", "teacher onnx", "teacher onnx-int8-sq", "S1", "S1 onnx", "S1 onnx-int8-sq"]
        assert served["teacher onnx"]["cos"] == pytest.approx(1.0, abs=1e-5)  # the export answers as PyTorch does
        assert served["S1 onnx"]["cos"] == pytest.approx(served["S1"]["cos"], abs=1e-5)
        assert 0.9 < served["teacher onnx-int8-sq"]["cos"] < 1.0
        assert served["S1 onnx-int8-sq"]["x_same"] == pytest.approx(
            served["teacher onnx-int8-sq"]["ms_b1"] / served["S1 onnx-int8-sq"]["ms_b1"]
        )  # like for like: against the teacher served the same way
        assert served["S1 onnx-int8-sq"]["x_runtime"] == pytest.approx(
            served["teacher onnx"]["ms_b1"] / served["S1 onnx-int8-sq"]["ms_b1"]
        )  # and against the float32 teacher in onnxruntime
        assert served["S1"]["x_runtime"] == served["S1"]["x_b1"]  # a PyTorch row: the float32 teacher in PyTorch
        assert out["S1 int8"]["x_runtime"] == out["S1 int8"]["x_b1"]
    capsys.readouterr()
    bench.main([*args, "--variants", "int8-pc", "--where", "--queries", "10", "--k", "3", "--repeats", "1"])
    where = capsys.readouterr().out.split("\n\n")[1].splitlines()[2:]
    assert len(where) == 7 and where[0].startswith("| int8-pc, every Linear |")
    assert where[-1].startswith("| weights rounded to int8 per row, activations float |")
    scores = {line.split(" | ")[0]: float(line.split(" | ")[1]) for line in where}
    assert scores["| int8-pc, every Linear"] == pytest.approx(out["teacher int8-pc"]["cos"])  # the same copy
    grid = bench.rounded_weights(teacher).hf.encoder.layer[0].intermediate.dense.weight.detach()
    weight = teacher.hf.encoder.layer[0].intermediate.dense.weight.detach()
    scale = weight.abs().amax(1, keepdim=True) / 127.5  # the kernel's per-row scale
    assert torch.allclose(grid / scale, (grid / scale).round(), atol=1e-3)  # on int8's grid, row by row
    assert torch.equal(grid, int8_rows(weight))
    ids = torch.randint(5, 40, (3, 7))
    for q in (int8_copy(teacher, per_channel=False), int8_copy(teacher)):
        linears = [m for m in q.modules() if type(m) is nn.Linear]
        assert not linears and any(type(m) is nn.Linear for m in teacher.modules())  # the copy, not the model
        with torch.no_grad():
            assert 0.0 < float((q(ids) - teacher(ids)).abs().max()) < 0.05
    per_row = int8_copy(teacher).hf.encoder.layer[0].intermediate.dense.weight()
    assert per_row.qscheme() == torch.per_channel_affine and per_row.q_per_channel_scales().numel() > 1
    half = low_precision(teacher, "bf16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        assert 0.0 < float((half(ids).float() - teacher(ids)).abs().max()) < 0.05
    assert {p.dtype for p in teacher.parameters()} == {torch.float32}


def test_encoder_qat_fake_int8_matches_the_int8_kernel_and_trains_through_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The fake-quantised model computes what the per-row int8 copy computes (far closer to it than to the float
    model), gradients reach every weight through the rounding, unwrapping gives the plain layers back, and the
    benchmark trains the control and the quantisation-aware student, scores each in both precisions, and reuses
    the teacher's embeddings it stored."""
    pytest.importorskip("transformers")
    import copy

    from torch import nn

    from kdistill.encoder.models import load_encoder, save_encoder, shrink
    from kdistill.precision import int8_copy
    from tests.encoder.tiny import make_encoder_dir, write_corpus

    bench = _load("encoder_qat")
    teacher_dir = make_encoder_dir(tmp_path / "t", hidden=64)
    corpus = write_corpus(tmp_path / "c.txt", n=300)
    teacher, tok, _ = load_encoder(str(teacher_dir))
    student = shrink(teacher, 1).eval()
    ids = torch.randint(5, 40, (4, 9))
    with torch.no_grad():
        ref, real = student(ids), int8_copy(student)(ids)
    fake = copy.deepcopy(student)
    n = sum(type(m) is nn.Linear for m in fake.hf.modules())
    assert bench.fake_quantize(fake.hf) == n > 0
    assert sum(isinstance(m, bench.FakeInt8Linear) for m in fake.hf.modules()) == n  # each layer wrapped once
    out = fake(ids)
    assert float((out.detach() - real).abs().max()) < 0.3 * float((ref - real).abs().max())
    out.sum().backward()
    weights = [  # the pooler's layer is not on the path to a mean-pooled embedding
        m.linear.weight
        for name, m in fake.hf.named_modules()
        if isinstance(m, bench.FakeInt8Linear) and "pooler" not in name
    ]
    assert weights and all(w.grad is not None and w.grad.abs().sum() > 0 for w in weights)
    bench.unwrap(fake.hf)
    assert sum(type(m) is nn.Linear for m in fake.hf.modules()) == n
    assert not any(isinstance(m, bench.FakeInt8Linear) for m in fake.modules())

    save_encoder(student, tok, tmp_path / "S1")
    args = [str(tmp_path / "S1"), "--teacher", str(teacher_dir), "--files", str(corpus), "--epochs", "1",
            "--batch-size", "8", "--lr", "1e-3", "--queries", "20", "--k", "5", "--max-length", "16",
            "--threads", "1", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]  # fmt: skip
    res = bench.main(args)
    labels = ["as given", "trained on, float32", "trained on with fake int8"]
    assert list(res) == [f"{m} {p}" for m in labels for p in ("float32", "int8-pc")]
    assert all(-1.0 <= r["cos"] <= 1.0 and 0.0 <= r["agreement"] <= 1.0 for r in res.values())
    assert res["trained on, float32 float32"] != res["as given float32"]  # an epoch at 1e-3 moves it
    kept, _, _ = load_encoder(str(tmp_path / "out" / "trained_on_with_fake_int8"))
    assert not any(isinstance(m, bench.FakeInt8Linear) for m in kept.modules())
    assert "teacher embeddings of" in capsys.readouterr().out
    assert bench.main(args) == res  # the teacher's embeddings read back, the training repeated exactly
    assert "teacher embeddings of" not in capsys.readouterr().out


def test_student_tta_scores_each_seed_with_1_5_and_9_views(tmp_path: Path) -> None:
    """Each group's students are scored with the views the teacher option uses; the 1-view score is the model's
    own test accuracy; a run directory without exactly one student is refused by name."""
    skip_without_fashion()
    from kdistill.data.fashion_mnist import load_fashion_arrays
    from kdistill.models import build_model, save_model_file

    bench = _load("student_tta")
    norm = {"scale": 1 / 255, "mean": [0.286], "std": [0.353]}
    spec = {"arch": "cnn", "kwargs": {"channels": [4, 8, 8], "convs_per_stage": [1, 1, 1], "stem_stride": 2}}
    dirs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(spec["arch"], (1, 28, 28), 10, spec["kwargs"]).eval()
        (tmp_path / f"r{seed}" / f"kd-seed{seed}").mkdir(parents=True)
        save_model_file(model, spec, (1, 28, 28), 10, tmp_path / f"r{seed}" / f"kd-seed{seed}" / "weights.pt", norm)
        dirs.append(str(tmp_path / f"r{seed}"))
    out = bench.main([f"A={','.join(dirs)}", "--repeats", "2"])
    accs = out["groups"]["A"]
    assert list(accs) == ["1 view", "plus (5)", "grid (9)"] and all(len(v) == 2 for v in accs.values())
    arrays = load_fashion_arrays(download=False)
    x = (torch.from_numpy(arrays["test_images"][:, None].astype("float32")) / 255.0 - 0.286) / 0.353
    torch.manual_seed(1)
    model = build_model(spec["arch"], (1, 28, 28), 10, spec["kwargs"]).eval()
    with torch.no_grad():
        want = (
            100.0
            * float((model(x).argmax(1) == torch.from_numpy(arrays["test_labels"].astype("int64"))).sum())
            / len(x)
        )
    assert accs["1 view"][1] == pytest.approx(want)
    assert set(out["latency_ms_b1"]) == {"student, 1 view", "student, plus (5)", "student, grid (9)", "teacher"}
    assert all(ms > 0 for ms in out["latency_ms_b1"].values())  # timed, never compared in a test
    with pytest.raises(SystemExit, match="bad group 'A'"):
        bench.main(["A"])
    with pytest.raises(SystemExit, match="holds 0 student weights files"):
        bench.main([f"B={tmp_path}"])
