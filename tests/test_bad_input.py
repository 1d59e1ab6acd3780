"""The bad-input catalogue: one line naming the problem and what is allowed, exit status 2, no
traceback, and nothing created or changed — neither the output directory nor any input."""

import copy
import io
import os
import sqlite3
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from PIL import Image
from torchvision.io import write_png

from cnnlab.studies.ablations.run import check_arms
from cnnlab.studies.ablations.spec import load_spec
from cnnlab.studies.ablations.store import AblationStore

TINY_ABLATION = "name: x\nfactors: {model.norm: [batch]}\n"
TINY_SEARCH = "name: x\nspace: {optim.lr: {type: float, low: 0.001, high: 0.1}}\n"


def _npz(**arrays: np.ndarray) -> Callable[[Path], None]:
    return lambda path: np.savez(path, **arrays)


def _classes(empty: bool = False, corrupt: bool = False) -> Callable[[Path], None]:
    """A folder dataset of two classes of 8×8 PNGs, with an empty class or a corrupt image."""

    def write(root: Path) -> None:
        for label in ("a", "b"):
            (root / label).mkdir(parents=True)
            for i in range(3):
                write_png(torch.full((1, 8, 8), 40 * i, dtype=torch.uint8), str(root / label / f"{i}.png"))
        if empty:
            (root / "c").mkdir()
        if corrupt:
            (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    return write


def _fifo_in_classes(root: Path) -> None:
    """A folder dataset with a FIFO named like an image (reading it waited for good)."""
    _classes()(root)
    os.mkfifo(root / "b" / "6.png")


MILLION_ARMS = ("name: x\nfactors:\n  optim.lr: [" + ", ".join(f"{i}.0e-4" for i in range(1, 1001))
                + "]\n  optim.momentum: [" + ", ".join(f"0.{i:04d}" for i in range(1, 1001)) + "]\n")


def _bad_pixels(value: float, count: int, n: int = 6) -> Callable[[Path], None]:
    """An npz of ``n`` 8×8 float images, two classes, with ``count`` pixels set to ``value``."""
    x = np.zeros((n, 8, 8), np.float32)
    x.flat[:count] = value
    return _npz(x=x, y=np.arange(n) % 2)


def _offline_run(runs: Path) -> None:
    """A folder holding one offline W&B run not synced yet."""
    run = runs / "offline-run-20260101_000000-abc"
    run.mkdir(parents=True)
    (run / "run-abc.wandb").write_bytes(b":W&B")


def _unfinished_study(folder: Path) -> None:
    """An ablation's storage as a stop before its first trial finished leaves it."""
    folder.mkdir()
    (folder.parent / "x.yaml").write_text(TINY_ABLATION)
    spec = load_spec(folder.parent / "x.yaml")
    storage = JournalStorage(JournalFileBackend(str(folder / "study.journal")))
    AblationStore.open(spec, False, storage, check_arms(spec, False)).reconcile(spec, False)


def _user_png(path: Path) -> None:
    """A PNG of the user's (no ``Software: cnnlab`` chunk)."""
    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(path)


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _alias_bomb(levels: int = 9) -> str:
    """A "billion laughs" YAML: a few hundred bytes, 9**9 values once its aliases expand."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _png_header(width: int, height: int) -> Callable[[Path], None]:
    """A PNG whose header declares ``width``×``height`` pixels (a decompression bomb's)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    idat = zlib.compress(b"\0" * 64)
    return _bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                  + chunk(b"IEND", b""))


def _npz_declaring(shape: tuple[int, ...]) -> Callable[[Path], None]:
    """An .npz whose x.npy header declares ``shape`` float32 values (and holds none of them)."""

    def write(path: Path) -> None:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f4", "fortran_order": False, "shape": shape})
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("x.npy", header.getvalue())
            archive.writestr("y.npy", _npy(np.zeros(2, np.int64)))

    return write


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _corrupt_compressed_npz(path: Path) -> None:
    """``numpy.savez_compressed``, then bytes in the middle of the deflated data flipped."""
    np.savez_compressed(path, x=np.random.default_rng(0).integers(0, 255, (64, 8, 8), np.uint8),
                        y=np.arange(64) % 2)
    data = bytearray(path.read_bytes())
    for i in range(200, 260):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


RANDOM_BYTES = bytes(np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8))


def _sqlite(table: str) -> Callable[[Path], None]:
    """A user's SQLite database with one table of its own."""

    def write(path: Path) -> None:
        with sqlite3.connect(path) as db:
            db.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT)")
            db.execute(f"INSERT INTO {table} (name) VALUES ('ada')")
        db.close()

    return write


def _search_journal(path: Path) -> None:
    study = optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))
    study.set_user_attr("spec", {"space": {"optim.lr": {"type": "float", "low": 0.01, "high": 0.1}}})


def _one_class_folder(root: Path) -> None:
    (root / "only").mkdir(parents=True)
    for i in range(4):
        write_png(torch.full((1, 8, 8), 40 * i, dtype=torch.uint8), str(root / "only" / f"{i}.png"))


def _bomb_folder(root: Path) -> None:
    """A folder dataset of two classes, one of whose PNGs declares 30000×30000 pixels."""
    _classes()(root)
    _png_header(30000, 30000)(root / "a" / "huge.png")


JOURNAL_RECORD = '{"op_code":0,"worker_id":"w","study_name":"s","directions":[1]}\n'


