"""The config of a language-model run (``task: text`` at the top of the YAML); validated like the image
configs (unknown keys are errors with a suggestion, dotted overrides on the command line)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from kdistill.config import PlainRunConfig, StrictModel, TrainConfig, step_train, validate_file
from kdistill.losses.text import DIVERGENCES

TEXT_ROLES = ("scratch", "kd", "gkd", "seqkd")


def _known_names(values: list[str], known: Iterable[str], what: str) -> list[str]:
    bad = [v for v in values if v not in known]
    if bad:
        raise ValueError(f"unknown {what} {bad}; choose from {', '.join(known)}")
    return values


class CorpusConfig(StrictModel):
    source: Literal["stdlib", "files"] = Field(
        "stdlib", description="stdlib: the Python standard library's own .py files; files: text.corpus.paths"
    )
    paths: list[str] = Field(default_factory=list, description="files or directories (source: files)")
    pattern: str = Field("*", description="file names to read inside the directories of paths")
    separator: str | None = Field(
        None, description="a regular expression between documents inside one file (null: a file is a document)"
    )
    max_bytes: int | None = Field(None, ge=1, description="read files (sorted) until this many bytes; null = all")
    val_fraction: float = Field(0.05, gt=0, lt=0.5)
    test_fraction: float = Field(0.05, gt=0, lt=0.5)
    tokenizer: Literal["byte", "char", "model"] = Field(
        "byte",
        description="byte: UTF-8 bytes (257 ids); char: the training split's characters; model: the "
        "teacher's Hugging Face tokenizer",
    )
    block: int = Field(64, ge=2, description="tokens per training block (the context the models see)")


class LMSpec(StrictModel):
    """``gpt``: kdistill's TinyGPT (kwargs: layers, dim, heads, dropout); ``transformers``: a Hugging Face causal
    LM from ``path`` (a local directory) or from ``kwargs`` (a config dict with model_type); or a user factory
    ``package.module:function`` called with ``vocab_size``, ``context`` and kwargs."""

    arch: str = "gpt"
    path: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)


class TextTeacher(StrictModel):
    model: LMSpec = Field(default_factory=lambda: LMSpec(kwargs={"layers": 4, "dim": 128, "heads": 4}))
    checkpoint: str | None = Field(None, description="a teacher trained by kdistill (weights.pt); null trains one")
    finetune: bool = Field(
        False, description="a pretrained teacher (model.path): train it further on the corpus first (else as it is)"
    )
    train: TrainConfig = Field(default_factory=lambda: _lm_train(2000))


class TextStudent(StrictModel):
    model: LMSpec = Field(default_factory=lambda: LMSpec(kwargs={"layers": 1, "dim": 64, "heads": 2}))
    train: TrainConfig = Field(default_factory=lambda: _lm_train(600))


def _lm_train(steps: int) -> TrainConfig:
    return step_train(steps, 3e-3)


class TextKDConfig(StrictModel):
    objectives: list[str] = Field(
        default_factory=lambda: list(DIVERGENCES), description=f"one kd student each: {', '.join(DIVERGENCES)}"
    )
    T: float = Field(1.0, gt=0)
    alpha: float = Field(1.0, ge=0, le=1, description="weight of the divergence; the next-token CE gets 1 - alpha")
    beta: float = Field(0.5, ge=0, le=1, description="jsd: GKD's beta")
    skew: float = Field(0.1, ge=0, lt=1, description="skl / srkl: DistiLLM's skew")
    top_k: int = Field(32, ge=1, description="teacher probabilities cached per position (the rest share what is left)")
    transfer_blocks: int | None = Field(
        None,
        ge=1,
        description="every student (scratch too) trains on this many training blocks, a fixed random subset (the "
        "transfer set), the teacher on all; null = all",
    )

    @field_validator("objectives")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        return _known_names(v, DIVERGENCES, "objective(s)")


class GKDConfig(StrictModel):
    """The on-policy student (GKD): a share ``lam`` of its steps trains on its own samples."""

    objective: str = Field("jsd", description="the divergence on both kinds of step")
    lam: float = Field(0.5, ge=0, le=1, description="share of on-policy steps (GKD's lambda)")
    prefix: int = Field(16, ge=1, description="corpus tokens the student continues")


class SeqKDConfig(StrictModel):
    """Sequence-level KD (Kim & Rush 2016): the student trains on text the teacher wrote."""

    prefix: int = Field(16, ge=1, description="corpus tokens each teacher continuation starts from")
    temperature: float = Field(1.0, ge=0, description="sampling temperature of the teacher (0 = greedy)")
    blocks: int | None = Field(None, ge=1, description="teacher-written blocks (null: one per training block)")


class SamplesConfig(StrictModel):
    prompts: int = Field(3, ge=0, description="test documents whose first tokens every model continues")
    prompt_tokens: int = Field(24, ge=1)
    new_tokens: int = Field(64, ge=1)


class TextExperimentConfig(PlainRunConfig):
    task: Literal["text"] = "text"
    name: str = "text"
    roles: list[str] = Field(default_factory=lambda: ["scratch", "kd"])
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    teacher: TextTeacher = Field(default_factory=TextTeacher)
    student: TextStudent = Field(default_factory=TextStudent)
    kd: TextKDConfig = Field(default_factory=TextKDConfig)
    gkd: GKDConfig = Field(default_factory=GKDConfig)
    seqkd: SeqKDConfig = Field(default_factory=SeqKDConfig)
    samples: SamplesConfig = Field(default_factory=SamplesConfig)

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, v: list[str]) -> list[str]:
        return _known_names(v, TEXT_ROLES, "text role(s)")


def load_text_config(path: str | Path | None, overrides: list[str] | None = None) -> TextExperimentConfig:
    return validate_file(TextExperimentConfig, path, overrides)
