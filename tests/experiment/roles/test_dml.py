"""Role dml: a cohort config, one row per peer and one for their ensemble."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdistill.config import ConfigError, load_config
from kdistill.experiment.run import run_experiment
from kdistill.export import choose_student
from kdistill.io import safe_load
from kdistill.metrics import score
from kdistill.models import build_model
from kdistill.teacher import mixture_logits
from tests.experiment.recorder import one_seed


def test_a_cohort_of_one_peer_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"dml\.peers: .*at least 2 peers, got 1"):
        load_config(None, ["roles=[dml]", "dml.peers=[{arch: mlp}]"])


def test_dml_run_reports_each_peer_and_their_ensemble(tmp_path: Path) -> None:
    peers = "dml.peers=[{arch: mlp, kwargs: {hidden: [8]}}, {arch: mlp, kwargs: {hidden: [12]}}]"
    s = run_experiment(load_config(None, one_seed(tmp_path, "dml", "roles=[dml]", peers)))
    rows = [r for r in s["rows"] if r["role"] == "dml"]
    assert [r["variant"] for r in rows] == ["peer0", "peer1", "ensemble"]
    assert [r.get("peer") for r in rows[:2]] == [0, 1]
    assert rows[0]["student"] and not rows[1]["student"]  # peer 0 has the student's spec (hidden [8])
    assert rows[0]["params"] < rows[1]["params"]
    assert list(s["aggregate"]) == ["teacher", "dml/peer0", "dml/peer1", "dml/ensemble"]
    run = tmp_path / "dml"
    data_y = safe_load(run / "teacher" / "predictions.pt")["test_labels"]
    tests = []
    for r, hidden in zip(rows[:2], (8, 12), strict=True):
        saved = safe_load(run / r["dir"] / "weights.pt")
        model = build_model("mlp", saved["input_shape"], saved["num_classes"], {"hidden": [hidden]})
        model.load_state_dict(saved["state_dict"])
        logits = safe_load(run / r["dir"] / "predictions.pt")["test_logits"]
        assert score(logits, data_y).acc == r["test_acc"]
        tests.append(logits)
    assert score(mixture_logits(tests), data_y).acc == rows[2]["test_acc"]
    assert choose_student(run)["dir"] in ("dml-seed0/peer0", "dml-seed0/peer1")  # export finds the peers
    assert "dml/peer1" in (run / "summary.md").read_text()
