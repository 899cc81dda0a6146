"""``kdistill run`` of a ``task: text`` config: corpus -> teacher -> the teacher's top-k cache -> every student
(scratch, one kd student per divergence, on-policy GKD, sequence-level KD) for every seed -> summary, report.

Every student has the same step budget (``student.train.steps``) and the same selection rule (lowest
validation NLL), and is scored on the held-out test documents in bits per token. The run directory::

    config.yaml, data.json          the resolved config; the corpus as split and packed
    teacher/                        weights.pt (and hf/ for a transformers model), metrics
    <role>[-<objective>]-seed<k>/   metrics.jsonl, last.pt, weights.pt (hf/: save_pretrained), row.json
    summary.json, summary.md, report.html
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdistill.caches import state_fingerprint
from kdistill.data import Split
from kdistill.experiment.context import log, open_run_dir, plain_run_dir
from kdistill.io import atomic_save, atomic_write_text, safe_load
from kdistill.lock import run_lock
from kdistill.models import count_params
from kdistill.plugins import import_callable
from kdistill.report.text import write_text_summary
from kdistill.teacher import FrozenTeacher
from kdistill.text.config import LMSpec, TextExperimentConfig
from kdistill.text.corpus import build_text_data, corpus_files, read_corpus, stdlib_files
from kdistill.text.models import (
    HFCausalLM,
    TinyGPT,
    build_hf,
    check_same_vocabulary,
    load_hf,
    load_hf_tokenizer,
    save_hf,
)
from kdistill.text.objectives import LMDistiller, LMSupervised
from kdistill.text.teacher import TopKCache, bits_per_token, sample
from kdistill.text.tokenizers import ByteTokenizer, CharTokenizer, HFTokenizer, TextError
from kdistill.trainer import evaluate, fit

SMOKE = {"train": 48, "val": 8, "test": 8, "steps": 4, "teacher_steps": 6, "new_tokens": 8}


@dataclass
class TextRun:
    cfg: TextExperimentConfig
    smoke: bool
    resume: bool
    run_dir: Path
    data: Any
    students: Split  # what every student trains on: the training blocks, or the transfer set of them
    hf_tokenizer: Any = None


# ----------------------------------------------------------------------------- models


def build_lm(spec: LMSpec, vocab_size: int, context: int) -> tuple[nn.Module, Any]:
    """A causal LM as the spec says, and its own tokenizer when it has one (a transformers directory)."""
    if spec.arch == "gpt":
        return TinyGPT(vocab_size, context, **spec.kwargs), None
    if spec.arch == "transformers":
        if spec.path:
            return load_hf(spec.path)
        # kdistill's byte and char tokenizers put end-of-document last; GPT-2's default ids (50256) would lie
        # outside a small vocabulary.
        cfg = {"vocab_size": vocab_size, "bos_token_id": vocab_size - 1, "eos_token_id": vocab_size - 1, **spec.kwargs}
        if cfg.get("model_type") == "gpt2":
            cfg.setdefault("n_positions", context)
        return build_hf(cfg), None
    factory = import_callable(spec.arch, f"text model arch {spec.arch!r}", "use gpt, transformers or pkg.mod:fn")
    return factory(vocab_size=vocab_size, context=context, **spec.kwargs), None


def save_lm(model: nn.Module, spec: LMSpec, out: Path, tokenizer: Any) -> None:
    atomic_save({"spec": spec.model_dump(), "state_dict": model.state_dict()}, out / "weights.pt")
    if isinstance(model, HFCausalLM):
        save_hf(model, tokenizer, out / "hf")


# ----------------------------------------------------------------------------- data


def load_corpus_data(cfg: TextExperimentConfig, smoke: bool) -> tuple[Any, Any]:
    c = cfg.corpus
    files = stdlib_files(c.max_bytes) if c.source == "stdlib" else corpus_files(c.paths, c.pattern, c.max_bytes)
    corpus = read_corpus(files, c.separator, c.val_fraction, c.test_fraction)
    hf_tok = None
    if c.tokenizer == "byte":
        tok = ByteTokenizer()
    elif c.tokenizer == "char":
        tok = CharTokenizer.fit(corpus.docs["train"])
    else:
        if cfg.teacher.model.arch != "transformers" or not cfg.teacher.model.path:
            raise TextError("corpus.tokenizer=model needs a transformers teacher with teacher.model.path")
        hf_tok = load_hf_tokenizer(cfg.teacher.model.path)  # the teacher's weights are loaded once, later
        tok = HFTokenizer(hf_tok)
    data = build_text_data(corpus, tok, c.block, cfg.samples.prompts, cfg.samples.prompt_tokens)
    if smoke:
        for s in ("train", "val", "test"):
            split = getattr(data, s)
            n = min(len(split), SMOKE[s])
            setattr(data, s, Split(split.x[:n], split.y[:n], torch.arange(n)))
    return data, hf_tok


def _transfer_set(train: Split, blocks: int | None) -> Split:
    """A fixed random subset of the training blocks (their sample indices kept: the cache rows still align)."""
    if blocks is None or blocks >= len(train):
        return train
    rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:blocks].sort().values
    return train.take(rows)


def describe(data: Any, corpus_cfg: Any) -> dict:
    return {
        "tokenizer": data.tokenizer.name,
        "vocab_size": data.vocab_size,
        "block": data.block,
        "blocks": {s: len(getattr(data, s)) for s in ("train", "val", "test")},
        "tokens": {s: len(getattr(data, s)) * data.block for s in ("train", "val", "test")},
        "source": corpus_cfg.source,
        "fingerprint": data.fingerprint,
    }


# ----------------------------------------------------------------------------- the run


def run_text(cfg: TextExperimentConfig, smoke: bool = False, resume: bool = False) -> dict:
    with run_lock(plain_run_dir(cfg, smoke)):  # one writer per run directory
        return _run_text(cfg, smoke, resume)


def _run_text(cfg: TextExperimentConfig, smoke: bool, resume: bool) -> dict:
    run_dir, _ = open_run_dir(cfg, smoke, resume)
    data, hf_tok = load_corpus_data(cfg, smoke)
    students = _transfer_set(data.train, cfg.kd.transfer_blocks)
    d = describe(data, cfg.corpus) | {"student_blocks": len(students)}
    atomic_write_text(run_dir / "data.json", json.dumps(d, indent=1) + "\n")
    log(f"text: {d['tokenizer']} tokens (vocabulary {d['vocab_size']}), blocks of {d['block']}: {d['blocks']}")
    run = TextRun(cfg, smoke, resume, run_dir, data, students, hf_tok)

    teacher, t_row = _teacher(run)
    probe, _ = build_lm(cfg.student.model, data.vocab_size, data.block)
    check_same_vocabulary(teacher, probe, hf_tok, None)  # before any student trains
    frozen = FrozenTeacher(teacher)
    cache = _cache(run, frozen)
    rows = [t_row]
    seq_split = _seqkd_split(run, frozen) if "seqkd" in cfg.roles else None
    for seed in cfg.seeds:
        for role in cfg.roles:
            variants = cfg.kd.objectives if role == "kd" else [None]
            for variant in variants:
                rows.append(_student(run, role, variant, seed, frozen, cache, seq_split))
    samples = _samples(run, teacher, rows)
    return write_text_summary(run_dir, cfg.model_dump(mode="json"), rows, d, samples, smoke)


def _train_cfg(run: TextRun, teacher: bool):  # noqa: ANN202 - a TrainConfig
    tc = run.cfg.teacher.train if teacher else run.cfg.student.train
    if run.smoke:
        tc = tc.model_copy(update={"steps": SMOKE["teacher_steps" if teacher else "steps"], "batch_size": 8})
    return tc


def _teacher(run: TextRun) -> tuple[nn.Module, dict]:
    cfg, data = run.cfg, run.data
    torch.manual_seed(0)  # the same initial weights in every run, whatever ran before in this process
    model, _ = build_lm(cfg.teacher.model, data.vocab_size, data.block)
    out = run.run_dir / "teacher"
    tc = _train_cfg(run, True)
    if cfg.teacher.checkpoint:
        saved = safe_load(cfg.teacher.checkpoint)
        try:
            model.load_state_dict(saved["state_dict"])
        except RuntimeError as e:
            raise TextError(
                f"teacher.checkpoint {cfg.teacher.checkpoint} does not fit teacher.model {cfg.teacher.model.arch} "
                f"{cfg.teacher.model.kwargs} with vocabulary {data.vocab_size} ({str(e).splitlines()[0]}); give the "
                "spec it was trained with, or teacher.checkpoint=null to train one"
            ) from None
        log(f"teacher: loaded {cfg.teacher.checkpoint}")
        seconds, steps = 0.0, 0
    elif cfg.teacher.model.path and not cfg.teacher.finetune:
        log(f"teacher: {cfg.teacher.model.path} as it is (teacher.finetune is false)")
        seconds, steps = 0.0, 0
    elif (out / "row.json").is_file() and run.resume:
        model.load_state_dict(safe_load(out / "weights.pt")["state_dict"])
        return model.eval(), json.loads((out / "row.json").read_text())
    else:
        log(f"teacher: training {count_params(model):,} parameters")
        res = fit(LMSupervised(model), data.train, data.val, tc, seed=0, out_dir=out, desc="teacher", resume=run.resume)
        save_lm(model, cfg.teacher.model, out, run.hf_tokenizer)
        seconds, steps = res.train_seconds, res.steps
    row = _row(run, model, "teacher", None, 0, seconds, steps, tc.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "row.json", json.dumps(row) + "\n")
    log(f"teacher: test {row['test_bpt']:.4f} bits/token")
    return model.eval(), row


def _cache(run: TextRun, frozen: FrozenTeacher) -> TopKCache:
    parts = (run.data.fingerprint, run.cfg.kd.top_k, run.cfg.kd.transfer_blocks, state_fingerprint(frozen.model))
    key = hashlib.sha256("-".join(map(str, parts)).encode()).hexdigest()[:16]
    path = run.run_dir / "_teacher_cache" / key
    t0 = time.perf_counter()
    cache = TopKCache.build(frozen, run.students, run.cfg.kd.top_k, run.data.vocab_size, path)
    log(
        f"teacher: top-{cache.k} distributions of {len(run.students):,} blocks cached (float16, "
        f"{cache.row_bytes() * len(run.students) / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f}s"
    )
    return cache


@torch.no_grad()
def _seqkd_split(run: TextRun, frozen: FrozenTeacher) -> Split:
    """Sequence-level KD's training set: the teacher continues each training block's first ``prefix`` tokens."""
    s, data = run.cfg.seqkd, run.data
    source = run.students
    n = min(len(source), s.blocks or len(source))
    P = min(s.prefix, data.block - 1)
    gen = torch.Generator().manual_seed(1234)
    t0, rows = time.perf_counter(), []
    for i in range(0, n, 64):
        prefix = source.x[i : min(n, i + 64), :P]
        rows.append(sample(frozen, prefix, data.block + 1 - P, gen, s.temperature, context=data.block))
    seq = torch.cat(rows)
    y = seq[:, 1:].clone()
    y[:, : P - 1] = -1  # the prefix is the corpus' own text: learn the teacher's continuation only
    log(f"seqkd: the teacher wrote {n:,} blocks in {time.perf_counter() - t0:.1f}s")
    return Split(seq[:, :-1].contiguous(), y, torch.arange(n))


def _student(
    run: TextRun, role: str, variant: str | None, seed: int, frozen: FrozenTeacher, cache: TopKCache, seq: Split | None
) -> dict:
    cfg, data = run.cfg, run.data
    name = f"{role}-{variant}" if variant else role
    out = run.run_dir / f"{name}-seed{seed}"
    if run.resume and (out / "row.json").is_file():
        log(f"{name}-seed{seed}: finished before the interruption, kept")
        return json.loads((out / "row.json").read_text())
    torch.manual_seed(seed)
    model, _ = build_lm(cfg.student.model, data.vocab_size, data.block)
    train = run.students
    if role == "scratch":
        objective = LMSupervised(model)
    elif role == "seqkd":
        objective, train = LMSupervised(model), seq
    else:
        div = variant if role == "kd" else cfg.gkd.objective
        options = {"beta": cfg.kd.beta} if div == "jsd" else {"skew": cfg.kd.skew} if div in ("skl", "srkl") else {}
        objective = LMDistiller(
            model,
            frozen,
            div,
            T=cfg.kd.T,
            alpha=cfg.kd.alpha,
            source=cache,
            on_policy=cfg.gkd.lam if role == "gkd" else 0.0,
            prefix=cfg.gkd.prefix,
            options=options,
        )
    tc = _train_cfg(run, False)
    res = fit(objective, train, data.val, tc, seed=seed, out_dir=out, desc=f"{name}-seed{seed}", resume=run.resume)
    save_lm(model, cfg.student.model, out, run.hf_tokenizer)
    row = _row(run, model, role, variant, seed, res.train_seconds, res.steps, tc.batch_size)
    atomic_write_text(out / "row.json", json.dumps(row) + "\n")
    log(f"{name}-seed{seed}: test {row['test_bpt']:.4f} bits/token, {row['tokens_per_second']:,.0f} tokens/s")
    return row


def _row(
    run: TextRun, model: nn.Module, role: str, variant: str | None, seed: int, seconds: float, steps: int, batch: int
) -> dict:
    r = evaluate(model, run.data.test, run.cfg.student.train.eval_batch_size)
    tokens = steps * batch * run.data.block
    return {
        "role": role,
        "variant": variant,
        "seed": seed,
        "params": count_params(model),
        "test_bpt": bits_per_token(r.nll),
        "test_ppl": math.exp(r.nll),
        "test_token_acc": r.acc,
        "train_seconds": seconds,
        "steps": steps,
        "tokens_per_second": tokens / seconds if seconds > 0 else None,
    }


def _samples(run: TextRun, teacher: nn.Module, rows: list[dict]) -> dict[str, list[str]]:
    """Every model continues the same test prompts (seed 0 of each student), sampled with one fixed seed."""
    data, s = run.data, run.cfg.samples
    if not data.prompts or s.prompts == 0:
        return {}
    new = SMOKE["new_tokens"] if run.smoke else s.new_tokens
    models: dict[str, nn.Module] = {"teacher": teacher}
    first = run.cfg.seeds[0]
    for r in rows:
        if r["role"] != "teacher" and r["seed"] == first:
            name = f"{r['role']}-{r['variant']}" if r["variant"] else r["role"]
            m, _ = build_lm(run.cfg.student.model, data.vocab_size, data.block)
            m.load_state_dict(safe_load(run.run_dir / f"{name}-seed{first}" / "weights.pt")["state_dict"])
            models[name] = m
    out: dict[str, list[str]] = {"prompt": [data.tokenizer.decode(p) for p in data.prompts]}
    for name, m in models.items():
        texts = []
        for p in data.prompts:
            g = torch.Generator().manual_seed(0)
            seq = sample(m, torch.tensor([p]), new, g, temperature=0.8, context=data.block)
            texts.append(data.tokenizer.decode(seq[0, len(p) :].tolist()))
        out[name] = texts
    return out
