"""Roles as plug-ins: what ``kdistill run`` trains for each seed, behind one registry.

A role is a :class:`Role` subclass decorated with :func:`register_role`. Its class attributes say how it
is configured and shown (its config ``section``, a ``label`` and ``color`` for reports, its ``order`` in
tables); :meth:`Role.run` trains one seed of it with :func:`kdistill.experiment.train.train_model` and
returns its summary rows. Registering a role declares its name and section to the config
(:func:`kdistill.config.declare_role`), so ``roles: [my_role]`` and ``my_role: {...}`` validate like any
other key. Adding a role therefore touches its file, its section (in that file) and a YAML::

    class MySection(StrictModel):
        T: float = 2.0

    @register_role
    class MyRole(Role):
        name, section, label = "my_role", MySection, "my student"

        def run(self, ctx, seed):
            cfg = ctx.cfg
            return [train_model(ctx, role=self.name, seed=seed, name=f"my_role-seed{seed}",
                                spec=cfg.student.model, train=cfg.student.train, split=ctx.data.student_labelled,
                                objective=Supervised)]
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel

from kdistill.config import ExperimentConfig, declare_role, forget_role
from kdistill.experiment.checks import ModelUse, check_models
from kdistill.experiment.context import RunContext

SEED_STRIDE = 1000


def sub_seed(seed: int, k: int) -> int:
    """Seed of the ``k``-th model of a role (peer, generation, assistant); ``k = 0`` is the run's seed.

    So peer 0, generation 0 and a chain's student start exactly like the scratch and kd students of the same
    seed (paired comparisons)."""
    return seed + SEED_STRIDE * k


class Role:
    """One kind of model a run trains for each seed (see the module docstring)."""

    name: ClassVar[str] = ""
    section: ClassVar[type[BaseModel] | None] = None  # its config section (``cfg.section(name)``)
    section_default: ClassVar[bool] = False  # absent section: its defaults (True) or None (False)
    example: ClassVar[str | None] = None  # a required section: an example for the error when it is missing
    label: ClassVar[str] = ""  # how reports name it ("KD student"); default: its name
    color: ClassVar[str] = "gray"  # its colour in figures
    order: ClassVar[int] = 100  # its place in summary tables (the teacher is first)
    why: ClassVar[str] = ""  # what passes between its models (for the error when their classes disagree)

    def models(self, cfg: ExperimentConfig) -> list[ModelUse]:
        """Models it builds besides the kd student's, probed before any training (:meth:`check`)."""
        return []

    def check(self, ctx: RunContext, probed: dict) -> None:
        """Fail before any training when the role cannot work with this config and data."""
        uses = self.models(ctx.cfg)
        if uses:
            check_models(self.name, uses, self.why, ctx.data, probed)

    def rows_per_seed(self, cfg: ExperimentConfig) -> int:
        """Summary rows it adds per seed."""
        return 1

    def describe(self, cfg: ExperimentConfig, variant: str | None = None) -> str | None:
        """One line on what it (or one of its rows' variants) is, for summaries; None: nothing to add."""
        return None

    def prepare(self, ctx: RunContext) -> None:
        """Work that every seed of the role shares and that other processes can read back (the teacher's outputs
        on the transfer set), done ahead: ``--jobs`` runs it in the parent process while the workers train their
        first roles, instead of in one worker while the others wait for it. Default: nothing."""

    def run(self, ctx: RunContext, seed: int) -> list[dict]:
        """Train one seed of the role; its summary rows."""
        raise NotImplementedError

    def info(self, cfg: ExperimentConfig, variants: list[str]) -> dict[str, Any]:
        """What the summary says about the role (label, colour, descriptions): written into ``summary.json``
        when the role runs, so that reports never need the role's code."""
        out: dict[str, Any] = {"label": self.label or self.name, "color": self.color, "order": self.order}
        if (text := self.describe(cfg)) is not None:
            out["description"] = text
        if variants:
            out["variants"] = {v: self.describe(cfg, v) for v in variants}
        return out


ROLES: dict[str, Role] = {}


def register_role(cls: type[Role]) -> type[Role]:
    """Class decorator: make ``cls`` the role ``cls.name`` (and declare its config section)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name; set the class attribute `name`")
    declare_role(cls.name, cls.section, default=cls.section_default, example=cls.example)
    ROLES[cls.name] = cls()
    return cls


def unregister_role(name: str) -> None:
    """Undo :func:`register_role` (tests that register a role of their own)."""
    ROLES.pop(name, None)
    forget_role(name)


def loss_settings(cfg: ExperimentConfig, section: Any) -> tuple[float, float]:
    """``(T, alpha)`` of a role: its section's, where given, else ``kd``'s."""
    T = getattr(section, "T", None)
    alpha = getattr(section, "alpha", None)
    return (cfg.kd.T if T is None else T), (cfg.kd.alpha if alpha is None else alpha)


def spec_text(spec: Any) -> str:
    """A model spec as Markdown: `cnn` (channels=[16, 32])."""
    kw = ", ".join(f"{k}={v}" for k, v in (spec.kwargs or {}).items())
    return f"`{spec.arch}`" + (f" ({kw})" if kw else "")