@dataclass(frozen=True)
class Case:
    """``args`` and file contents may name ``{d}`` (the inputs' folder) and ``{out}``."""

    args: tuple[str, ...]
    expected: str
    files: dict[str, str | Callable[[Path], None]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def fit(*overrides: str, expected: str, **files: str | Callable[[Path], None]) -> Case:
    return Case(("fit", "--out", "{out}", *overrides), expected, files)


def ablate(spec: str, expected: str, *args: str, **files: str | Callable[[Path], None]) -> Case:
    return Case(("ablate", "{d}/spec.yaml", "--out", "{out}", *args), expected, {"spec.yaml": spec, **files})


def tune(spec: str, expected: str, *args: str, **files: str | Callable[[Path], None]) -> Case:
    return Case(("tune", "{d}/spec.yaml", "--out", "{out}", *args), expected,
                {"spec.yaml": spec, **files})


CATALOGUE: dict[str, Case] = {
    # config keys and values
    "unknown key": fit("model.foo=1", expected="unknown key 'model.foo'; allowed: channels, convs_per_block, kernel_size"),
    "unknown section": fit("foo.bar=1", expected="unknown key 'foo'"),
    "wrong type": fit("model.kernel_size=abc", expected="model.kernel_size: Value 'abc'"),
    "wrong list item type": fit("model.channels=[a]", expected="model.channels[0]"),
    "unparsable value": fit("model.channels=[1,", expected="override 'model.channels=[1,': cannot parse"),
    "override without =": fit("model.norm", expected="expected key=value"),
    "unknown norm": fit("model.norm=batchy", expected="model.norm: unknown value 'batchy'; allowed: "
                        "batch, layer, instance, group, none"),
    "unknown pool": fit("model.pool=min", expected="model.pool: unknown value 'min'; allowed: max, avg, none"),
    "unknown reg": fit("reg.kind=l3", expected="reg.kind: unknown value 'l3'; allowed: none, l1, l2, elastic"),
    "unknown optimizer": fit("optim.name=lion", expected="optim.name: unknown value 'lion'; allowed: sgd"),
    "unknown scheduler": fit("optim.scheduler=step", expected="optim.scheduler: unknown value 'step'"),
    "unknown dataset": fit("data.name=imagenet", expected="data.name: unknown value 'imagenet'; allowed: digits"),
    "unknown init": fit("model.init=orthogonal", expected="model.init: unknown value 'orthogonal'"),
    "unknown strategy": fit("trainer.strategy=fsdp", expected="trainer.strategy: unknown value 'fsdp'; "
                            "allowed: auto, ddp"),
    "unknown precision": fit("trainer.precision=8-bit", expected="trainer.precision: unknown value '8-bit'; allowed: auto, 32-true, bf16-mixed, 16-mixed"),
    "channels_last neither bool nor auto": fit("model.channels_last=maybe", expected="model.channels_last: unknown value 'maybe'; allowed: auto, true, false"),
    "label smoothing of one": fit("reg.label_smoothing=1.0", expected="reg.label_smoothing: got 1.0; allowed: a number in [0, 1)"),
    "zero convs per block": fit("model.convs_per_block=0", expected="model.convs_per_block: got 0; allowed: a positive integer"),
    "zero devices": fit("trainer.devices=0", expected="trainer.devices: got 0; allowed: a positive integer"),
    "unknown wandb mode": fit("wandb.mode=sometimes", expected="wandb.mode: unknown value 'sometimes'"),
    "zero lr": fit("optim.lr=0", expected="optim.lr: got 0; allowed: a positive number"),
    "lr neither number nor auto": fit("optim.lr=fast", expected="optim.lr: got 'fast'; allowed: a "
                                      "positive number, or auto"),
    "negative lr": fit("optim.lr=-0.1", expected="optim.lr: got -0.1; allowed: a positive number"),
    "dropout of one": fit("model.dropout=1.0", expected="model.dropout: got 1.0; allowed: a probability in [0, 1)"),
    "negative spatial dropout": fit("model.spatial_dropout=-0.1", expected="model.spatial_dropout: got -0.1"),
    "zero batch size": fit("data.batch_size=0", expected="data.batch_size: got 0; allowed: a positive integer"),
    "negative kernel": fit("model.kernel_size=-3", expected="model.kernel_size: got -3"),
    "no conv blocks": fit("model.channels=[]", expected="model.channels: got []; allowed: a non-empty list"),
    "zero hidden units": fit("model.hidden_units=[0]", expected="model.hidden_units: got [0]"),
    "groups not a divisor": fit("model.norm=group", "model.groups=3",
                                expected="model.groups: got 3; allowed: a divisor of every entry"),
    "val fraction of one": fit("data.val_fraction=1.0",
                               expected="data.val_fraction: got 1.0; allowed: a fraction in (0, 1)"),
    "unknown augment policy": fit("data.augment.policy=some", expected="data.augment.policy: unknown "
                                  "value 'some'; allowed: all, k_of_n"),
    "augment k above enabled ops": fit("data.augment.policy=k_of_n", "data.augment.k=3",
                                       "data.augment.hflip=true", "data.augment.rotate=10",
                                       expected="data.augment.k: got 3; allowed: 1..2"),
    "rotation beyond 180": fit("data.augment.rotate=200", expected="data.augment.rotate: got 200.0"),
    "negative crop padding": fit("data.augment.crop_padding=-1", expected="data.augment.crop_padding: got -1"),
    "nesterov without momentum": fit("optim.name=sgd", "optim.nesterov=true", "optim.momentum=0",
                                     expected="optim.nesterov: got True; allowed: true only with"),
    "l1 ratio above one": fit("reg.l1_ratio=2", expected="reg.l1_ratio: got 2.0; allowed: a number in [0, 1]"),
    "conv too big for the input": fit("model.kernel_size=11", "model.pool=none", expected="model: block 1 "
                                      "conv output would be 0×0 (input 8×8, kernel 11"),
    "too many pools": fit("model.channels=[8,8,8,8]",
                          expected="model: block 4 pool output would be 0×0 (input 1×1"),
    "instance norm on 1×1": fit("model.channels=[8,8,8,8]", "model.norm=instance", "model.pool_kernel=1",
                                expected="model.norm: instance norm needs more than one spatial element"),
    # config files
    "missing config file": fit("--config", "{d}/none.yaml", expected="--config {d}/none.yaml: cannot "
                               "read (No such file or directory)"),
    "invalid YAML": fit("--config", "{d}/c.yaml", expected="--config {d}/c.yaml: invalid YAML at line",
                        **{"c.yaml": "model: [1, 2\n"}),
    "config is a list": fit("--config", "{d}/c.yaml", expected="--config {d}/c.yaml: top level is list",
                            **{"c.yaml": "- 1\n- 2\n"}),
    "unknown key in file": fit("--config", "{d}/c.yaml", expected="unknown key 'model.colour'",
                               **{"c.yaml": "model:\n  colour: red\n"}),
    "python object in YAML (safe loading)": fit(
        "--config", "{d}/c.yaml", expected="--config {d}/c.yaml: invalid YAML at line 1",
        **{"c.yaml": "seed: !!python/object/apply:os.system ['touch {d}/pwned']\n"}),
    # data
    "missing data directory": fit("data.name=folder", "data.root={d}/nowhere",
                                  expected="data.root: {d}/nowhere is not a directory"),
    "missing torchvision files": fit("data.name=mnist", "data.root={d}",
                                     expected="data.root: MNIST files not found"),
    "empty class folder": fit("data.name=folder", "data.root={d}/imgs", imgs=_classes(empty=True),
                              expected="data.root: class folder {d}/imgs/c has no images"),
    "corrupt PNG": fit("data.name=folder", "data.root={d}/imgs", imgs=_classes(corrupt=True),
                       expected="data.root: cannot decode image {d}/imgs/b/broken.png"),
    "npz without y": fit("data.name=npz", "data.root={d}/d.npz",
                         expected="data.root: {d}/d.npz has no array y",
                         **{"d.npz": _npz(x=np.zeros((4, 8, 8), np.uint8))}),
    "labels out of range": fit("data.name=npz", "data.root={d}/d.npz",
                               expected="labels run 0..5 but there are 2 classes; allowed: labels 0..1",
                               **{"d.npz": _npz(x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1, 0, 5]),
                                                classes=np.array(["a", "b"]))}),
    "corrupt npz": fit("data.name=npz", "data.root={d}/d.npz", expected="is not a readable .npz file",
                       **{"d.npz": "PK\x03\x04 not really a zip"}),
    "fewer samples than folds": tune(
        "name: x\nfolds: 8\noverrides: [data.name=npz, data.root={d}/d.npz]\n"
        "space: {optim.lr: {type: float, low: 0.001, high: 0.1}}\n",
        "folds: 8 folds need at least 8 samples of every class",
        **{"d.npz": _npz(x=np.zeros((18, 8, 8), np.uint8), y=np.arange(18) % 3)}),
    "too small a split": fit("data.name=npz", "data.root={d}/d.npz", "data.test_fraction=0.05",
                             expected="data: cannot cut a stratified test split",
                             **{"d.npz": _npz(x=np.zeros((6, 8, 8), np.uint8), y=np.arange(6) % 3)}),
    # ablation and search specs
    "unknown spec key": ablate("name: x\nfactor: {model.norm: [batch]}\n", "unknown key 'factor'"),
    "empty grid": ablate("name: x\nfactors: {}\n", "factors is empty"),
    "empty factor": ablate("name: x\nfactors: {model.norm: []}\n", "factors.model.norm: got []"),
    "unknown factor key": ablate("name: x\nfactors: {model.colour: [red]}\n",
                                 "arm 'model.colour=red': unknown key 'model.colour'"),
    "bad level value": ablate("name: x\nfactors: {model.norm: [batch, batchy]}\n",
                              "arm 'model.norm=batchy': model.norm: unknown value 'batchy'"),
    "unknown metric": ablate("name: x\nmetric: f1\nfactors: {model.norm: [batch]}\n",
                             "unknown metric 'f1'; allowed: test_acc, val_acc"),
    "baseline not an arm": ablate("name: x\nfactors: {model.norm: [batch]}\nbaseline: {model.norm: none}\n",
                                  "baseline 'model.norm=none' is not an arm; allowed: model.norm=batch"),
    "zero seeds": ablate("name: x\nseeds: 0\nfactors: {model.norm: [batch]}\n", "seeds is 0"),
    "impossible arm": ablate("name: x\nfactors: {model.kernel_size: [3, 11]}\n",
                             "arm 'model.kernel_size=11': model: block 1 conv output would be"),
    "spec not a mapping": ablate("- 1\n", "top level is list"),
    "spec invalid YAML": ablate("factors: [\n", "invalid YAML at line"),
    "several devices per trial": ablate("name: x\noverrides: [trainer.devices=2]\nfactors: {model.norm: [batch]}\n",
                                        "trainer.devices: got 2; allowed: 1 in a study"),
    "empty search space": tune("name: x\nspace: {}\n", "space is empty"),
    "unknown space type": tune("name: x\nspace: {optim.lr: {type: normal}}\n", "space.optim.lr.type is 'normal'"),
    "low above high": tune("name: x\nspace: {optim.lr: {type: float, low: 1, high: 0.1}}\n", "low < high"),
    "text bound": tune("name: x\nspace: {optim.lr: {type: float, low: small, high: 0.1}}\n", "space.optim.lr is"),
    "unknown pruner": tune("name: x\npruner: {name: asha}\nspace: {optim.lr: {type: float, low: 0.001, "
                           "high: 0.1}}\n", "unknown pruner 'asha'; allowed: median, hyperband"),
    "one fold": tune("name: x\nfolds: 1\nspace: {optim.lr: {type: float, low: 0.001, high: 0.1}}\n",
                     "folds: got 1; allowed: an integer from 2 to 100"),
    "unknown space key": tune("name: x\nspace: {optim.speed: {type: float, low: 0.1, high: 1}}\n",
                              "unknown key 'optim.speed'"),
    "space outside a key's range": tune("name: x\nspace: {model.dropout: {type: float, low: 0.5, high: 1.5}}\n",
                                        "model.dropout: got 1.5"),
    "missing spec file": Case(("ablate", "{d}/none.yaml", "--out", "{out}"), "{d}/none.yaml: cannot read"),
    "pilot in rounds": Case(("ablate", "norm", "--quick", "--pilot", "--seeds", "auto", "--out",
                             "{out}"), "ablate --pilot: --seeds auto; allowed: a number of seeds"),
    "missing pilot file": Case(("plan", "norm", "--quick", "--pilot", "{d}/none.csv"),
                               "pilot {d}/none.csv: [Errno 2] No such file"),
    "pilot without the columns": Case(("plan", "norm", "--pilot", "{d}/p.csv"),
                                      "pilot {d}/p.csv: no rows with columns arm, failure, seed",
                                      {"p.csv": "a,b\n1,2\n"}),
    "pilot with a word for a metric": Case(
        ("plan", "norm", "--pilot", "{d}/p.csv"), "allowed: numbers in the metric columns",
        {"p.csv": "arm,seed,failure,test_acc\nx,1000,,abc\n"}),
    "pilot of another spec": Case(
        ("plan", "norm", "--pilot", "{d}/p.csv"),
        "has no runs of arm 'model.norm=batch, optim.lr=0.1'; allowed: a pilot of spec norm",
        {"p.csv": "arm,seed,failure,test_acc\nx,1000,,0.5\n"}),
    "equivalence on another metric": ablate(
        "name: e\nfactors: {model.norm: [batch, none]}\nhypothesis:\n  claim: c\n  expect:\n"
        "    - {arm: {model.norm: none}, metric: train_acc, is: equivalent}\n",
        "equivalent on train_acc; allowed: the spec's metric (test_acc), whose margin it is"),
    # storage URLs
    "unknown storage scheme": ablate(TINY_ABLATION, "--storage mysql://u@h/db: unknown scheme 'mysql'; "
                                     "allowed: journal file path", "--storage", "mysql://u@h/db"),
    "PostgreSQL refusing connections": ablate(TINY_ABLATION, "cannot open", "--storage",
                                              "postgresql://nobody@127.0.0.1:1/none"),
    "PostgreSQL host unreachable": tune(TINY_SEARCH, "cannot open", "--storage",
                                        "postgresql://nobody@10.255.255.1:5432/none"),
    "storage is a directory": ablate(TINY_ABLATION, "--storage {d}: is a directory", "--storage", "{d}"),
    "report without a storage": Case(("report", "x", "--out", "{out}"),
                                     "no study storage there; allowed: the --out or --storage"),
    "report of an unknown study": Case(("report", "nope", "--out", "{out}", "--storage", "{d}/s.journal"),
                                       "study 'nope' is not in this storage",
                                       {"s.journal": ""}),
    # CLI usage
    "unknown flag": Case(("fit", "--bogus"), "unrecognized arguments: --bogus"),
    "unknown command": Case(("train",), "invalid choice: 'train'"),
    "no command": Case((), "the following arguments are required: command"),
    "short input shape": Case(("summary", "--input-shape", "3,32"),
                              "--input-shape: got '3,32'; allowed: three positive integers C,H,W"),
    "out is a file": Case(("fit", "--out", "{d}/file.txt"), "--out {d}/file.txt: is a file; allowed: a "
                          "directory", {"file.txt": "keep"}),
    "zero workers": Case(("ablate", "{d}/spec.yaml", "--workers", "0"), "--workers: got '0'; allowed: a "
                         "positive integer", {"spec.yaml": TINY_ABLATION}),
    "negative timeout": Case(("tune", "{d}/spec.yaml", "--timeout", "-5"), "--timeout: got '-5'",
                             {"spec.yaml": TINY_SEARCH}),
    "export of a directory without a run": Case(("export", "{d}"), "no checkpoints/best.ckpt; allowed: the --out "
                                                "folder of a finished cnnlab fit"),
    "lr-find plot not a PNG": Case(("lr-find", "--out", "{d}/plot.jpg"), "allowed: a file name ending in .png"),
    # bounded inputs: bombs, special files, sizes declared far beyond memory
    "YAML alias bomb as a config": fit("--config", "{d}/c.yaml", expected="--config {d}/c.yaml: "
                                       "expands to more than 10,000 values", **{"c.yaml": _alias_bomb()}),
    "YAML alias bomb as a spec": ablate(_alias_bomb(5) + TINY_ABLATION, "spec {d}/spec.yaml: "
                                       "expands to more than 10,000 values"),
    "config nested 20,000 deep": fit("--config", "{d}/c.yaml", expected="nested too deeply",
                                     **{"c.yaml": "model: " + "[" * 20000 + "]" * 20000 + "\n"}),
    "config nested 60 deep": fit("--config", "{d}/c.yaml", expected="unknown key 'a'; allowed: seed",
                                 **{"c.yaml": "a: " + "{b: " * 60 + "1" + "}" * 60 + "\n"}),
    "/dev/zero as a config": fit("--config", "/dev/zero", expected="--config /dev/zero: is not a "
                                 "regular file; allowed: a YAML file"),
    "a folder as a config": fit("--config", "{d}", expected="is not a regular file"),
    "a 2 MB config": fit("--config", "{d}/c.yaml", expected="allowed: a YAML file of at most "
                         "1,048,576 bytes", **{"c.yaml": "# padding\n" * 200_000}),
    "npz declaring 6.4e9 floats": fit("data.name=npz", "data.root={d}/big.npz",
                                      expected="array x declares shape (80000, 80000)",
                                      **{"big.npz": _npz_declaring((80000, 80000))}),
    "corrupt savez_compressed file": fit("data.name=npz", "data.root={d}/bad.npz",
                                         expected="bad.npz is damaged",
                                         **{"bad.npz": _corrupt_compressed_npz}),
    "a PNG of 30000×30000 pixels": fit(
        "data.name=folder", "data.root={d}/imgs", expected="declares 900,000,000 pixels; allowed: "
        "at most 50,000,000 pixels", **{"imgs": _bomb_folder}),
    "a heartbeat of 10 ms": Case(("ablate", "{d}/spec.yaml", "--out", "{out}"),
                                 "CNNLAB_HEARTBEAT_S: got '0.01'; allowed: seconds, a number in "
                                 "[0.5, 86400)", {"spec.yaml": TINY_ABLATION},
                                 {"CNNLAB_HEARTBEAT_S": "0.01"}),
    "a grace of 20 ms": Case(("ablate", "{d}/spec.yaml", "--out", "{out}"),
                             "CNNLAB_GRACE_S: got '0.02'", {"spec.yaml": TINY_ABLATION},
                             {"CNNLAB_GRACE_S": "0.02", "CNNLAB_HEARTBEAT_S": "0.5"}),
    # config values that read as something else, or as nothing sensible
    "comma-separated list": fit("model.channels=32,64", expected="model.channels: got '32,64' (write [32,64] for a list)"),
    "section given a value": fit("model=3", expected="model: got 3; allowed: a mapping with keys channels"),
    "list where a mapping belongs": fit("--config", "{d}/c.yaml", expected="model: got [1, 2]; allowed: a mapping with keys channels",
                                        **{"c.yaml": "model: [1, 2]\n"}),
    "number where a list belongs": fit("--config", "{d}/c.yaml", expected="model.channels: got 5; allowed: a list",
                                       **{"c.yaml": "model:\n  channels: 5\n"}),
    "binary config file": fit("--config", "{d}/c.yaml", expected="--config {d}/c.yaml: is not UTF-8 text",
                              **{"c.yaml": _bytes(RANDOM_BYTES)}),
    "duplicate key in a config file": fit("--config", "{d}/c.yaml", expected="(duplicate key 'lr')",
                                          **{"c.yaml": "optim:\n  lr: 0.1\n  lr: 0.2\n"}),
    "infinite learning rate": fit("optim.lr=.inf", expected="optim.lr: got inf; allowed: a finite number"),
    "infinite weight decay": fit("optim.weight_decay=.inf", expected="optim.weight_decay: got inf; allowed: a finite number"),
    "NaN momentum": fit("optim.momentum=.nan", expected="optim.momentum: got nan; allowed: a finite number"),
    "negative seed": fit("seed=-1", expected="seed: got -1; allowed: an integer in 0..4294967295"),
    "seed beyond 32 bits": fit("seed=4294967296", expected="seed: got 4294967296; allowed: an integer in 0..4294967295"),
    "negative split seed": fit("data.split_seed=-5", expected="data.split_seed: got -5"),
    "Hydra's + prefix": fit("+trainer.max_epochs=2", expected="cnnlab overrides are plain key=value, e.g. trainer.max_epochs="),
    "Hydra's ~ prefix": fit("~model.norm=batch", expected="cnnlab overrides are plain key=value, e.g. model.norm="),
    "unknown WANDB_MODE": Case(("fit", "--out", "{out}", "trainer.max_epochs=1"), "WANDB_MODE: got 'sometimes'; allowed: offline",
                               env={"WANDB_MODE": "sometimes"}),
    "empty WANDB_SILENT": Case(("fit", "--out", "{out}", "trainer.max_epochs=1"),
                               "W&B setting silent (environment variable WANDB_SILENT=''): Input "
                               "should be a valid boolean", env={"WANDB_MODE": "offline",
                                                                 "WANDB_SILENT": ""}),
    # data that would train on garbage
    "NaN pixel": fit("data.name=npz", "data.root={d}/d.npz", expected="1 pixel values are NaN or infinite; allowed: finite numbers",
                     **{"d.npz": _bad_pixels(np.nan, 1)}),
    "infinite pixels": fit("data.name=npz", "data.root={d}/d.npz", expected="3 pixel values are NaN or infinite",
                           **{"d.npz": _bad_pixels(-np.inf, 3)}),
    "one class in an npz": fit("data.name=npz", "data.root={d}/d.npz", expected="every image has the same label (1 class); allowed: at least two",
                               **{"d.npz": _npz(x=np.zeros((6, 8, 8), np.uint8), y=np.zeros(6, np.int64))}),
    "object classes array": fit("data.name=npz", "data.root={d}/d.npz", expected="holds an object array; allowed: numeric x and y",
                                **{"d.npz": _npz(x=np.zeros((6, 8, 8), np.uint8), y=np.arange(6) % 2, classes=np.array(["a", 1], dtype=object))}),
    "text pixels": fit("data.name=npz", "data.root={d}/d.npz", expected="array x has dtype <U1; allowed: integer",
                       **{"d.npz": _npz(x=np.full((6, 8, 8), "a"), y=np.arange(6) % 2)}),
    "one class folder": fit("data.name=folder", "data.root={d}/imgs", imgs=_one_class_folder,
                            expected="every image has the same label (1 class)"),
    "NaN pixels in a search": tune("name: x\noverrides: [data.name=npz, data.root={d}/d.npz]\n"
                                   "space: {optim.lr: {type: float, low: 0.001, high: 0.1}}\n", "pixel values are NaN or infinite",
                                   **{"d.npz": _bad_pixels(np.nan, 5, n=12)}),
    # specs whose arms would silently be the same, or mean something else
    "seed as a factor": ablate("name: x\nfactors: {seed: [1, 2]}\n", "factors.seed: seed is the replication axis, not a factor; allowed: seeds: N"),
    "seed inside a level": ablate("name: x\nfactors: {b: {one: {seed: 1}, two: {}}}\n", "factors.b.one: sets seed, the replication axis"),
    "a level twice": ablate("name: x\nfactors: {model.norm: [batch, batch, none]}\n", "level batch appears twice"),
    "one number spelled three ways": ablate("name: x\nfactors: {model.dropout: [0.1, 0.10, 1.0e-1]}\n", "level 0.1 appears twice"),
    "levels equal as config values": ablate("name: x\nfactors: {model.dropout: [0, 0.0]}\n",
                                            "arms 'model.dropout=0' and 'model.dropout=0.0' have the same config"),
    "named levels with the same content": ablate("name: x\nfactors: {n: {a: {model.norm: layer}, b: {model.norm: layer}}}\n",
                                                 "arms 'n=a' and 'n=b' have the same config"),
    "two factors set one key": ablate("name: x\nfactors: {model.norm: [batch, none], n: {a: {model.norm: layer}, b: {}}}\n",
                                      "factors model.norm and n both set model.norm"),
    "metric is a list": ablate("name: x\nmetric: [test_acc]\nfactors: {model.norm: [batch]}\n", "unknown metric ['test_acc']"),
    "baseline names an unknown factor": ablate("name: x\nfactors: {model.norm: [batch, none]}\nbaseline: {model.nrm: batch}\n",
                                               "baseline names 'model.nrm', not a factor; allowed: model.norm"),
    "duplicate key in a spec": ablate("name: x\nname: y\nfactors: {model.norm: [batch]}\n", "(duplicate key 'name')"),
    "binary spec": Case(("ablate", "{d}/spec.yaml", "--out", "{out}"), "spec {d}/spec.yaml: is not UTF-8 text",
                        {"spec.yaml": _bytes(RANDOM_BYTES)}),
    # storages that are not cnnlab's (nothing may be appended, created or changed)
    "storage is a text file": ablate(TINY_ABLATION, "--storage {d}/notes.txt: is not an Optuna journal", "--storage",
                                     "{d}/notes.txt", **{"notes.txt": "my notes\nmore notes\n"}),
    "storage is JSON lines": ablate(TINY_ABLATION, "is not an Optuna journal", "--storage", "{d}/log.jsonl",
                                    **{"log.jsonl": '{"event": 1}\n{"event": 2}\n'}),
    "storage is random bytes": tune(TINY_SEARCH, "is not an Optuna journal", "--storage", "{d}/blob", blob=_bytes(RANDOM_BYTES)),
    "storage one line without a newline": ablate(TINY_ABLATION, "is not an Optuna journal", "--storage", "{d}/t.txt",
                                                 **{"t.txt": "hello"}),
    "journal corrupt in the middle": ablate(TINY_ABLATION, "line 2 is corrupt", "--storage", "{d}/s.journal",
                                            **{"s.journal": JOURNAL_RECORD + "garbage\n" + JOURNAL_RECORD}),
    "ablate into a foreign database": ablate(TINY_ABLATION, "holds tables that are not an Optuna storage (users)",
                                             "--storage", "sqlite:///{d}/their.db", **{"their.db": _sqlite("users")}),
    "sqlite file of random bytes": ablate(TINY_ABLATION, "cannot open", "--storage", "sqlite:///{d}/blob.db",
                                          **{"blob.db": _bytes(RANDOM_BYTES)}),
    "report from a foreign database": Case(("report", "x", "--out", "{out}", "--storage", "sqlite:///{d}/their.db"),
                                           "holds tables that are not an Optuna storage (users)", {"their.db": _sqlite("users")}),
    "report from a missing database": Case(("report", "x", "--out", "{out}", "--storage", "sqlite:///{d}/none.db"),
                                           "no such database file"),
    "report of a search": Case(("report", "s", "--out", "{out}", "--storage", "{d}/s.journal"),
                               "study 's' is not an ablation (a cnnlab tune search?)", {"s.journal": _search_journal}),
    "sync of an unknown study": Case(("sync", "{d}/no-such-study"),
                                     "no-such-study: no such folder or study under reports/"),
    "sync with a bad timeout": Case(("sync", "--timeout", "0"), "--timeout: got '0'"),
    # output folders that are not cnnlab's
    "fit into the user's folder": Case(("fit", "--out", "{d}"), "--out {d}: holds files cnnlab did not write (notes.txt)",
                                       {"notes.txt": "mine"}),
    "overwrite a user's metrics.json": Case(("fit", "--out", "{d}", "--overwrite"), "holds files cnnlab did not write (metrics.json)",
                                            {"metrics.json": "{}"}),
    "fit into the root": Case(("fit", "--out", "/", "--overwrite"), "--out /: is the root directory"),
    "fit into the home folder": Case(("fit", "--out", "~", "--overwrite"), "--out ~: is your home directory"),
    "ablate into the user's folder": Case(("ablate", "{d}/spec.yaml", "--out", "{d}"), "--out {d}: holds files cnnlab did not write",
                                          {"spec.yaml": TINY_ABLATION, "report.md": "my report"}),
    "tune into the user's folder": Case(("tune", "{d}/spec.yaml", "--out", "{d}"), "--out {d}: holds files cnnlab did not write",
                                        {"spec.yaml": TINY_SEARCH}),
    # single output files that are the user's
    "lr-find over a user's PNG": Case(("lr-find", "--out", "{d}/plot.png", "trainer.max_epochs=1"),
                                      "--out {d}/plot.png: exists and cnnlab did not write it", {"plot.png": _user_png}),
    "preview over a user's PNG": Case(("augment-preview", "--out", "{d}/p.png", "data.augment.hflip=true"),
                                      "--out {d}/p.png: exists and cnnlab did not write it", {"p.png": _user_png}),
    "preview into the root folder": Case(("augment-preview", "--out", "/p.png", "data.augment.hflip=true"),
                                         "--out /: is the root directory"),
    # CLI counts
    "zero preview samples": Case(("augment-preview", "--out", "{d}/p.png", "--samples", "0"), "--samples: got '0'; allowed: a positive integer"),
    "negative preview variants": Case(("augment-preview", "--out", "{d}/p.png", "--variants", "-2"), "--variants: got '-2'"),
    "zero classes": Case(("summary", "--input-shape", "3,32,32", "--num-classes", "0"), "--num-classes: got '0'"),
    # counts with no ceiling ran for minutes or crashed; sizes that cannot be allocated
    "a million seeds": ablate(TINY_ABLATION + "seeds: 1000000\n", "seeds: got 1000000; allowed: an integer from 1 to 1,000"),
    "--seeds a million": ablate(TINY_ABLATION, "--seeds: got 1000000; allowed: an integer from 1 to 1,000", "--seeds", "1000000"),
    "a million arms": ablate(MILLION_ARMS, "its factors make 1,000,000 arms; allowed: at most 1,000"),
    "a million trials": tune(TINY_SEARCH, "--trials: got 1000000; allowed: an integer from 1 to 10,000", "--trials", "1000000"),
    "one fold on the command line": tune(TINY_SEARCH, "--folds: got 1; allowed: an integer from 2 to 100", "--folds", "1"),
    "a huge preview": Case(("augment-preview", "--out", "{d}/p.png", "--samples", "100000", "--variants", "100000",
                            "data.augment.hflip=true"), "--samples: got 100000; allowed: an integer from 1 to 256"),
    "a billion hidden units": fit("model.hidden_units=[1000000000]", expected="model: 267,000,019,018 parameters and"),
    "a million channels": fit("model.channels=[1000000]", expected="model: 2,060,001,418 parameters and"),
    "100,000 threads": fit("trainer.threads=100000", expected="trainer.threads: got 100000; allowed: an integer from 0 to 256"),
    "image size 60,000": fit("data.name=folder", "data.root={d}/img", "data.image_size=60000",
                             expected="data.image_size: 60000 makes 6 images of 241.4 GiB", img=_classes()),
    "a FIFO among a class's images": fit("data.name=folder", "data.root={d}/img", expected="6.png is not a regular file",
                                         img=_fifo_in_classes),
    "an accelerator this machine lacks": fit("trainer.accelerator=mps",
                                             expected="trainer.accelerator: got 'mps', but this machine has no mps device"),
    "two nodes without a cluster": fit("trainer.num_nodes=2", expected="trainer.num_nodes: got 2, but no cluster launcher"),
    "a 245-byte --out": Case(("fit", "--out", "{d}/" + "a" * 245), "too long (245 bytes in its name"),
    "a 4,200-byte path": Case(("fit", "--out", "{d}/" + "/".join(["b" * 200] * 21)), "in its path); allowed: at most 223"),
    "--storage a device": ablate(TINY_ABLATION, "--storage /dev/null: is not a regular file", "--storage", "/dev/null"),
    "--storage a FIFO": ablate(TINY_ABLATION, "fifo: is not a regular file", "--storage", "{d}/fifo",
                               fifo=lambda p: os.mkfifo(p)),
    "a FIFO as a run's manifest": Case(("fit", "--out", "{d}/run"), "holds files cnnlab did not write (.cnnlab.json)",
                                       {"run": lambda p: (p.mkdir(), os.mkfifo(p / ".cnnlab.json"))}),
    "plan with a negative seed": Case(("plan", "norm", "--quick", "--seed", "-1"), "--seed: got -1; allowed: an integer from 0"),
    "plan with no pilot run yet": Case(("plan", "norm", "--out", "{d}/nothing-here"), "plan norm: no pilot for norm-pilot (none shipped, no pilot study in"),
    "plan for a NaN effect": Case(("plan", "norm", "--quick", "--effect", "nan"), "--effect: got nan; allowed: a positive finite"),
    "plan for a negative effect": Case(("plan", "norm", "--quick", "--effect", "-0.5"), "--effect: got -0.5"),
    "plan with 10⁸ simulations": Case(("plan", "norm", "--quick", "--sims", "100000000"), "--sims: got 100000000"),
    "100,000 one-image classes": fit("data.name=npz", "data.root={d}/many.npz", expected="cannot cut a stratified test split",
                                     **{"many.npz": _npz(x=np.zeros((100_000, 4, 4), np.uint8), y=np.arange(100_000))}),
    "sync to a malformed server URL": Case(("sync", "{d}/runs"), "W&B server 'http://[bad': not a server URL (Invalid IPv6 URL)",
                                          {"runs": _offline_run}, {"WANDB_BASE_URL": "http://[bad"}),
    "sync to a server that is no URL": Case(("sync", "{d}/runs"), "W&B server 'notaurl': not a server URL; allowed: http(s)://",
                                            {"runs": _offline_run}, {"WANDB_BASE_URL": "notaurl"}),
    "report of a study with no finished trial": Case(("report", "x", "--out", "{d}/study"), "study 'x' has no finished trial to report",
                                                     {"study": _unfinished_study}),
}


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders and FIFOs)."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


