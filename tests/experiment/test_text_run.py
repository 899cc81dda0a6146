"""`kdistill run` of a language-model config: every shipped text config in --smoke mode, a run on a generated
corpus with every role (resumed after an interruption, ending where it would have), and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdistill.cli import main
from kdistill.config import task_of
from kdistill.experiment.text_run import run_text
from kdistill.io import CheckpointError
from kdistill.text.config import load_text_config
from kdistill.text.tokenizers import TextError
from tests.helpers import ROOT
from tests.text.test_text import write_corpus

# The task: encoder config of that folder is smoke-tested in tests/encoder (on a tiny teacher built there).
TEXT_CONFIGS = sorted(p for p in (ROOT / "configs" / "text").glob("*.yaml") if task_of(p) == "text")


def test_text_configs_are_shipped() -> None:
    assert "stdlib_tiny" in {p.stem for p in TEXT_CONFIGS}


@pytest.mark.parametrize("config", TEXT_CONFIGS, ids=lambda p: p.stem)
def test_every_text_config_smoke(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # configs name the shipped teacher checkpoint relative to the repo root
    assert main(["run", str(config), "--smoke", f"output_dir={tmp_path}", "threads=1"]) == 0
    cfg = load_text_config(config)
    summary = json.loads((tmp_path / f"{cfg.name}-smoke" / "summary.json").read_text())
    kd = len(cfg.kd.objectives) if "kd" in cfg.roles else 0
    assert len(summary["rows"]) == 1 + (len(cfg.roles) - ("kd" in cfg.roles) + kd) * len(cfg.seeds)
    assert all(r["test_bpt"] > 0 for r in summary["rows"])
    assert "bits/token" in capsys.readouterr().out
    if cfg.student.model.arch == "transformers":  # saved with save_pretrained: transformers loads it unchanged
        import torch
        from transformers import AutoModelForCausalLM

        from kdistill.io import safe_load
        from kdistill.text.models import HFCausalLM, build_hf

        d = tmp_path / f"{cfg.name}-smoke" / f"scratch-seed{cfg.seeds[0]}"
        ours = build_hf({"vocab_size": 257, **cfg.student.model.kwargs})
        ours.load_state_dict(safe_load(d / "weights.pt")["state_dict"])
        again = HFCausalLM(AutoModelForCausalLM.from_pretrained(d / "hf"))
        ids = torch.randint(0, 257, (2, 12))
        assert torch.equal(ours.eval()(ids), again.eval()(ids))


def overrides(corpus: Path, out: Path) -> list[str]:
    return [
        "task=text",
        "name=tiny",
        "corpus={source: files, paths: [" + str(corpus) + "], block: 16, val_fraction: 0.1, test_fraction: 0.1}",
        "teacher.model.kwargs={layers: 1, dim: 32, heads: 2}",
        "teacher.train={steps: 30, batch_size: 16, optimizer: adamw, lr: 0.01, eval_batch_size: 32, select: nll}",
        "student.model.kwargs={layers: 1, dim: 16, heads: 2}",
        "student.train={epochs: 2, batch_size: 16, optimizer: adamw, lr: 0.01, eval_batch_size: 32, select: nll}",
        "kd={objectives: [fkl, rkl], top_k: 8}",
        "gkd={lam: 0.5, prefix: 4}",
        "seqkd={prefix: 4, blocks: 32}",
        "samples={prompts: 2, prompt_tokens: 6, new_tokens: 6}",
        "roles=[scratch, kd, gkd, seqkd]",
        "seeds=[0, 1]",
        "threads=1",
        f"output_dir={out}",
    ]


def _students(summary: dict) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("train_seconds", "tokens_per_second")} for r in summary["rows"]]


def test_text_run_with_every_role_resumes_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    ref = run_text(load_text_config(None, overrides(corpus, tmp_path / "ref")))
    names = [(r["role"], r["variant"], r["seed"]) for r in ref["rows"]]
    assert names[0] == ("teacher", None, 0) and ("kd", "rkl", 1) in names and ("seqkd", None, 1) in names
    run = tmp_path / "ref" / "tiny"
    md = (run / "summary.md").read_text()
    assert "| kd-fkl |" in md and "σ from scratch" in md and "**teacher**" in md and (run / "report.html").is_file()
    assert set(ref["samples"]) == {"prompt", "teacher", "scratch", "kd-fkl", "kd-rkl", "gkd", "seqkd"}

    # An interruption after the 4th student: the resumed run keeps the finished ones and ends where ref did.
    import kdistill.experiment.text_run as text_run

    calls = {"n": 0}
    real = text_run._student

    def interrupted(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(text_run, "_student", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_text(load_text_config(None, overrides(corpus, tmp_path / "cut")))
    monkeypatch.setattr(text_run, "_student", real)
    with pytest.raises(CheckpointError, match=r"kd.T: 1.0 in .*config.yaml, 2.0 now"):
        run_text(load_text_config(None, [*overrides(corpus, tmp_path / "cut"), "kd.T=2"]), resume=True)
    resumed = run_text(load_text_config(None, overrides(corpus, tmp_path / "cut")), resume=True)
    assert _students(resumed) == _students(ref)


def test_bad_text_input_fails_before_training(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    with pytest.raises(TextError, match="teacher vocabulary has 257 tokens, student vocabulary 300"):
        run_text(
            load_text_config(
                None, [*overrides(corpus, tmp_path), "student.model.arch=tests.experiment.test_text_run:wrong_vocab"]
            )
        )
    assert not list(tmp_path.glob("tiny/scratch-seed0"))
    with pytest.raises(CheckpointError, match="holds no run to resume"):
        run_text(load_text_config(None, overrides(corpus, tmp_path / "none")), resume=True)
    bad_ckpt = tmp_path / "t.pt"
    torch.save({"state_dict": {"nope": torch.zeros(1)}}, bad_ckpt)
    with pytest.raises(TextError, match=r"teacher.checkpoint .*t.pt does not fit teacher.model gpt"):
        run_text(load_text_config(None, [*overrides(corpus, tmp_path / "b"), f"teacher.checkpoint={bad_ckpt}"]))
    short = write_corpus(tmp_path / "short", docs=3, words=2)
    with pytest.raises(TextError, match="shorter than one block"):
        run_text(load_text_config(None, [*overrides(short, tmp_path), "corpus.block=64"]))


def wrong_vocab(vocab_size: int, context: int, **kwargs: object):  # noqa: ANN201
    from kdistill.text.models import TinyGPT

    return TinyGPT(300, context, layers=1, dim=8, heads=1)
