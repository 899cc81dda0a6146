"""The config of a sentence-encoder run (``task: encoder``): validated like every other config (unknown keys are
errors with a suggestion, dotted overrides on the command line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from kdistill.config import PlainRunConfig, StrictModel, TrainConfig, step_train, validate_file
from kdistill.encoder.models import PACKAGE_PATH
from kdistill.encoder.sentences import Sentences, read_sentences

_SOURCE = (
    "stdlib: docstrings of the Python standard library; packages: docstrings of the installed packages (paths: "
    "their names, empty for all); files: text files or directories in paths"
)


class TextSource(StrictModel):
    """Where sentences come from (the corpus, or a transfer set)."""

    source: Literal["stdlib", "files", "packages"] = Field("stdlib", description=_SOURCE)
    paths: list[str] = Field(default_factory=list, description="files or directories; package names (packages)")
    pattern: str = "*"
    separator: str | None = Field(None, description="a regular expression between documents inside a file")


class TransferSource(TextSource):
    """More sentences for training only (a transfer set: the teacher labels any text)."""

    source: Literal["stdlib", "files", "packages"] = Field(description=_SOURCE)  # named, not defaulted
    limit: int | None = Field(None, ge=1, description="sentences kept, in hash order (null: all)")


class AugmentConfig(StrictModel):
    """Variants of the corpus' training sentences, labelled by the teacher, for training only."""

    views: int = Field(4, ge=1, description="variants per training sentence")
    replace: float = Field(0.15, ge=0, le=1, description="chance a kept word is replaced by a corpus word")
    drop: float = Field(0.1, ge=0, lt=1, description="chance a word is dropped")
    seed: int = 0