@pytest.mark.parametrize("case", CATALOGUE)
def test_bad_input(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    spec = CATALOGUE[case]
    for key, value in spec.env.items():
        monkeypatch.setenv(key, value)
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name, content in spec.files.items():
        if callable(content):
            content(inputs / name)
        else:
            (inputs / name).write_text(content.replace("{d}", str(inputs)))
    before = _tree(tmp_path)
    args = [a.replace("{d}", str(inputs)).replace("{out}", str(out)) for a in spec.args]
    start = time.monotonic()
    status, stdout, err = cli(*args)
    assert status == 2, err
    assert stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cnnlab: error: ") and len(lines[0]) <= 2100  # readable (was 689 KB)
    assert spec.expected.replace("{d}", str(inputs)) in lines[0], lines[0]
    assert "Traceback" not in err
    assert _tree(tmp_path) == before  # nothing created, nothing changed (out never appears)
    assert time.monotonic() - start < 10  # an unreachable database is reported, not waited on


def test_the_catalogue_covers_every_kind_of_input() -> None:
    assert len(CATALOGUE) >= 186
    commands = {c.args[0] for c in CATALOGUE.values() if c.args}
    assert {"fit", "ablate", "tune", "report", "summary", "export", "lr-find", "sync"} <= commands


def test_the_console_script_exits_2_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cnnlab.cli", "fit", "model.norm=bogus"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("cnnlab: error: model.norm: unknown value 'bogus'; allowed: "
                                   "batch, layer, instance, group, none")
    assert list(tmp_path.iterdir()) == []


