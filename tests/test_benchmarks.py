"""benchmarks/methods.py in smoke mode: the table it publishes has the rows, statistics and provenance it claims."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from kdistill.data import DataError, find_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]


def _methods():
    spec = importlib.util.spec_from_file_location("kdistill_bench_methods", ROOT / "benchmarks" / "methods.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_reuse_compares_resolved_configs_with_defaults_for_new_keys() -> None:
    same = _methods()._same
    default = {"kd": {"T": 4.0, "cache": {"mode": "auto"}}}
    # A key the old run did not know yet counts as equal when the new run leaves it at its default.
    assert same({"kd": {"T": 2.0}}, {"kd": {"T": 2.0, "cache": {"mode": "auto"}}}, default)
    assert not same({"kd": {"T": 2.0}}, {"kd": {"T": 2.0, "cache": {"mode": "online"}}}, default)
    assert not same({"kd": {"T": 2.0}}, {"kd": {"T": 4.0}}, default)


def test_methods_smoke_table_has_base_method_and_mode_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        find_fashion_mnist(download=False)
    except DataError:
        pytest.skip("Fashion-MNIST files not installed (run scripts/get_data.sh)")
    monkeypatch.chdir(ROOT)  # the configs name the shipped teacher checkpoint relative to the repo root
    m = _methods()
    keep = {"sp", "born_again"}
    configs = [*m.method_configs("compression"), *m.mode_configs("compression")]
    skip = tuple(p.stem for p in configs if p.stem not in keep)
    res = m.run_scenario("compression", [0, 1], 1, tmp_path, smoke=True, skip=skip)
    table = {r["method"]: r for r in res["table"]}
    gens = [f"born_again/gen{k}" for k in range(4)]
    assert list(table) == ["scratch", "kd (vanilla)", "sp", *gens, "born_again/ensemble"]
    assert all(r["n"] == 2 for r in res["table"])
    assert table["scratch"]["delta_scratch"] == 0 and table["kd (vanilla)"]["delta_kd"] == 0
    for r in res["table"]:
        assert r["delta_scratch"] == pytest.approx(r["test_acc_mean"] - table["scratch"]["test_acc_mean"])
    # Generation 0 is trained on the labels with the scratch student's seed and recipe: the same model.
    assert table["born_again/gen0"]["test_acc_mean"] == table["scratch"]["test_acc_mean"]
    assert table["sp"]["extra_params"] == 0 and table["born_again/ensemble"]["extra_params"] > 0
    md = m.markdown(res)
    assert "| born_again/ensemble |" in md and "Not run (`--skip`)" in md
    assert f"Measured on {res['environment']['cpu']}" in md and "1 thread(s)" in md