class SentenceConfig(TextSource):
    transfer: TransferSource | None = Field(
        None,
        description="more sentences for the training split only (validation and test stay this corpus'); a "
        "sentence equal to one of this corpus up to case and punctuation is left out",
    )
    augment: AugmentConfig | None = Field(
        None, description="variants of each training sentence (words dropped or replaced), training only"
    )
    min_words: int = Field(4, ge=1)
    max_words: int | None = Field(64, ge=1, description="longer sentences are dropped (null keeps them)")
    val_fraction: float = Field(0.05, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    limit: int | None = Field(None, ge=2, description="training sentences kept (null: all)")
    max_length: int = Field(128, ge=4, description="tokens per sentence; longer ones are truncated and counted")

    def read(self) -> Sentences:
        """The sentences of every split as a run reads them: the corpus dealt to splits, then the transfer set
        and the augmented variants added to the training split."""
        return read_sentences(
            self.source,
            self.paths,
            self.pattern,
            self.separator,
            min_words=self.min_words,
            max_words=self.max_words,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            limit=self.limit,
            transfer=self.transfer.model_dump() if self.transfer is not None else None,
            augment=self.augment.model_dump() if self.augment is not None else None,
        )


class TeacherSpec(StrictModel):
    path: str = Field(PACKAGE_PATH, description=f"a transformers model directory, or {PACKAGE_PATH}")


class StudentSpec(StrictModel):
    """A student from the teacher's config (``layers``, ``hidden``, ``heads``, ``intermediate``, ``init``), from a
    config dict of any ``transformers`` encoder (``kwargs`` with ``model_type``; it reads the teacher's tokens) or
    from its own directory (``path``, with its own tokenizer)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="names its directories: letters, digits, _ . -")
    layers: int | None = Field(None, ge=1)
    hidden: int | None = Field(None, ge=8, description="null: the teacher's width")
    heads: int | None = Field(None, ge=1)
    intermediate: int | None = Field(
        None, ge=8, description="feed-forward width (null: the teacher's, scaled with the width)"
    )
    init: Literal["copy", "random"] = Field(
        "copy",
        description="copy: the teacher's embeddings (projected when narrower) and layers (same width; a smaller "
        "intermediate keeps each copied feed-forward block's strongest neurons)",
    )
    copy_layers: list[int] | None = Field(None, description="teacher layers copied (null: evenly spaced)")
    path: str | None = Field(None, description="a transformers encoder directory instead of a shrunk teacher")
    freeze: list[str] = Field(
        default_factory=list,
        description="submodules of the student kept as initialised, by dotted name (e.g. embeddings.word_embeddings, "
        "the copied or projected token embeddings: most of a small student's weights)",
    )
    kwargs: dict[str, Any] | None = Field(
        None, description="a transformers config dict (model_type: bert, distilbert, ...), randomly initialised"
    )
    train: dict[str, Any] = Field(
        default_factory=dict, description="this student's changes to the run's train section (e.g. {lr: 0.001})"
    )

    @model_validator(mode="after")
    def _one_way(self) -> StudentSpec:
        given = [k for k in ("layers", "path", "kwargs") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"student {self.name!r}: give exactly one of layers (a shrunk teacher), path (a directory) or kwargs "
                f"(a config dict); got {given or 'none'}"
            )
        return self


class DistillConfig(StrictModel):
    cosine: float = Field(1.0, ge=0, description="weight of 1 - cos(student, teacher) of the sentence embedding")
    mse: float = Field(0.0, ge=0, description="weight of the MSE of the sentence embeddings")
    hidden: list[tuple[str, str]] = Field(
        default_factory=list, description="(student layer, teacher layer) pairs by dotted name: token-state MSE"
    )
    hidden_weight: float = Field(1.0, ge=0)
    relations: float = Field(0.0, ge=0, description="weight of MiniLM's attention + value relation KL")
    relation_layers: tuple[str, str] | None = Field(
        None, description="(student, teacher) attention modules holding query/key/value (null: the last layers')"
    )
    relation_heads: int | None = Field(None, ge=1, description="relation heads (null: the teacher's heads)")
    similarity: float = Field(
        0.0,
        ge=0,
        description="weight of the KL between teacher's and student's softmax over cosine similarities to a bank of "
        "the teacher's training embeddings (CompRess/SEED): trains the order of each sentence's neighbours",
    )
    similarity_temperature: float = Field(0.05, gt=0, description="temperature of the similarity softmax")
    similarity_mse: float = Field(
        0.0,
        ge=0,
        description="weight of the squared difference of the student's and the teacher's cosine similarities to "
        "the bank's anchors: prices an embedding error by what it does to the sentence's similarities",
    )
    similarity_bank: int | None = Field(
        None,
        ge=2,
        description="training sentences in the bank (similarity, similarity_mse), drawn once with seed 0 (null: all)",
    )
    retokenize: bool = Field(
        False, description="a student with its own tokenizer: tokenize the sentences once per model (embeddings only)"
    )


class ScratchConfig(StrictModel):
    temperature: float = Field(0.05, gt=0, description="SimCSE's temperature")


class EvalConfig(StrictModel):
    queries: int = Field(500, ge=1, description="test sentences whose neighbours are compared")
    k: int = Field(10, ge=1, description="neighbours compared per query")
    latency_tokens: int | None = Field(None, ge=2, description="tokens per timed sentence (null: the test median)")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 32])
    repeats: int = Field(20, ge=1)
    onnx: bool = Field(True, description="export the first seed's kd students as ONNX and check them in onnxruntime")
    int8: bool = Field(
        False,
        description="also score and time an int8 copy (PyTorch's dynamic quantisation, one weight scale per output "
        "row; each layer's query, key and value Linears fused into one) of the teacher and of each timed student, "
        "named '<model> int8'",
    )
    int8_smooth: float | None = Field(
        None,
        ge=0,
        le=1,
        description="SmoothQuant's migration strength for those int8 copies, calibrated on the first "
        "int8_calibration training sentences (null: plain per-row int8; 0.85 kept 0.909 of all-MiniLM-L6-v2's "
        "neighbours against 0.797)",
    )
    int8_calibration: int = Field(
        512, ge=1, description="training sentences the int8 copies are calibrated on (smoothing, fused Linears)"
    )
    onnxruntime: bool = Field(
        False,
        description="also time the teacher and each timed student exported to ONNX and run by onnxruntime "
        "('<model> onnx'), and score and time their onnxruntime int8 copies ('<model> onnx-int8', SmoothQuant first "
        "with int8_smooth); needs the onnx extra. Their speed-ups count against the float32 teacher in onnxruntime "
        "('teacher onnx'): the runtime speeds the teacher up too",
    )


class EncoderExperimentConfig(PlainRunConfig):
    task: Literal["encoder"] = "encoder"
    name: str = "encoder"
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="where the teacher's embeddings are computed and the students trained and scored (auto = CUDA "
        "when available; bf16 autocast on CUDA); latency is always measured on the CPU, ONNX exported from it",
    )
    roles: list[Literal["init", "scratch", "kd"]] = Field(
        default_factory=lambda: ["init", "scratch", "kd"],
        description="init: the student as initialised; scratch: SimCSE without the teacher; kd: distilled",
    )
    sentences: SentenceConfig = Field(default_factory=SentenceConfig)
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    students: list[StudentSpec] = Field(default_factory=lambda: [StudentSpec(name="L3", layers=3)])
    train: TrainConfig = Field(default_factory=lambda: step_train(1000, 1e-3, 128))
    distill: DistillConfig = Field(default_factory=DistillConfig)
    scratch: ScratchConfig = Field(default_factory=ScratchConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def train_for(self, student: StudentSpec) -> TrainConfig:
        """The run's train section with the student's own changes."""
        return TrainConfig.model_validate({**self.train.model_dump(), **student.train})

    @model_validator(mode="after")
    def _student_train(self) -> EncoderExperimentConfig:
        for s in self.students:  # a bad key or value names the student, before any model is loaded
            try:
                self.train_for(s)
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(map(str, err["loc"]))
                raise ValueError(f"student {s.name!r}: train.{where}: {err['msg']} (in {s.train})") from None
        return self

    @field_validator("students")
    @classmethod
    def _names(cls, v: list[StudentSpec]) -> list[StudentSpec]:
        names = [s.name for s in v]
        if len(set(names)) != len(names) or not v:
            raise ValueError(f"students need distinct names (got {names})")
        return v


def load_encoder_config(path: str | Path | None, overrides: list[str] | None = None) -> EncoderExperimentConfig:
    return validate_file(EncoderExperimentConfig, path, overrides)
