"""Every data source reads the same images the same way; runs on them equal runs on the images in memory;
bad data is a clear error before anything is trained; nothing is written into the user's data folder."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdistill.config import ConfigError, load_config
from kdistill.data import DataError, load_data
from kdistill.data.inspect import record
from kdistill.experiment.run import run_experiment
from tests.data.builders import (
    CLASSES,
    images,
    write_arrays,
    write_cifar10,
    write_folder,
    write_idx_files,
)
from tests.experiment.recorder import refuse_training

DATA = images()


def _load(name: str, root: Path, tmp_path: Path, **kw: object) -> object:
    options = kw.pop("options", {})
    return load_data(name, root=str(root), val_size=9, options=options, cache_dir=tmp_path / "prepared", **kw)


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    return {
        "folder": write_folder(tmp_path / "folder", DATA),
        "arrays": write_arrays(tmp_path / "arrays", DATA),
        "idx": write_idx_files(tmp_path / "idx", DATA),
    }


def test_every_source_reads_the_same_images(sources: dict[str, Path], tmp_path: Path) -> None:
    bundles = {name: _load(name, root, tmp_path) for name, root in sources.items()}
    ref = bundles["arrays"]
    assert ref.class_names == ["0", "1", "2"] and bundles["folder"].class_names == CLASSES
    assert bundles["idx"].class_names == ["0", "1", "2"]
    for name, b in bundles.items():
        assert b.input_shape == (1, 8, 8) and b.num_classes == 3 and not b.streamed, name
        for split in ("train", "val", "test"):  # same rows, same normalization, same carving
            assert torch.equal(getattr(b, split).x, getattr(ref, split).x), (name, split)
            assert torch.equal(getattr(b, split).y, getattr(ref, split).y), (name, split)
        assert b.extra["normalize"]["mean"] == pytest.approx([float(DATA["x_train"].mean() / 255)], rel=1e-5)


def test_the_streamed_path_gives_the_in_memory_inputs(sources: dict[str, Path], tmp_path: Path) -> None:
    mem = _load("arrays", sources["arrays"], tmp_path)
    disk = _load("arrays", sources["arrays"], tmp_path, memory_budget_mb=0.001)
    assert disk.streamed and not isinstance(disk.train.x, torch.Tensor)
    rows = torch.tensor([5, 0, 70])
    torch.testing.assert_close(disk.train.x[rows], mem.train.x[rows], atol=1e-5, rtol=0)  # stats agree to ~1e-7
    assert torch.equal(disk.train.index, mem.train.index) and torch.equal(disk.test.y, mem.test.y)


def test_compressed_npz_nhwc_vectors_and_named_keys(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(30, 6, 5, 3)).astype(np.uint8)
    data = {"imgs": rgb, "labels": np.arange(30) % 3, "timgs": rgb[:9], "tlabels": np.arange(9) % 3}
    write_arrays(tmp_path / "nhwc", data, compressed=True)
    keys = {"x_train": "imgs", "y_train": "labels", "x_test": "timgs", "y_test": "tlabels"}
    b = _load("arrays", tmp_path / "nhwc", tmp_path, options={"keys": keys, "class_names": ["a", "b", "c"]})
    assert b.input_shape == (3, 6, 5) and b.class_names == ["a", "b", "c"]
    assert len(b.extra["normalize"]["mean"]) == 3  # per channel
    assert list((tmp_path / "prepared").glob("npz-*/imgs.npy"))  # extracted once, outside the data folder
    vec = {"x_train": np.random.default_rng(1).normal(size=(40, 7)).astype(np.float32), "y_train": np.arange(40) % 2}
    vec |= {"x_test": vec["x_train"][:10], "y_test": vec["y_train"][:10]}
    v = _load("arrays", write_arrays(tmp_path / "vec", vec), tmp_path)
    assert v.input_shape == (7,) and v.extra["normalize"]["scale"] == 1.0
    torch.testing.assert_close(v.train.x.mean(0), torch.zeros(7), atol=0.5, rtol=0)  # per-feature standardised


def test_cifar_batches_are_read_and_foreign_pickles_refused(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path / "c")
    b = _load("cifar", root, tmp_path)
    assert b.input_shape == (3, 32, 32) and b.class_names == ["airplane", "automobile", "bird"]
    assert len(b.train) + len(b.val) == 60 and len(b.test) == 15
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": os.system}))
    with pytest.raises(DataError, match=r"test_batch: not a readable CIFAR batch \(refusing to unpickle posix.system"):
        _load("cifar", root, tmp_path)


def test_folder_without_test_carves_and_records_a_stratified_test_split(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", DATA, splits=("train",))
    b = _load("folder", root, tmp_path, options={"test_fraction": 0.2})
    per_class = np.bincount(DATA["y_train"]).tolist()
    assert torch.bincount(b.test.y).tolist() == [round(0.2 * n) for n in per_class]  # stratified
    assert len(b.train) + len(b.val) + len(b.test) == 90
    assert any("form the test split" in n for n in b.notes)
    carved = record(b)["carved_test"]  # what a run writes into its data.json
    assert len(carved) == len(b.test) and all(f.startswith("train/") and (root / f).is_file() for f in carved)


def test_folder_classes_follow_a_given_order(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", DATA)
    order = ["class2", "class0", "class1"]
    b = _load("folder", root, tmp_path, options={"classes": order})
    ref = _load("folder", root, tmp_path)
    assert b.class_names == order
    for c in CLASSES:  # the same images under each class, now numbered in the given order
        torch.testing.assert_close(b.test.x[b.test.y == order.index(c)], ref.test.x[ref.test.y == CLASSES.index(c)])
    with pytest.raises(DataError, match=r"lists \['class9'\] .* leaves out \['class2'\]"):
        _load("folder", root, tmp_path, options={"classes": ["class0", "class1", "class9"]})


def test_folder_resizes_rgb_and_reuses_its_prepared_files(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", DATA)
    Image.new("RGB", (11, 7), (255, 0, 0)).save(root / "train" / "class1" / "zz_red.png")  # colour, other size
    before = _files(root)
    opts = {"size": [8, 8], "mode": "auto"}
    b = _load("folder", root, tmp_path, options=opts)
    assert b.input_shape == (3, 8, 8) and len(b.extra["normalize"]["mean"]) == 3
    prepared = list((tmp_path / "prepared").glob("folder-*"))
    assert len(prepared) == 1
    mtime = (prepared[0] / "train_x.npy").stat().st_mtime_ns
    again = _load("folder", root, tmp_path, options=opts)
    assert torch.equal(again.train.x, b.train.x) and (prepared[0] / "train_x.npy").stat().st_mtime_ns == mtime
    _load("folder", root, tmp_path, options={**opts, "fit": "centre_crop"})  # other settings: prepared anew
    assert len(list((tmp_path / "prepared").glob("folder-*"))) == 2
    assert _files(root) == before  # nothing written into the user's folder


@pytest.mark.parametrize(
    "make, options, message",
    [
        (lambda r: (r / "train" / "class2").mkdir(), {}, r"class2: empty class folder"),
        (
            lambda r: (r / "train" / "class1" / "broken.png").write_bytes(b"no png"),
            {},
            r"broken.png: Pillow cannot decode",
        ),
        (
            lambda r: Image.new("L", (9, 9)).save(r / "test" / "class0" / "big.png"),
            {},
            r"2 different sizes.*data.folder.size",
        ),
        (lambda r: (r / "test" / "class9").mkdir(), {}, r"test: its class folders differ from train/'s .*class9"),
    ],
    ids=["empty-class", "undecodable", "mixed-sizes", "class-sets"],
)
def test_bad_folders_are_clear_errors(tmp_path: Path, make, options: dict, message: str) -> None:  # noqa: ANN001
    root = tmp_path / "f"
    write_folder(
        root,
        {**DATA, "x_train": DATA["x_train"][DATA["y_train"] != 2], "y_train": DATA["y_train"][DATA["y_train"] != 2]}
        if "empty" in message
        else DATA,
    )  # noqa: E501
    make(root)
    with pytest.raises(DataError, match=message):
        _load("folder", root, tmp_path, options=options)


def test_an_undecodable_file_can_be_skipped_and_is_counted(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", DATA)
    (root / "train" / "class1" / "broken.png").write_bytes(b"no png")
    b = _load("folder", root, tmp_path, options={"on_error": "skip"})
    assert len(b.train) + len(b.val) == 90
    assert any("skipped 1 files" in n and "broken.png" in n for n in b.notes)


@pytest.mark.parametrize(
    "data, options, message",
    [
        ({**DATA, "y_train": DATA["y_train"][:-1]}, {}, r"x_train has 90 rows but y_train has 89 labels"),
        (
            {**DATA, "y_test": DATA["y_test"] + 5},
            {"class_names": CLASSES},
            r"test labels \[5, 6, 7\] are outside 0\.\.2",
        ),
        ({**DATA, "y_train": DATA["y_train"].astype(np.float32)}, {}, r"labels must be integers"),
        ({k: v for k, v in DATA.items() if k != "y_test"}, {}, r"no array 'y_test'.*data.arrays.keys"),
    ],
    ids=["lengths", "labels-out-of-range", "float-labels", "missing-key"],
)
def test_bad_arrays_are_clear_errors(tmp_path: Path, data: dict, options: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        _load("arrays", write_arrays(tmp_path / "a", data), tmp_path, options=options)


def _not_datasets() -> tuple:
    return [1, 2, 3], "test"


def test_a_factory_that_returns_no_dataset_is_a_clear_error(tmp_path: Path) -> None:
    opts = {"function": "tests.data.test_sources:_not_datasets"}
    with pytest.raises(DataError, match=r"its train split is a list, not a torch.utils.data.Dataset"):
        load_data("factory", val_size=1, options=opts, cache_dir=tmp_path)
    with pytest.raises(DataError, match=r"cannot import module 'nowhere'"):
        load_data("factory", val_size=1, options={"function": "nowhere:f"}, cache_dir=tmp_path)


def test_a_large_factory_dataset_is_prepared_and_streamed(tmp_path: Path) -> None:
    opts = {"function": "tests.data.builders:in_memory", "kwargs": {}}
    mem = load_data("factory", val_size=9, options=opts, cache_dir=tmp_path)
    disk = load_data("factory", val_size=9, options=opts, cache_dir=tmp_path, memory_budget_mb=0.001)
    assert disk.streamed and list(tmp_path.glob("factory-*/train_x.npy"))
    torch.testing.assert_close(disk.test.x[:], mem.test.x, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- in a run


def _run(tmp_path: Path, name: str, *data: str) -> dict:
    overrides = [
        "teacher.model.arch=mlp",
        "teacher.model.kwargs={hidden: [32]}",
        "teacher.train.epochs=3",
        "student.model.kwargs={hidden: [8]}",
        "student.train.epochs=2",
        "seeds=[0]",
        "threads=1",
        "roles=[scratch, kd]",
        "data.val_size=9",
        f"output_dir={tmp_path / 'runs'}",
        f"name={name}",
        *data,
    ]
    return run_experiment(load_config(None, overrides))


def test_folder_and_array_runs_equal_the_same_images_in_memory(sources: dict[str, Path], tmp_path: Path) -> None:
    keys = ("role", "test_acc", "test_nll", "val_acc", "best_epoch")

    def strip(summary: dict) -> list[dict]:
        return [{k: r.get(k) for k in keys} for r in summary["rows"]]

    memory = _run(tmp_path, "memory", "data.name=factory", "data.factory={function: 'tests.data.builders:in_memory'}")
    folder = _run(tmp_path, "folder", "data.name=folder", f"data.root={sources['folder']}")
    arrays = _run(tmp_path, "arrays", "data.name=arrays", f"data.root={sources['arrays']}")
    streamed = _run(
        tmp_path, "streamed", "data.name=arrays", f"data.root={sources['arrays']}", "data.memory_budget_mb=0.001"
    )
    assert strip(folder) == strip(memory) and strip(arrays) == strip(memory)
    for a, b in zip(strip(streamed), strip(memory), strict=True):  # inputs equal to ~1e-7: the same models
        assert (
            a["role"] == b["role"]
            and a["test_acc"] == b["test_acc"]
            and a["test_nll"] == pytest.approx(b["test_nll"], abs=1e-4)
        )


def test_bad_data_fails_before_any_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_training(monkeypatch)
    root = write_folder(tmp_path / "f", DATA)
    (root / "test" / "class1" / "broken.png").write_bytes(b"\x89PNG but no image")
    with pytest.raises(DataError, match="broken.png: Pillow cannot decode"):
        _run(tmp_path, "bad", "data.name=folder", f"data.root={root}")
    with pytest.raises(ConfigError, match=r"data.folder is set but data.name is arrays"):
        _run(tmp_path, "bad", "data.name=arrays", "data.folder={size: 8}")
    with pytest.raises(DataError, match=r"data.name=folder needs data.root"):
        _run(tmp_path, "bad", "data.name=folder")
