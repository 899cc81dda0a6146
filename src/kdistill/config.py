"""Experiment config: plain YAML (``yaml.safe_load``) validated into typed pydantic models.

Unknown keys and wrong types are errors that name the dotted key and suggest the closest valid one.
Defaults live here, next to the fields they configure. Command-line overrides use dotted keys:
``kdistill run CONFIG kd.T=8 student.train.epochs=3``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from kdistill.data import SOURCES
from kdistill.suggest import suggest_key
from kdistill.terms import TermError, check_options, layer_pairs


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and how to fix it."""


class StrictModel(BaseModel):
    """Base of every config section (roles' own sections too): unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(StrictModel):
    """A built-in (``mlp``, ``cnn``) or a user factory ``package.module:factory``, with its kwargs."""

    arch: str = "mlp"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class AugmentConfig(StrictModel):
    """Random augmentation on batched tensors. Off by default: Fashion-MNIST needs none to train."""

    shift: int = Field(0, ge=0, description="random translation by up to this many pixels")
    flip: bool = False
    # Mixing two images leaves no single label: kdistill marks mixed rows unlabelled, so mixing is for
    # function matching (the teacher labels the mixed image; Beyer et al. 2022), checked by ExperimentConfig.
    mixup: float = Field(0.0, ge=0, description="Beta(a, a) parameter of mixup (0 = off); KD with kd.alpha=1 only")
    cutmix: float = Field(0.0, ge=0, description="Beta(a, a) parameter of cutmix (0 = off); KD with kd.alpha=1 only")

    def key(self) -> dict[str, Any]:
        """The augmentation for keys: mixing, added later, is left out when off (earlier keys stay valid)."""
        d = self.model_dump(mode="json")
        for name in ("mixup", "cutmix"):
            if not d[name]:
                del d[name]
        return d


def _mixes(cfg: AugmentConfig) -> bool:
    return cfg.mixup > 0 or cfg.cutmix > 0


class TrainConfig(StrictModel):
    epochs: int = Field(10, ge=1)
    steps: int | None = Field(
        None,
        ge=1,
        description="total optimizer steps; overrides epochs, so that students trained on sets of "
        "different sizes (labelled subset vs transfer set) get the same budget",
    )
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "onecycle", "constant", "step"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    step_size: int = Field(10, ge=1, description="epochs between x0.1 decays for schedule=step")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    eval_batch_size: int = Field(
        128, ge=1, description="rows per evaluation batch (see kdistill.data.loader.INFERENCE_BATCH)"
    )
    validations: int | None = Field(
        None,
        ge=1,
        description="validate (and so choose the kept epoch) at most this many times, at evenly spaced epoch ends "
        "and the last; null: after every epoch. Gives students of one step budget the same number of picks when "
        "their epochs differ in length (a 2,000-image student runs ~860 epochs, a 55,000-image one 30)",
    )
    select: Literal["acc", "nll", "last"] = Field(
        "acc",
        description="the epoch kept: best validation accuracy, lowest validation NLL (language models, regression), "
        "or the last (a student with a label budget must not pick its epoch on more labels than it has)",
    )
    precision: Literal["float32", "bf16"] = Field(
        "float32",
        description="bf16: forward passes under bf16 autocast where the hardware has bf16 kernels (CUDA, "
        "AVX512-BF16/AMX CPUs; elsewhere float32, said in the log and the row); weights and optimizer stay float32",
    )
    memory_format: Literal["contiguous", "channels_last"] = Field(
        "contiguous",
        description="channels_last: conv weights stored NHWC, which oneDNN's CPU convolutions run faster (same "
        "arithmetic, other rounding)",
    )
    ema: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="decay of an exponential moving average of the weights (0.999: about the last 1,000 steps); "
        "validation, the kept epoch and the saved model use the averaged weights. null: the weights as trained",
    )
    batching: Literal["random", "by_length"] = Field(
        "random",
        description="by_length: rows of similar length (sentences) in one batch, batches in random order; each "
        "batch then carries little padding (needs a split with lengths: encoder runs)",
    )

    def key(self) -> dict[str, Any]:
        """The recipe as a dict for keys and fingerprints. Fields added after keys were first written are left
        out at their defaults, so that earlier teachers and checkpoints keep their keys."""
        d = self.model_dump(mode="json")
        d["augment"] = self.augment.key()
        defaults = (
            ("select", "acc"),
            ("precision", "float32"),
            ("memory_format", "contiguous"),
            ("validations", None),
            ("batching", "random"),
            ("ema", None),
        )
        for name, default in defaults:
            if d[name] == default:
                del d[name]
        return d


class PlainRunConfig(StrictModel):
    """What every ``task:`` config (text, encoder) has besides its own sections: a name, seeds, threads and where
    its run directory goes."""

    name: str = "run"
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0])
    threads: int | None = Field(None, ge=1)
    output_dir: str = "runs"

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        return check_seeds(v)


def step_train(steps: int, lr: float, eval_batch_size: int = 64) -> TrainConfig:
    """A step-budgeted AdamW recipe (cosine schedule, batch 32, weight decay 0.01) selected on validation NLL:
    the defaults of the language-model and sentence-encoder configs."""
    return TrainConfig(
        steps=steps,
        batch_size=32,
        optimizer="adamw",
        lr=lr,
        weight_decay=0.01,
        schedule="cosine",
        eval_batch_size=eval_batch_size,
        select="nll",
    )


class FolderOptions(StrictModel):
    """``data.folder``: an image folder tree ``train/<class>/*`` (and optionally ``val/``, ``test/``)."""

    size: int | tuple[int, int] | None = Field(
        None, description="[height, width] (or one side) to bring every image to; null = all images share a size"
    )
    fit: Literal["resize", "centre_crop"] = Field(
        "resize", description="resize: stretch to size; centre_crop: scale to cover size, cut the middle"
    )
    mode: Literal["auto", "grey", "rgb"] = Field("auto", description="auto: grey when every image is grey")
    on_error: Literal["error", "skip"] = Field(
        "error", description="a file Pillow cannot decode: stop (naming it), or skip it (counted and listed)"
    )
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="without test/: this share of each class's training images is the test split"
    )
    classes: list[str] | None = Field(
        None, description="the class folders in class-index order (e.g. a pretrained teacher's); null = sorted names"
    )

    @field_validator("size")
    @classmethod
    def _positive(cls, v: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
        sides = [v] if isinstance(v, int) else list(v or [])
        if any(s < 1 for s in sides):
            raise ValueError(f"image size {v} must be positive: [height, width] or one side")
        return v


ArrayKey = Literal["x_train", "y_train", "x_test", "y_test", "x_val", "y_val"]


class ArraysOptions(StrictModel):
    """``data.arrays``: a ``.npz`` (or ``.npy`` files) with ``x_train``, ``y_train``, ``x_test``, ``y_test``."""

    file: str | None = Field(None, description="the .npz (or .npy) in data.root; null = the only .npz there")
    keys: dict[ArrayKey, str] = Field(default_factory=dict, description="array names, e.g. {x_train: images}")
    class_names: list[str] | None = Field(None, description="null = the classes are numbered")
    layout: Literal["auto", "nchw", "nhwc"] = Field(
        "auto", description="of 4-D image arrays; auto: channels last when the last axis has 1, 3 or 4 entries"
    )


class IdxOptions(StrictModel):
    """``data.idx``: the four IDX files of an MNIST-style dataset."""

    files: dict[Literal["train_images", "train_labels", "test_images", "test_labels"], str] = Field(
        default_factory=dict, description="file names in data.root (.gz or not); default the MNIST names"
    )
    class_names: list[str] | None = Field(None, description="null = the classes are numbered")


class CifarOptions(StrictModel):
    """``data.cifar``: CIFAR-10 / CIFAR-100 python batches."""

    labels: Literal["fine", "coarse"] = Field("fine", description="CIFAR-100: 100 fine or 20 coarse classes")


class FactoryOptions(StrictModel):
    """``data.factory``: a function of yours that returns Datasets."""

    function: str = Field(description="package.module:function returning (train, test[, class_names]) Datasets")
    kwargs: dict[str, Any] = Field(default_factory=dict)


class DataConfig(StrictModel):
    name: str = Field("fashion_mnist", description="a data source of kdistill.data.SOURCES")
    root: str | None = Field(None, description="directory with the dataset files (searched first)")
    download: bool = True
    val_size: int | float = Field(
        5000, gt=0, description="validation images carved from train: a count, or a fraction below 1 (e.g. 0.1)"
    )
    labelled: int | None = Field(None, ge=1, description="keep labels for only this many (stratified) training images")
    split_seed: int = 0
    memory_budget_mb: float = Field(
        2048.0, gt=0, description="inputs larger than this as float32 are read from disk a batch at a time"
    )
    prepare_dir: str | None = Field(
        None, description="where decoded / extracted data is kept; null = <output_dir>/_prepared"
    )
    synthetic: dict[str, Any] = Field(default_factory=dict)
    # The sources' own sections (null when not used); only the chosen source's may be given.
    folder: FolderOptions | None = None
    arrays: ArraysOptions | None = None
    idx: IdxOptions | None = None
    cifar: CifarOptions | None = None
    factory: FactoryOptions | None = None

    @field_validator("name")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v not in SOURCES:
            raise ValueError(f"unknown data source {v!r}; choose {', '.join(SOURCES)}")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        for other in SOURCE_SECTIONS:
            if other != self.name and getattr(self, other):
                raise ValueError(
                    f"data.{other} is set but data.name is {self.name}: it would be ignored; set data.name={other} "
                    f"or remove data.{other}"
                )
        if self.name == "factory" and self.factory is None:
            raise ValueError("data.name=factory needs data.factory: {function: 'package.module:function'}")
        return self

    def options(self) -> dict[str, Any]:
        """The chosen source's section as plain data (what the source reads)."""
        section = getattr(self, self.name, None)
        if isinstance(section, BaseModel):
            return section.model_dump(mode="json")
        return dict(section or {})

    def load_kwargs(self, output_dir: str | Path) -> dict[str, Any]:
        """Keyword arguments of :func:`kdistill.data.load_data` for this section (prepared files default to
        ``<output_dir>/_prepared``)."""
        return {
            "root": self.root,
            "download": self.download,
            "val_size": self.val_size,
            "labelled": self.labelled,
            "split_seed": self.split_seed,
            "options": self.options(),
            "memory_budget_mb": self.memory_budget_mb,
            "cache_dir": self.prepare_dir or Path(output_dir) / "_prepared",
        }

    def content_key(self) -> dict[str, Any]:
        """What decides the data's content: without where it is read from and how it is held."""
        d = self.model_dump(mode="json")
        for k in ("root", "download", "labelled", "memory_budget_mb", "prepare_dir"):
            d.pop(k, None)
        for k in SOURCE_SECTIONS:
            if d.get(k) is None:
                d.pop(k, None)
        return d


SOURCE_SECTIONS = ("synthetic", "folder", "arrays", "idx", "cifar", "factory")


class TTAConfig(StrictModel):
    """Test-time augmentation of a teacher: its logits averaged over shifted copies of each image."""

    shift: int = Field(1, ge=1, description="pixels each view is shifted by")
    pattern: Literal["plus", "grid"] = Field(
        "plus", description="plus: the image and its 4 shifts (5 views); grid: all 9 offsets in {-shift, 0, shift}^2"
    )
    flip: bool = Field(
        False, description="also each view's mirror image (twice the views): for a teacher trained with flips"
    )


class TeacherConfig(StrictModel):
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(arch="cnn"))
    checkpoint: str | None = Field(
        None, description="load these weights instead of training; null trains (or reuses) one"
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    tta: TTAConfig | None = Field(
        None,
        description="answer with the mean logits over shifted views (test row, soft targets, latency); the "
        "weights are trained and cached without it",
    )


class StudentConfig(StrictModel):
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(arch="mlp", kwargs={"hidden": [300]}))
    train: TrainConfig = Field(default_factory=TrainConfig)


class CacheConfig(StrictModel):
    """Where the kd student's teacher outputs come from.

    ``auto`` computes them once: per sample without augmentation; with augmentation, for ``views`` fixed
    augmented views per sample, which the student is then shown (one per epoch, chosen by seed), so
    every cached row belongs to the exact input the student sees. ``online`` runs the teacher on every
    training batch instead (any augmentation, no cache).
    """

    mode: Literal["auto", "online"] = "auto"
    views: int = Field(8, ge=1, description="augmented views per sample stored when augmentation is on")
    topk: int | None = Field(
        None, ge=1, description="store only the k largest teacher probabilities (at kd.T) per view; null = all"
    )
    dir: str | None = Field(None, description="where view caches live; null = <output_dir>/_teacher_cache")


class KDConfig(StrictModel):
    T: float = Field(4.0, gt=0, description="softmax temperature of the soft targets")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the soft-target term")
    transfer: Literal["labelled", "all"] = Field(
        "labelled",
        description="inputs that get soft targets: the labelled set, or every training image "
        "(labels outside data.labelled are removed)",
    )
    exclude_classes: list[int | str] = Field(
        default_factory=list,
        description="classes (numbers or names) left out of every student's training set and of the KD "
        "transfer set (Hinton's omitted-3 experiment); the teacher still knows them",
    )
    bias_shift: float | None = Field(
        None, description="also report a fixed shift added to the left-out classes' logits (Hinton used 3.5)"
    )
    cache: CacheConfig = Field(default_factory=CacheConfig)
    teacher_precision: Literal["auto", "float32"] = Field(
        "auto",
        description="teacher forward for soft targets (online, and building a view cache): auto = channels_last "
        "+ bf16 autocast where the hardware has bf16 kernels (CUDA, AVX512-BF16/AMX CPUs), else float32",
    )


class TermConfig(StrictModel):
    """One extra distillation term of the ``kd`` student (feature, relation, contrastive, DKD, DIST).

    ``layers`` is a list of ``[student_layer, teacher_layer]`` pairs (dotted module names, ``logits`` for
    the output; ``kdistill layers`` lists them); several pairs distill several layers at once, each
    pair with its own adapter, and their losses are summed. Logit methods need no ``layers``.
    """

    method: str
    weight: float = Field(1.0, ge=0, description="0 switches the term off (it is then not computed)")
    warmup_epochs: float = Field(0.0, ge=0, description="ramp the weight linearly from 0 over this many epochs")
    layers: list[tuple[str, str]] | None = None
    pool: Literal["none", "avg"] = Field(
        "none", description="avg: average-pool feature maps where shapes need it (map vs vector, sizes differ)"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="the method's own options")

    @model_validator(mode="after")
    def _known_method(self) -> TermConfig:
        try:
            check_options(self.method, self.options)
            layer_pairs(self.method, self.layers)
        except TermError as e:
            raise ValueError(str(e)) from None
        return self


DEFAULT_ROLES = ["scratch", "kd", "label_smoothing"]


def check_seeds(v: list[int]) -> list[int]:
    """At least one seed, none twice (every config's ``seeds``)."""
    if not v:
        raise ValueError("give at least one seed")
    if len(set(v)) != len(v):
        raise ValueError(f"seeds must be distinct, got {v}")
    return v


class ExperimentConfig(StrictModel):
    """The settings every run shares. The roles' own sections (``dml:``, ``born_again:``, ...) are added
    by :func:`declare_role`; :func:`config_schema` is this class with them, and what :func:`load_config`
    validates against."""

    name: str = "experiment"
    description: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0])
    threads: int | None = Field(None, ge=1, description="torch CPU threads; null = all cores")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = CUDA when available; bf16 autocast is used on CUDA"
    )
    output_dir: str = "runs"
    teacher_cache_dir: str | None = Field(
        None, description="where trained teachers are kept for reuse; null = <output_dir>/_teachers"
    )
    roles: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ROLES),
        description="students to train (see `kdistill.experiment.roles`); [] trains (or loads) the teacher only",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    kd: KDConfig = Field(default_factory=KDConfig)
    terms: list[TermConfig] = Field(
        default_factory=list, description="extra terms of the kd student's loss, added to kd (T, alpha)"
    )

    @field_validator("seeds")
    @classmethod
    def _seeds_nonempty(cls, v: list[int]) -> list[int]:
        return check_seeds(v)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError(f"name {v!r} must be a plain directory name (no '/', not starting with '.')")
        return v

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, v: list[str]) -> list[str]:
        for role in v:
            if role not in _ROLES:
                close = difflib.get_close_matches(role, list(_ROLES), n=1, cutoff=0.5)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown role {role!r}{hint} (roles: {', '.join(_ROLES)})")
        return v

    @model_validator(mode="after")
    def _transfer_needs_labelled(self) -> ExperimentConfig:
        if self.kd.transfer == "all" and self.data.labelled is None:
            raise ValueError(
                "kd.transfer='all' only makes sense with data.labelled set (the labelled part is then "
                "smaller than the transfer set); set data.labelled or kd.transfer='labelled'"
            )
        return self

    @model_validator(mode="after")
    def _mixing_is_function_matching(self) -> ExperimentConfig:
        if _mixes(self.teacher.train.augment):
            raise ValueError(
                "teacher.train.augment: mixup/cutmix mix two images into one that has no single label, and the "
                "teacher learns from labels; set them to 0 there (they are for the KD student's function matching)"
            )
        if _mixes(self.student.train.augment) and (self.roles != ["kd"] or self.kd.alpha != 1.0):
            raise ValueError(
                "student.train.augment: mixup/cutmix leave mixed images unlabelled, so only the teacher can label "
                f"them (function matching): they need roles: [kd] and kd.alpha: 1 (got roles {self.roles}, "
                f"kd.alpha {self.kd.alpha}); train the scratch student in a config without mixing"
            )
        return self

    @model_validator(mode="after")
    def _tta_gives_logits_only(self) -> ExperimentConfig:
        inner = [t.method for t in self.terms if any(tl != "logits" for _, tl in t.layers or [])]
        if self.teacher.tta is not None and inner:
            raise ValueError(
                f"teacher.tta averages the teacher's logits over views, but terms {inner} read its inner layers, "
                "which belong to one view; remove teacher.tta or those terms"
            )
        return self

    @model_validator(mode="after")
    def _required_sections(self) -> ExperimentConfig:
        for role in self.roles:
            decl = _ROLES[role]
            if decl.example is not None and self.section(role) is None:
                raise ValueError(f"role {role} needs a `{role}` section, e.g. {decl.example}")
        return self

    def section(self, role: str) -> Any:
        """The config section of ``role`` (``cfg.section("dml")``), or None when it has none or none is given."""
        return getattr(self, role, None) if role in _ROLES else None

    def train_configs(self) -> list[TrainConfig]:
        """Every training recipe in the config, role sections included (a smoke run shortens them all)."""
        found: list[TrainConfig] = []

        def walk(node: Any) -> None:
            if isinstance(node, TrainConfig):
                found.append(node)
            elif isinstance(node, BaseModel):
                for name in type(node).model_fields:
                    walk(getattr(node, name))
            elif isinstance(node, (list, tuple)):
                for item in node:
                    walk(item)

        walk(self)
        return found

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def teacher_key(self) -> str:
        """Identifies a teacher: its model, its training recipe and the data it is trained on."""
        # data.labelled is left out too: the teacher always trains on every training label.
        d = self.data.content_key()
        payload = {"model": self.teacher.model.model_dump(), "train": self.teacher.train.key(), "data": d}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- roles and their sections


@dataclass(frozen=True)
class RoleDecl:
    """What the config knows of a role: its name and its section's model (None: it has no section)."""

    name: str
    section: type[BaseModel] | None = None
    default: bool = False  # the section is filled with its defaults when absent (else it stays None)
    example: str | None = None  # a required section: what the error shows when it is missing


_ROLES: dict[str, RoleDecl] = {}
_schema: type[ExperimentConfig] | None = None


def declare_role(
    name: str, section: type[BaseModel] | None = None, *, default: bool = False, example: str | None = None
) -> None:
    """Make ``roles: [name]`` valid and add the top-level section ``name:`` validated by ``section``.

    Called by :func:`kdistill.experiment.roles.register_role`: a role's section lives in the role's own
    file. ``example`` marks the section as required by the role and is shown when it is missing.
    """
    global _schema
    if section is not None and name in ExperimentConfig.model_fields:
        raise ValueError(f"role {name!r}: its section would hide the config key {name!r}")
    _ROLES[name] = RoleDecl(name, section, default, example)
    _schema = None  # rebuilt with the new section on next use


def forget_role(name: str) -> None:
    """Undo :func:`declare_role` (tests that register a role of their own)."""
    global _schema
    _ROLES.pop(name, None)
    _schema = None


def role_names() -> list[str]:
    """Every declared role, in declaration order."""
    return list(_ROLES)


def config_schema() -> type[ExperimentConfig]:
    """:class:`ExperimentConfig` with one field per declared role section, ``None`` (or the section's
    defaults) when absent. Built with pydantic's ``create_model``, so its errors name keys as any other."""
    global _schema
    if _schema is None:
        fields: dict[str, Any] = {}
        for d in _ROLES.values():
            if d.section is None:
                continue
            if d.default:
                fields[d.name] = (d.section, Field(default_factory=d.section))
            else:
                fields[d.name] = (d.section | None, None)
        _schema = create_model("ExperimentConfig", __base__=ExperimentConfig, **fields)
    return _schema


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"kd": {"T": 4}}`` -> ``{"kd.T": 4}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(old: dict[str, Any], new: dict[str, Any], where: str, ignore: tuple[str, ...] = ()) -> list[str]:
    """Readable differences between two plain config dicts: ``"kd.T: 4.0 <where>, 8.0 now"``."""
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith(ignore))
    return [f"{k}: {a.get(k, '<absent>')!r} {where}, {b.get(k, '<absent>')!r} now" for k in keys]


# ----------------------------------------------------------------------------- errors


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid field names of the (sub)model that ``loc`` (without its last part) points into."""
    cls: Any = model
    for part in loc[:-1]:
        cls = _strip_none(cls)
        if isinstance(part, int):  # an item of a list field, e.g. terms.0.weight
            args = typing.get_args(cls)
            cls = args[0] if args else None
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return []
        cls = cls.model_fields[part].annotation
    cls = _strip_none(cls)
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return list(cls.model_fields)
    return []


def _strip_none(tp: Any) -> Any:
    """``X | None`` -> ``X`` (optional sections and lists), anything else unchanged."""
    args = typing.get_args(tp)
    if type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None))
    return tp


def format_validation_error(err: ValidationError, source: str, schema: type[BaseModel] | None = None) -> str:
    """One line per error; an unknown key gets the valid keys at its place in ``schema`` (the image config's by
    default) and the closest of them."""
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            valid = _fields_at(schema or config_schema(), loc)
            close = suggest_key(str(loc[-1]), valid)
            hint = f"; did you mean '{'.'.join(str(p) for p in loc[:-1] + (close,))}'?" if close else ""
            lines.append(f"  {key}: unknown key{hint} (valid here: {', '.join(valid)})")
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  {key}: {e['msg']}{got_s}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- loading


def yaml_text(value: Any) -> str:
    """A value as YAML text that parses back to the same value (``'1'`` stays a string)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    lines = [ln for ln in text.splitlines() if ln != "..."]
    return "\n".join(lines).strip()


def split_assignment(
    text: str, what: str = "override", form: str = "dotted.key=value (e.g. kd.T=8)"
) -> tuple[str, str]:
    """``"kd.T=8"`` -> ``("kd.T", "8")``; a missing ``=`` or an empty key part is a :class:`ConfigError`."""
    if "=" not in text:
        raise ConfigError(f"{what} {text!r} is not of the form {form}")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"{what} {text!r}: empty key part")
    return key, raw


def parse_override(text: str) -> tuple[list[str], Any]:
    key, raw = split_assignment(text)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from e
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = json.loads(json.dumps(raw))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: '{'.'.join(path[: i + 1])}' is a value, not a section")
            node = nxt
        node[path[-1]] = value
    return raw


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: sections merge key by key, any other value (lists too) replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as plain data. ``base: other.yaml`` (relative to this file) is read first and this
    file's keys are merged over it, so a method config states only what differs from its scenario."""
    if not path.is_file():
        where = f" (the base of {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file {path} not found{where}")
    if path.resolve() in _chain:
        raise ConfigError(f"config {path}: `base` chain loops: {' -> '.join(map(str, (*_chain, path)))}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: `base` must be a file name relative to this config, got {base!r}")
    return _merge(read_yaml(path.parent / base, (*_chain, path.resolve())), raw)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config (and its ``base``), apply dotted overrides, validate. Raises :class:`ConfigError`."""
    return validate_file(config_schema(), path, overrides)


M = TypeVar("M", bound=BaseModel)


def validate_file(schema: type[M], path: str | Path | None, overrides: list[str] | None = None) -> M:
    """``schema`` validated from a YAML file (or the defaults) with dotted overrides; errors name the file."""
    raw: Any = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        raw = read_yaml(Path(path))
    if overrides:
        raw = apply_overrides(raw, overrides)
        source += " + overrides " + " ".join(overrides)
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, schema)) from None


def task_of(path: str | Path | None, overrides: list[str] | None = None) -> str | None:
    """The ``task`` a config (with its overrides) asks for: ``text``, ``encoder``, ``regression``, or None (image
    classification)."""
    raw: Any = read_yaml(Path(path)) if path is not None else {}
    if overrides:
        raw = apply_overrides(raw, overrides)
    return raw.get("task") if isinstance(raw, dict) else None
