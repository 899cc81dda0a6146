"""Language-model pieces on a tiny generated corpus: document splits and packing, the top-k cache, on-policy
sampling, objectives in the one training loop, bad input, and a transformers round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdistill.config import TrainConfig
from kdistill.teacher import FrozenTeacher
from kdistill.text.config import load_text_config
from kdistill.text.corpus import build_text_data, corpus_files, read_corpus
from kdistill.text.models import TinyGPT, check_same_vocabulary
from kdistill.text.objectives import LMDistiller, LMSupervised
from kdistill.text.teacher import TopKCache, sample
from kdistill.text.tokenizers import ByteTokenizer, CharTokenizer, TextError
from kdistill.trainer import fit

WORDS = "the cat sat on a mat while one dog ran to its red ball and then slept".split()


def write_corpus(root: Path, docs: int = 24, words: int = 60) -> Path:
    """``docs`` files of pseudo-English (one document each), the same on every machine."""
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(docs):
        ids = torch.randint(len(WORDS), (words,), generator=g).tolist()
        (root / f"doc{i:03d}.txt").write_text(f"document {i}: " + " ".join(WORDS[j] for j in ids) + ".\n")
    return root


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def data(corpus_dir: Path):  # noqa: ANN201
    corpus = read_corpus(corpus_files([str(corpus_dir)]), val_fraction=0.1, test_fraction=0.1)
    return build_text_data(corpus, ByteTokenizer(), block=32)


def test_documents_not_windows_are_split(corpus_dir: Path) -> None:
    corpus = read_corpus(corpus_files([str(corpus_dir)]), val_fraction=0.1, test_fraction=0.1)
    heads = {s: {d.split(":")[0] for d in corpus.docs[s]} for s in ("train", "val", "test")}
    assert sum(len(h) for h in heads.values()) == 24  # every document in exactly one split
    assert not (heads["train"] & heads["test"]) and not (heads["train"] & heads["val"])
    assert heads["val"] and heads["test"]


def test_blocks_are_packed_without_overlap_and_indexed(data) -> None:  # noqa: ANN001
    tr = data.train
    assert tr.x.shape[1] == 32 and torch.equal(tr.x[:, 1:], tr.y[:, :-1])  # y is x shifted by one
    # Blocks are consecutive pieces of one token stream, not overlapping windows: rebuilt, they are the stream.
    flat = torch.cat([torch.cat([tr.x[i], tr.y[i, -1:]]) for i in range(len(tr))])
    assert len(flat) == len(tr) * 33 and torch.equal(tr.index, torch.arange(len(tr)))
    text = ByteTokenizer().decode(flat.tolist())
    assert "document" in text and (flat == ByteTokenizer.eos_id).sum() >= 1  # documents joined by end-of-document


def test_char_tokenizer_round_trips() -> None:
    tok = CharTokenizer.fit(["hello world"])
    assert tok.decode(tok.encode("hello")) == "hello" and tok.encode("z") == [tok.unk_id]


def test_bad_corpora_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("  \n")
    with pytest.raises(TextError, match=r"a.txt: the file is empty"):
        read_corpus(corpus_files([str(tmp_path / "empty")]))
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "b.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(TextError, match=r"b.txt: not UTF-8 text"):
        read_corpus(corpus_files([str(tmp_path / "latin")]))
    short = write_corpus(tmp_path / "short", docs=3, words=3)
    with pytest.raises(TextError, match=r"shorter than one block of 257 tokens"):
        build_text_data(read_corpus(corpus_files([str(short)])), ByteTokenizer(), block=256)
    with pytest.raises(TextError, match="no such file or directory"):
        corpus_files([str(tmp_path / "nowhere")])


def _teacher(vocab: int = 257, context: int = 32, seed: int = 0) -> FrozenTeacher:
    torch.manual_seed(seed)
    return FrozenTeacher(TinyGPT(vocab, context, layers=1, dim=32, heads=2))


@pytest.mark.parametrize("k", [8, 257])
def test_cache_row_is_the_teachers_distribution_on_the_block_the_student_sees(data, k: int, tmp_path: Path) -> None:  # noqa: ANN001
    teacher = _teacher()
    cache = TopKCache.build(teacher, data.train, k, 257, tmp_path / "cache")
    rows = torch.tensor([3, 0, len(data.train) - 1])
    batch = {"x": data.train.x[rows], "y": data.train.y[rows], "index": rows}
    want = torch.log_softmax(teacher(batch["x"]), -1)
    got = cache(batch)
    top = want.topk(k, -1).indices
    torch.testing.assert_close(got.gather(-1, top), want.gather(-1, top), atol=2e-2, rtol=2e-3)  # float16
    torch.testing.assert_close(got.exp().sum(-1), torch.ones(got.shape[:-1]), atol=2e-2, rtol=0)  # sums to 1
    if k == 257:
        torch.testing.assert_close(got.softmax(-1), want.softmax(-1), atol=1e-3, rtol=0)
    else:  # the tail shares what the top k leave: one value, the remaining mass spread evenly
        rest = torch.ones_like(want[..., 0]) - want.gather(-1, top).exp().sum(-1)
        mask = torch.ones_like(got, dtype=torch.bool).scatter_(-1, top, False)
        tail = got[mask].view(*got.shape[:-1], 257 - k)
        torch.testing.assert_close(tail.exp().sum(-1), rest, atol=2e-3, rtol=2e-2)
    reopened = TopKCache.build(teacher, data.train, k, 257, tmp_path / "cache")  # the files are reused
    assert torch.equal(reopened(batch), got) and not list(tmp_path.glob("*.tmp"))


def test_on_policy_samples_come_from_the_student_without_gradient(data) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    student = TinyGPT(257, 32, layers=1, dim=16, heads=2)
    prefix = data.train.x[:4, :8]
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    seq = sample(student, prefix, 10, g1, context=32)
    assert not seq.requires_grad and torch.equal(seq[:, :8], prefix) and seq.shape == (4, 18)
    # Re-drawn by hand from the student's own distributions with the same generator: the same tokens.
    manual = prefix
    for _ in range(10):
        with torch.no_grad():
            probs = torch.softmax(student(manual)[:, -1], -1)
        manual = torch.cat([manual, torch.multinomial(probs, 1, generator=g2)], 1)
    assert torch.equal(seq, manual)
    objective = LMDistiller(student, _teacher(), "jsd", on_policy=1.0, prefix=8)
    batch = {"x": data.train.x[:4], "y": data.train.y[:4], "index": torch.arange(4)}
    out = objective(batch)
    assert out.parts["on_policy"] == 1 and (out.targets[:, :7] == -1).all() and (out.targets[:, 7:] >= 0).all()
    out.loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in objective.teacher.parameters())


@pytest.mark.parametrize("divergence", ["fkl", "rkl", "jsd", "skl", "srkl"])
def test_every_objective_trains_in_the_one_loop(data, divergence: str, tmp_path: Path) -> None:  # noqa: ANN001
    teacher = _teacher()
    cache = TopKCache.build(teacher, data.train, 16, 257)
    torch.manual_seed(1)
    student = TinyGPT(257, 32, layers=1, dim=16, heads=2)
    cfg = TrainConfig(steps=6, batch_size=8, optimizer="adamw", lr=3e-3, eval_batch_size=16, select="nll")
    objective = LMDistiller(student, teacher, divergence, source=cache, on_policy=0.5, prefix=8)
    res = fit(objective, data.train, data.val, cfg, seed=0, out_dir=tmp_path / "run", verbose=False)
    assert res.steps >= 6 and res.history[-1]["val_nll"] < 5.6  # below uniform over 257 bytes (5.55 nats)...
    assert res.history[-1]["val_nll"] < res.history[0]["val_nll"] + 1.0  # ...and not diverging
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "train_kd" in rows[0] and 0.0 <= rows[0].get("train_on_policy", 0.0) <= 1.0


def test_scratch_lm_learns(data) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = TinyGPT(257, 32, layers=1, dim=32, heads=2)
    cfg = TrainConfig(steps=60, batch_size=8, optimizer="adamw", lr=1e-2, eval_batch_size=16, select="nll")
    res = fit(LMSupervised(model), data.train, data.val, cfg, seed=0, verbose=False)
    assert res.history[-1]["val_nll"] < 3.5  # uniform over 257 bytes is 5.55 nats per token


def test_different_vocabularies_are_an_error_naming_both() -> None:
    with pytest.raises(TextError, match=r"teacher vocabulary has 257 tokens, student vocabulary 100"):
        check_same_vocabulary(TinyGPT(257, 8, 1, 8, 1), TinyGPT(100, 8, 1, 8, 1))


def test_text_config_rejects_unknown_keys_and_objectives(tmp_path: Path) -> None:
    from kdistill.config import ConfigError

    with pytest.raises(ConfigError, match="kd.objectives"):
        load_text_config(None, ["task=text", "kd.objectives=[fkl, nope]"])
    with pytest.raises(ConfigError, match="corpus.blok"):
        load_text_config(None, ["task=text", "corpus.blok=3"])


def test_transformers_model_round_trips_through_save_pretrained(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="the text extra is not installed")
    from kdistill.text.models import build_hf, load_hf, save_hf

    torch.manual_seed(0)
    model = build_hf(
        {"model_type": "gpt2", "vocab_size": 257, "n_positions": 32, "n_embd": 32, "n_layer": 1, "n_head": 2}
    )
    tok = _byte_level_tokenizer(tmp_path / "tok")
    save_hf(model, tok, tmp_path / "m")
    again, tok2 = load_hf(tmp_path / "m")
    ids = torch.randint(0, 257, (2, 16))
    model.eval(), again.eval()
    assert torch.equal(model(ids), again(ids)) and tok2 is not None
    with pytest.raises(TextError, match="has no weights"):
        load_hf(tmp_path / "tok")


def _byte_level_tokenizer(path: Path):  # noqa: ANN202
    """A character-level tokenizer written locally (no hub): printable ASCII plus an end-of-text token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(32 + i): i for i in range(95)} | {"<eos>": 95}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>")
    path.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(path)
    return tok


def test_missing_transformers_is_one_sentence_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from kdistill.text.models import build_hf

    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if not installed
    with pytest.raises(
        TextError, match=r"install the text extra, scripts/setup.sh text \(or pip install -e '\.\[text\]'\)"
    ):
        build_hf({"model_type": "gpt2"})


def test_a_separator_splits_one_file_into_documents(tmp_path: Path) -> None:
    """Debian's fortunes files: one fortune per document, separated by lines holding a single %."""
    f = tmp_path / "fortunes"
    f.write_text("\n%\n".join(f"fortune number {i}: " + " ".join(WORDS[: 5 + i % 7]) for i in range(30)) + "\n%\n")
    corpus = read_corpus([f], separator=r"\n%\n", val_fraction=0.1, test_fraction=0.1)
    docs = [d for s in ("train", "val", "test") for d in corpus.docs[s]]
    assert len(docs) == 30 and all(d.startswith("fortune number") and "%" not in d for d in docs)