def test_predict_refuses_what_it_cannot_classify_honestly(cli, tmp_path: Path) -> None:
    """Inputs that used to be tracebacks, huge allocations or rows of "probability nan"."""
    run = tmp_path / "run"
    assert cli("fit", "--out", str(run), "trainer.max_epochs=1", "model.channels=[8]",
               "model.hidden_units=[16]")[0] == 0
    inputs = tmp_path / "in"
    inputs.mkdir()
    cases = {
        "empty.npz": (_npz(x=np.zeros((0, 8, 8), np.uint8)), "predict: no images in"),
        "nan.npz": (_npz(x=np.full((2, 8, 8), np.nan, np.float32)),
                    "predict: 128 pixel values are NaN or infinite"),
        "big.npz": (_npz_declaring((80000, 80000)), "array x declares shape (80000, 80000)"),
        "bad.npz": (_corrupt_compressed_npz, "bad.npz is not an .npz file with a numeric array x"),
        "bomb.png": (_png_header(30000, 30000), "declares 900,000,000 pixels"),
    }
    for name, (write, _) in cases.items():
        write(inputs / name)
    before = _tree(tmp_path)
    for name, (_, expected) in cases.items():
        status, stdout, err = cli("predict", str(run), str(inputs / name))
        assert status == 2 and stdout == "", (name, err)
        assert len(err.strip().splitlines()) == 1 and expected in err, (name, err)
    assert _tree(tmp_path) == before


