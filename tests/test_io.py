"""Atomic writes survive interruption; safe_load refuses pickled code and reports corrupt files."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest
import torch

from kdistill.io import CheckpointError, atomic_save, atomic_write_text, pickled_globals, safe_load


class Payload:
    """A custom class: unpickling it would mean importing and running code named by the file."""

    def __init__(self) -> None:
        self.value = 42


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"layer.weight": torch.randn(3, 4, generator=g), "layer.bias": torch.zeros(3)}


def _assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_save_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "model.pt"
    atomic_save(_state(), target)
    atomic_save(_state(), target)  # overwrite in place
    atomic_write_text(tmp_path / "sub" / "notes.txt", "hello\n")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["model.pt", "notes.txt"]
    _assert_state_equal(safe_load(target), _state())
    assert (tmp_path / "sub" / "notes.txt").read_text() == "hello\n"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # ordinary permissions, not mkstemp's 0600


def test_interrupted_save_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.pt"
    old = _state()
    atomic_save(old, target)
    before = target.read_bytes()

    def broken_save(obj: object, f: object) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")  # type: ignore[attr-defined]
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"layer.weight": torch.ones(1)}, target)
    monkeypatch.undo()
    assert target.read_bytes() == before
    _assert_state_equal(safe_load(target), old)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # the temp file was removed


def test_interrupted_first_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(obj: object, f: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save(_state(), tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- safe_load


def test_safe_load_plain_state_dict(tmp_path: Path) -> None:
    p = tmp_path / "plain.pt"
    torch.save({"state_dict": _state(), "epoch": 3, "meta": {"acc": 0.5, "tags": ["a"]}}, p)
    obj = safe_load(p)
    _assert_state_equal(obj["state_dict"], _state())
    assert obj["epoch"] == 3 and obj["meta"] == {"acc": 0.5, "tags": ["a"]}


def test_safe_load_refuses_custom_class(tmp_path: Path) -> None:
    p = tmp_path / "evil.pt"
    torch.save({"state_dict": _state(), "extra": Payload()}, p)
    with pytest.raises(CheckpointError) as info:
        safe_load(p)
    msg = str(info.value)
    assert str(p) in msg
    assert "holds pickled objects" in msg and "will not execute" in msg
    assert "plain state_dict" in msg


def test_safe_load_refusal_names_the_class(tmp_path: Path) -> None:
    p = tmp_path / "evil.pt"
    torch.save({"extra": Payload()}, p)
    with pytest.raises(CheckpointError) as info:
        safe_load(p)
    msg = str(info.value)
    assert "Payload" in msg
    assert "\x1b[" not in msg


def test_safe_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        safe_load(tmp_path / "absent.pt")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.01])
def test_truncated_checkpoint_raises_checkpoint_error(tmp_path: Path, keep: float) -> None:
    p = tmp_path / "model.pt"
    atomic_save({"state_dict": {"w": torch.randn(40, 40)}}, p)
    raw = p.read_bytes()
    p.write_bytes(raw[: max(8, int(len(raw) * keep))])
    with pytest.raises(CheckpointError) as info:
        safe_load(p)
    assert str(p) in str(info.value) and "truncated or corrupt" in str(info.value)


def test_empty_checkpoint_raises_checkpoint_error(tmp_path: Path) -> None:
    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        safe_load(p)


def test_text_file_raises_checkpoint_error(tmp_path: Path) -> None:
    p = tmp_path / "model.pt"
    p.write_bytes(b"hello world garbage")
    with pytest.raises(CheckpointError):
        safe_load(p)


def test_checkpoint_cut_to_two_bytes_is_reported_as_corrupt(tmp_path: Path) -> None:
    p = tmp_path / "model.pt"
    atomic_save(_state(), p)
    p.write_bytes(p.read_bytes()[:2])
    with pytest.raises(CheckpointError) as info:
        safe_load(p)
    assert "truncated or corrupt" in str(info.value)


class _RunsCode:
    def __reduce__(self):  # noqa: ANN204 - what a malicious pickle does: call a function when unpickled
        return (os.system, ("echo this must never run",))


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_an_unsafe_pickle_is_refused_naming_what_it_would_run_and_how_to_convert(tmp_path: Path, how: str) -> None:
    p = tmp_path / "teacher.pt"
    obj = {"state_dict": {"w": torch.zeros(2)}, "extra": _RunsCode()}
    if how == "torch.save":
        torch.save(obj, p)
    else:
        p.write_bytes(pickle.dumps(obj))
    with pytest.raises(CheckpointError) as info:
        safe_load(p)
    msg = str(info.value)
    assert "holds pickled objects (posix.system)" in msg and "will not execute" in msg
    assert "weights_only=False" in msg and "truncated" not in msg


def test_a_pickled_module_is_named_and_a_plain_checkpoint_has_no_unsafe_globals(tmp_path: Path) -> None:
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    torch.save(
        {"state_dict": torch.nn.Linear(2, 2).state_dict(), "p": torch.nn.Parameter(torch.ones(2))}, tmp_path / "ok.pt"
    )
    assert pickled_globals(tmp_path / "module.pt") == ["torch.nn.modules.linear.Linear"]
    assert pickled_globals(tmp_path / "ok.pt") == []
    with pytest.raises(CheckpointError, match=r"torch.nn.modules.linear.Linear"):
        safe_load(tmp_path / "module.pt")


def test_replace_dir_swaps_in_one_step_where_linux_allows(tmp_path: Path) -> None:
    from kdistill.io import exchange_paths, replace_dir

    out, new = tmp_path / "export", tmp_path / "new"
    out.mkdir()
    (out / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    if sys.platform.startswith("linux"):
        a, b = tmp_path / "a", tmp_path / "b"
        a.mkdir()
        b.mkdir()
        (a / "x").write_text("a")
        assert exchange_paths(a, b) and (b / "x").read_text() == "a" and not (a / "x").exists()
    replace_dir(new, out)
    assert [p.name for p in out.iterdir()] == ["new.txt"] and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no leftovers
