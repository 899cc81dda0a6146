"""Roles are plug-ins: a new role is its class, its config section and a YAML, nothing else.

The role below is registered here, in the test, exactly as a role file of ``kdistill/experiment/roles/`` is
(its section is a field of its own file), and then run, resumed and reported like the built-in ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import Field

from kdistill.cli import main
from kdistill.config import ConfigError, ExperimentConfig, StrictModel, load_config, role_names
from kdistill.distiller import Supervised
from kdistill.experiment.context import RunContext
from kdistill.experiment.roles import ROLES, Role, register_role, sub_seed, unregister_role
from kdistill.experiment.run import run_experiment
from kdistill.experiment.train import train_model
from tests.helpers import synthetic_overrides


class EchoConfig(StrictModel):  # 1. the role's config section
    smoothing: float = Field(0.2, ge=0, lt=1)
    copies: int = Field(1, ge=1)


class Echo(Role):  # 2. the role: label-smoothed students, several initialisations per seed
    name, section, label, color = "echo", EchoConfig, "echo student", "tab:olive"

    def rows_per_seed(self, cfg: ExperimentConfig) -> int:
        return cfg.section("echo").copies

    def describe(self, cfg: ExperimentConfig, variant: str | None = None) -> str:
        return f"{'copy ' + variant if variant else 'students'} smoothed by {cfg.section('echo').smoothing:g}"

    def run(self, ctx: RunContext, seed: int) -> list[dict]:
        cfg, section = ctx.cfg, ctx.cfg.section("echo")
        return [
            train_model(
                ctx,
                role=self.name,
                seed=seed,
                name=f"echo-seed{seed}-copy{k}",
                spec=cfg.student.model,
                train=cfg.student.train,
                split=ctx.data.student_labelled,
                objective=lambda m: Supervised(m, smoothing=section.smoothing),
                model_seed=sub_seed(seed, k),
                variant=f"copy{k}",
            )
            for k in range(section.copies)
        ]


@pytest.fixture
def echo() -> Iterator[type[Role]]:
    register_role(Echo)
    try:
        yield Echo
    finally:
        unregister_role("echo")


def _yaml(tmp_path: Path, section: str) -> Path:  # 3. a config that uses it
    path = tmp_path / "echo.yaml"
    path.write_text(f"name: echo_run\nroles: [scratch, echo]\necho: {section}\n")
    return path


def test_a_new_role_runs_resumes_and_reports_like_a_built_in(echo: type[Role], tmp_path: Path) -> None:
    config = _yaml(tmp_path, "{smoothing: 0.3, copies: 2}")
    overrides = [*synthetic_overrides(tmp_path, "echo_run"), "seeds=[0]"]
    assert main(["run", str(config), *overrides]) == 0
    run = tmp_path / "echo_run"
    summary = json.loads((run / "summary.json").read_text())
    rows = [r for r in summary["rows"] if r["role"] == "echo"]
    assert [r["variant"] for r in rows] == ["copy0", "copy1"] == [r["dir"].split("-")[-1] for r in rows]
    assert len(rows) == ROLES["echo"].rows_per_seed(load_config(config, overrides))
    assert all((run / r["dir"] / "weights.pt").is_file() and (run / r["dir"] / "row.json").is_file() for r in rows)
    assert list(summary["aggregate"]) == ["teacher", "scratch", "echo/copy0", "echo/copy1"]
    assert summary["roles"]["echo"]["description"] == "students smoothed by 0.3"
    assert summary["roles"]["echo"]["variants"]["copy1"] == "copy copy1 smoothed by 0.3"
    assert "- echo: students smoothed by 0.3." in (run / "summary.md").read_text()
    assert "echo student copy0" in (run / "report.html").read_text()
    # --resume keeps the finished copy and trains the other again, to the same numbers.
    (run / rows[1]["dir"] / "row.json").unlink()
    again = run_experiment(load_config(config, overrides), resume=True)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "train_seconds"} for r in rs]  # noqa: E731
    assert strip(again["rows"][1:]) == strip(summary["rows"][1:])  # the teacher: trained, then reused


def test_a_new_roles_section_is_validated_like_any_other(echo: type[Role], tmp_path: Path) -> None:
    assert "echo" in role_names()
    assert load_config(_yaml(tmp_path, "{}")).section("echo") == EchoConfig()
    assert load_config(None).section("echo") is None  # not given (a role then takes its defaults)
    with pytest.raises(ConfigError, match=r"echo.smothing: unknown key; did you mean 'echo.smoothing'"):
        load_config(_yaml(tmp_path, "{smothing: 0.3}"))
    with pytest.raises(ConfigError, match=r"echo.copies: Input should be greater than or equal to 1"):
        load_config(_yaml(tmp_path, "{copies: 0}"))
    with pytest.raises(ConfigError, match=r"unknown role 'ehco'; did you mean 'echo'\?"):
        load_config(None, ["roles=[ehco]"])


def test_an_unregistered_role_is_unknown_again(tmp_path: Path) -> None:
    register_role(Echo)
    unregister_role("echo")
    assert "echo" not in ROLES and "echo" not in role_names()
    with pytest.raises(ConfigError, match="unknown role 'echo'"):
        load_config(None, ["roles=[echo]"])
    with pytest.raises(ConfigError, match="echo: unknown key"):
        load_config(None, ["echo={copies: 2}"])