def test_an_unreadable_data_folder_is_not_called_a_full_disk(
        cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It was reported as "allowed: a folder you may write to" (the tests run as root, whom no
    permission stops: the denial is simulated where the folder is listed)."""
    _classes()(tmp_path / "imgs")

    def denied(directory: str) -> None:
        raise PermissionError(13, "Permission denied", directory)

    monkeypatch.setattr("cnnlab.data.sources.find_classes", denied)
    status, _, err = cli("fit", "--out", str(tmp_path / "out"), "data.name=folder",
                         f"data.root={tmp_path / 'imgs'}")
    assert status == 2 and "(permission denied); allowed: data files and folders you may read" in err
    assert "write to" not in err and not (tmp_path / "out").exists()


def test_hand_edited_exports_and_checkpoints_are_one_line(cli, tmp_path: Path) -> None:
    """Edited files used to be tracebacks, or allocations the size their edited shape claims."""
    run, export = tmp_path / "run", tmp_path / "model.pt"
    assert cli("fit", "--out", str(run), "trainer.max_epochs=1", "model.channels=[8]",
               "model.hidden_units=[16]")[0] == 0
    assert cli("export", str(run), "--out", str(export))[0] == 0
    images = tmp_path / "x.npz"
    np.savez(images, x=np.zeros((2, 8, 8), np.uint8))
    original = torch.load(export, weights_only=True)
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    edits: dict[str, tuple[Callable[[dict], None], str]] = {
        "unknown norm": (lambda d: d["config"]["model"].update(norm="bogus"),
                         "its config does not load (model.norm: unknown value 'bogus'"),
        "more classes": (lambda d: d.update(classes=[*d["classes"], "extra"]),
                         "its weights do not fit its config"),
        "huge input": (lambda d: d.update(input_shape=[1, 100000, 100000]),
                       "do not describe an image model"),
        "big input": (lambda d: d.update(input_shape=[1, 4096, 4096]),
                      "its config describes a network of"),
        "no mean": (lambda d: d.pop("mean"), "missing or malformed (KeyError"),
        "other architecture": (lambda d: d["config"]["model"].update(channels=[16, 32]),
                               "its weights do not fit its config"),
    }
    for name, (edit, expected) in edits.items():
        for kind, base in (("export", original), ("checkpoint", ckpt)):
            edited = copy.deepcopy(base)
            edit(edited if kind == "export" else edited["hyper_parameters"])
            path = tmp_path / f"{kind}-{name.replace(' ', '_')}.{'pt' if kind == 'export' else 'ckpt'}"
            torch.save(edited, path)
            status, stdout, err = cli("predict", str(path), str(images))
            assert status == 2 and stdout == "", (name, kind, err)
            assert len(err.strip().splitlines()) == 1 and expected in err, (name, kind, err)
