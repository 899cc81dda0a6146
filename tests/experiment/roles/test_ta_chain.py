"""Role ta_chain: each stage learns from the saved previous stage, frozen."""

from __future__ import annotations

from pathlib import Path

import torch

from kdistill.config import load_config
from kdistill.experiment.run import run_experiment
from tests.experiment.recorder import Recorder, one_seed, saved


def test_ta_chain_stage_learns_from_the_saved_previous_stage(tmp_path: Path, monkeypatch) -> None:
    rec = Recorder().install(monkeypatch)
    ov = one_seed(tmp_path, "ta", "roles=[ta_chain]", "ta_chain={assistants: [{arch: mlp, kwargs: {hidden: [16]}}]}")
    s = run_experiment(load_config(None, ov))
    run = tmp_path / "ta"
    rows = s["rows"][1:]
    assert [(r["variant"], r["stage"], r["headline"]) for r in rows] == [("assistant1", 1, False), ("student", 2, True)]
    for name, previous in [
        ("ta_chain-seed0-assistant1", run / "teacher" / "weights.pt"),
        ("ta_chain-seed0-student", run / "ta_chain-seed0-assistant1" / "weights.pt"),
    ]:
        note, before = rec.calls[name], saved(previous)
        assert note["objective"] == "Distiller" and not any(note["teacher_grad"])
        assert note["teacher_state"].keys() == before.keys()
        assert all(torch.equal(note["teacher_state"][k], v) for k, v in before.items())
    assert rows[0]["params"] > rows[1]["params"]
