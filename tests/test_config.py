"""Config errors name the dotted key and how to fix it; overrides are YAML; to_yaml round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdistill.config import ConfigError, config_schema, load_config, parse_override


def _error(overrides: list[str] | None = None, path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


@pytest.mark.parametrize(
    "override, key, suggestion",
    [
        ("sedes=[1]", "sedes", "seeds"),
        ("kd.TT=3", "kd.TT", "kd.T"),
        ("student.trian.epochs=3", "student.trian", "student.train"),
        ("data.labeled=100", "data.labeled", "data.labelled"),
        ("student.train.augment.shfit=2", "student.train.augment.shfit", "student.train.augment.shift"),
        ("teacher.model.archh=cnn", "teacher.model.archh", "teacher.model.arch"),
        # what people mean: synonyms, another case, a prefix (the README's example is the first)
        ("kd.temperature=4", "kd.temperature", "kd.T"),
        ("kd.t=4", "kd.t", "kd.T"),
        ("kd.Alpha=0.5", "kd.Alpha", "kd.alpha"),
        ("student.train.learning_rate=0.1", "student.train.learning_rate", "student.train.lr"),
        ("student.train.epoch=3", "student.train.epoch", "student.train.epochs"),
        ("student.train.warmup=1", "student.train.warmup", "student.train.warmup_epochs"),
    ],
)
def test_unknown_key_is_named_with_suggestion(override: str, key: str, suggestion: str) -> None:
    msg = _error([override])
    assert f"{key}: unknown key" in msg
    assert f"did you mean '{suggestion}'?" in msg


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    msg = _error(["kd.zzzzzz=1"])
    assert "kd.zzzzzz: unknown key" in msg
    assert "did you mean" not in msg
    assert "valid here: T, alpha, transfer" in msg


def test_unknown_nested_key_in_yaml_file_names_file_and_key(tmp_path: Path) -> None:
    p = tmp_path / "exp.yaml"
    p.write_text("kd:\n  TT: 8\nstudent:\n  trian:\n    epochs: 3\n")
    msg = _error(path=p)
    assert str(p) in msg
    assert "kd.TT: unknown key; did you mean 'kd.T'?" in msg
    assert "student.trian: unknown key; did you mean 'student.train'?" in msg


@pytest.mark.parametrize(
    "override, key, got",
    [
        ("kd.T=hot", "kd.T", "'hot'"),
        ("student.train.epochs=abc", "student.train.epochs", "'abc'"),
        ("seeds=[0, x]", "seeds.1", "'x'"),
        ("kd.transfer=some", "kd.transfer", "'some'"),
        ("teacher.train.lr=-1", "teacher.train.lr", "-1"),
    ],
)
def test_wrong_type_or_value_names_the_key(override: str, key: str, got: str) -> None:
    msg = _error([override])
    line = next(ln for ln in msg.splitlines() if ln.strip().startswith(f"{key}:"))
    assert f"(got {got})" in line


def test_wrong_type_in_file_names_the_key(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("student:\n  train:\n    epochs: ten\n")
    msg = _error(path=p)
    assert "student.train.epochs:" in msg and "'ten'" in msg


def test_overrides_parse_yaml_values() -> None:
    cfg = load_config(None, ["kd.T=8", "seeds=[0,1]", "data.labelled=100", "kd.transfer=all", "name=my-run"])
    assert cfg.kd.T == 8.0 and isinstance(cfg.kd.T, float)
    assert cfg.seeds == [0, 1]
    assert cfg.data.labelled == 100 and cfg.kd.transfer == "all"
    assert cfg.name == "my-run"
    assert parse_override("kd.T=8") == (["kd", "T"], 8)
    assert parse_override("seeds=[0,1]") == (["seeds"], [0, 1])
    assert parse_override("data.root=") == (["data", "root"], None)
    assert parse_override("teacher.model.kwargs={channels: [8, 16]}") == (
        ["teacher", "model", "kwargs"],
        {"channels": [8, 16]},
    )


def test_overrides_apply_on_top_of_file(tmp_path: Path) -> None:
    p = tmp_path / "exp.yaml"
    p.write_text("kd:\n  T: 2\n  alpha: 0.9\nseeds: [3]\n")
    cfg = load_config(p, ["kd.T=8"])
    assert cfg.kd.T == 8.0 and cfg.kd.alpha == 0.9 and cfg.seeds == [3]


@pytest.mark.parametrize("bad", ["kd.T", "=3", "kd..T=3", "seeds=[0,"])
def test_malformed_override_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="override"):
        parse_override(bad)


def test_override_into_scalar_as_section_errors(tmp_path: Path) -> None:
    # The scalar is set in the file: the override path runs into a value.
    p = tmp_path / "exp.yaml"
    p.write_text("kd:\n  T: 4\n")
    msg = _error(["kd.T.x=1"], path=p)
    assert "'kd.T' is a value, not a section" in msg
    # The scalar is set by an earlier override.
    assert "'kd.T' is a value, not a section" in _error(["kd.T=8", "kd.T.x=1"])
    # The scalar is only a default: the validator rejects the mapping at kd.T.
    msg = _error(["kd.T.x=1"])
    assert "kd.T:" in msg and "valid number" in msg


def test_top_level_list_errors(tmp_path: Path) -> None:
    p = tmp_path / "list.yaml"
    p.write_text("- kd\n- T\n")
    msg = _error(path=p)
    assert str(p) in msg and "top level must be a mapping" in msg and "list" in msg


def test_invalid_yaml_errors(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("kd: [1, 2\n")
    assert "not valid YAML" in _error(path=p)


def test_missing_file_errors(tmp_path: Path) -> None:
    p = tmp_path / "nope.yaml"
    msg = _error(path=p)
    assert str(p) in msg and "not found" in msg


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    p = tmp_path / "empty.yaml"
    p.write_text("")
    assert load_config(p) == config_schema()()


def test_transfer_all_needs_labelled() -> None:
    msg = _error(["kd.transfer=all"])
    assert "kd.transfer='all'" in msg and "data.labelled" in msg
    assert load_config(None, ["kd.transfer=all", "data.labelled=50"]).kd.transfer == "all"


def test_to_yaml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "name=roundtrip",
            "seeds=[0, 4]",
            "kd.T=8",
            "kd.alpha=0.9",
            "kd.transfer=all",
            "data.name=synthetic",
            "data.labelled=40",
            "data.synthetic={n_train: 100, side: 6}",
            "teacher.model.kwargs={channels: [8, 16]}",
            "student.train.steps=50",
            "student.train.augment.shift=2",
            "roles=[kd]",
        ],
    )
    assert cfg != config_schema()()
    p = tmp_path / "cfg.yaml"
    p.write_text(cfg.to_yaml())
    again = load_config(p)
    assert again == cfg
    assert again.to_yaml() == cfg.to_yaml()
    assert again.teacher_key() == cfg.teacher_key()
    # The defaults round-trip too.
    p.write_text(config_schema()().to_yaml())
    assert load_config(p) == config_schema()()


# ----------------------------------------------------------------------------- base: inheritance


def test_base_config_is_merged_under_the_file(tmp_path: Path) -> None:
    (tmp_path / "scenario.yaml").write_text(
        "name: scenario\nseeds: [0, 1, 2]\nkd: {T: 2.0, alpha: 0.5}\nstudent: {train: {epochs: 16, lr: 0.05}}\n"
    )
    (tmp_path / "method.yaml").write_text(
        "base: scenario.yaml\nname: method\nseeds: [5]\nstudent: {train: {epochs: 3}}\n"
        "terms: [{method: dkd, warmup_epochs: 2}]\n"
    )
    cfg = load_config(tmp_path / "method.yaml")
    assert cfg.name == "method" and cfg.seeds == [5]  # lists and values replace
    assert cfg.kd.T == 2.0 and cfg.student.train.lr == 0.05  # untouched keys come from the base
    assert cfg.student.train.epochs == 3  # sections merge key by key
    assert cfg.terms[0].method == "dkd"
    assert "base" not in cfg.to_yaml()


def test_base_loop_and_missing_base_are_errors(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="chain loops"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere.yaml not found \(the base of"):
        load_config(tmp_path / "c.yaml")


def test_unknown_term_key_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError, match=r"terms.0.wieght: unknown key; did you mean 'terms.0.weight'"):
        load_config(None, ["terms=[{method: dkd, wieght: 2}]"])
    with pytest.raises(ConfigError, match=r"unknown method 'atx'; did you mean 'at'"):
        load_config(None, ["terms=[{method: atx, layers: [[a, b]]}]"])
    with pytest.raises(ConfigError, match=r"dkd has no option 'betta'; did you mean 'beta'"):
        load_config(None, ["terms=[{method: dkd, options: {betta: 2}}]"])
    with pytest.raises(ConfigError, match=r"fitnet needs `layers`"):
        load_config(None, ["terms=[{method: fitnet}]"])


def test_mixing_is_function_matching_only() -> None:
    ok = load_config(None, ["roles=[kd]", "kd.alpha=1", "student.train.augment.mixup=0.2"])
    assert ok.student.train.augment.mixup == 0.2
    with pytest.raises(ConfigError, match=r"roles: \[kd\] and kd.alpha: 1"):
        load_config(None, ["roles=[scratch,kd]", "kd.alpha=1", "student.train.augment.cutmix=1"])
    with pytest.raises(ConfigError, match=r"kd.alpha 0.5"):
        load_config(None, ["roles=[kd]", "kd.alpha=0.5", "student.train.augment.mixup=1"])
    with pytest.raises(ConfigError, match="teacher.train.augment"):
        load_config(None, ["teacher.train.augment.mixup=0.2"])


def test_mixing_off_leaves_earlier_keys_unchanged() -> None:
    # Teacher keys and view-cache keys hash the augmentation: fields added later must not change them when off.
    cfg = load_config(None, ["teacher.train.augment.shift=2"])
    assert cfg.teacher.train.key()["augment"] == {"shift": 2, "flip": False}
    mixed = load_config(None, ["roles=[kd]", "kd.alpha=1", "student.train.augment.mixup=0.2"])
    assert mixed.student.train.key()["augment"] == {"shift": 0, "flip": False, "mixup": 0.2}
