"""Property tests: whatever a user types as overrides or YAML, the config loader returns a config or raises ConfigError,
and the CLI either runs or prints one `kdistill: error:` line with exit code 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kdistill.cli as cli
from kdistill.config import ConfigError, load_config

KEYS = [
    "seeds",
    "threads",
    "name",
    "kd.T",
    "kd.alpha",
    "kd.transfer",
    "kd.cache.views",
    "data.name",
    "data.val_size",
    "data.labelled",
    "student.train.epochs",
    "student.train.lr",
    "student.train.augment.shift",
    "student.train.augment.mixup",
    "teacher.model.kwargs",
    "roles",
    "terms",
    "kd",
]
VALUES = st.one_of(
    st.sampled_from(["", "0", "-1", "1e12", "nan", "inf", "[0, 1]", "[", "{a: 1}", "{", "null", "true", "x:y", "'q"]),
    st.text(max_size=12),
    st.integers(-5, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)
KEY = st.one_of(st.sampled_from(KEYS), st.text(max_size=15), st.sampled_from(KEYS).map(lambda k: k + ".x"))
OVERRIDE = st.one_of(st.tuples(KEY, VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"), st.text(max_size=20))

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.lists(OVERRIDE, max_size=4))
def test_any_override_is_a_config_or_a_config_error(overrides: list[str]) -> None:
    try:
        load_config(None, overrides)
    except ConfigError as e:
        assert str(e)


@FUZZ
@given(st.text(max_size=200))
def test_any_yaml_text_is_a_config_or_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path, [])
    except ConfigError as e:
        assert str(e)


@FUZZ
@given(st.lists(OVERRIDE, max_size=3), st.sampled_from(["{}\n", "kd: {T: 2}\n", "kd: [\n", "- a\n", "seeds: []\n"]))
def test_the_cli_runs_or_prints_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, overrides: list[str], yaml_text: str
) -> None:
    monkeypatch.setattr(cli, "run_experiment", lambda cfg, **kw: {})  # a valid config "works" without training
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    try:
        rc = cli.main(["run", str(path), *overrides])
    except SystemExit as e:  # argparse's own usage errors: exit 2 with a usage line, no traceback
        rc = e.code
    err = capsys.readouterr().err
    assert rc in (0, 2), err
    if rc == 2:
        assert "Traceback" not in err and ("kdistill: error:" in err or "usage:" in err)
