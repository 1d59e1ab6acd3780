"""Every on-disk source, from tiny files in each real format written here (nothing downloaded)."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from cnnlab.config import load_config
from cnnlab.data.sources import SOURCES
from cnnlab.errors import CnnlabError
from cnnlab.training.run import run

RNG = np.random.default_rng(0)


def _images(n: int, shape: tuple[int, ...], labels: np.ndarray) -> np.ndarray:
    """Learnable images: a bright band whose position depends on the label, plus noise."""
    x = RNG.integers(0, 60, size=(n, *shape), dtype=np.uint8)
    for i, label in enumerate(labels):
        x[i, ..., 2 * label : 2 * label + 2, :] = 250  # rows, whatever the channel layout
    return x


def _labels(per_class: int, classes: int = 10) -> np.ndarray:
    return RNG.permutation(np.repeat(np.arange(classes), per_class)).astype(np.uint8)


def write_idx(raw: Path, prefix: str, per_class: int) -> None:
    """Gzipped IDX files, as published for MNIST and Fashion-MNIST."""
    y = _labels(per_class)
    x = _images(len(y), (28, 28), y)
    raw.mkdir(parents=True, exist_ok=True)
    with gzip.open(raw / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, len(x), 28, 28) + x.tobytes())
    with gzip.open(raw / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, len(y)) + y.tobytes())


def write_cifar(folder: Path, per_class: int) -> None:
    """CIFAR-10 python pickle batches: data rows of 3072 bytes (R, G, B planes), protocol 2."""
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        y = _labels(per_class)
        x = _images(len(y), (3, 32, 32), y).reshape(len(y), -1)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": x, "labels": y.tolist()}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def write_folder(root: Path, per_class: int, channels: int = 3, size: int = 16) -> None:
    for label in range(3):
        (root / f"kind_{label}").mkdir(parents=True)
        for i in range(per_class):
            img = torch.as_tensor(_images(1, (channels, size, size), np.array([label]))[0])
            write_png(img, str(root / f"kind_{label}" / f"{i}.png"))


def fit(tmp_path: Path, *overrides: str) -> dict[str, float]:
    cfg = load_config(overrides=["trainer.max_epochs=1", "wandb.mode=disabled",
                                 "model.channels=[8,16]", "data.val_fraction=0.2", *overrides])
    return run(cfg, tmp_path / "run").metrics


@pytest.mark.parametrize(("name", "folder", "prefix"),
                         [("mnist", "MNIST", ""), ("fashion_mnist", "FashionMNIST", "")])
def test_idx_datasets_from_gzipped_files(tmp_path: Path, name: str, folder: str, prefix: str) -> None:
    write_idx(tmp_path / folder / "raw", "train", per_class=12)
    write_idx(tmp_path / folder / "raw", "t10k", per_class=3)
    data = SOURCES[name](load_config(overrides=[f"data.root={tmp_path}"]).data)
    assert data.x.shape == (150, 1, 28, 28) and data.test_from == 120
    assert 0 <= data.x.min() and data.x.max() <= 1 and len(data.classes) == 10
    metrics = fit(tmp_path, f"data.name={name}", f"data.root={tmp_path}")
    assert 0 <= metrics["test_acc"] <= 1


def test_cifar10_from_pickle_batches(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar-10-batches-py", per_class=2)
    data = SOURCES["cifar10"](load_config(overrides=[f"data.root={tmp_path}"]).data)
    assert data.x.shape == (120, 3, 32, 32) and data.test_from == 100
    assert data.classes[3] == "class3"
    metrics = fit(tmp_path, "data.name=cifar10", f"data.root={tmp_path}")
    assert 0 <= metrics["test_acc"] <= 1


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_of_pngs(tmp_path: Path, channels: int) -> None:
    write_folder(tmp_path / "imgs", per_class=10, channels=channels)
    data = SOURCES["folder"](load_config(overrides=[f"data.root={tmp_path / 'imgs'}"]).data)
    assert data.x.shape == (30, channels, 16, 16) and data.classes == ["kind_0", "kind_1", "kind_2"]
    assert data.y.tolist() == [0] * 10 + [1] * 10 + [2] * 10
    metrics = fit(tmp_path, "data.name=folder", f"data.root={tmp_path / 'imgs'}",
                  "data.test_fraction=0.3")
    assert 0 <= metrics["test_acc"] <= 1


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_layouts(tmp_path: Path, layout: str) -> None:
    y = np.repeat(np.array([3, 7, 9]), 10)
    x = _images(30, (12, 12), y % 5)
    x = {"NHW": x, "NHWC": np.repeat(x[..., None], 3, -1),
         "NCHW": np.repeat(x[:, None], 3, 1)}[layout]
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = SOURCES["npz"](load_config(overrides=[f"data.root={tmp_path / 'd.npz'}"]).data)
    assert data.x.shape == (30, 1 if layout == "NHW" else 3, 12, 12)
    assert data.classes == ["3", "7", "9"] and sorted(set(data.y.tolist())) == [0, 1, 2]
    metrics = fit(tmp_path, "data.name=npz", f"data.root={tmp_path / 'd.npz'}",
                  "data.test_fraction=0.3", "model.channels=[8]")
    assert 0 <= metrics["test_acc"] <= 1


def _error(tmp_path: Path, *overrides: str) -> str:
    cfg = load_config(overrides=list(overrides))
    with pytest.raises(CnnlabError) as err:
        SOURCES[cfg.data.name](cfg.data)
    return str(err.value)


def test_missing_torchvision_files_say_where_and_how(tmp_path: Path) -> None:
    message = _error(tmp_path, "data.name=mnist", f"data.root={tmp_path}")
    assert str(tmp_path / "MNIST") in message and "data.download=true" in message
    message = _error(tmp_path, "data.name=cifar10", f"data.root={tmp_path}")
    assert "cifar-10-batches-py" in message and "data.download=true" in message


def test_folder_errors(tmp_path: Path) -> None:
    write_folder(tmp_path / "imgs", per_class=2)
    (tmp_path / "imgs" / "kind_empty").mkdir()
    assert "class folder" in _error(tmp_path, "data.name=folder", f"data.root={tmp_path / 'imgs'}")
    (tmp_path / "imgs" / "kind_empty").rmdir()
    (tmp_path / "imgs" / "kind_0" / "broken.png").write_bytes(b"not a png")
    message = _error(tmp_path, "data.name=folder", f"data.root={tmp_path / 'imgs'}")
    assert "cannot decode image" in message and "broken.png" in message
    (tmp_path / "imgs" / "kind_0" / "broken.png").unlink()
    write_png(torch.zeros(3, 20, 20, dtype=torch.uint8), str(tmp_path / "imgs" / "kind_1" / "big.png"))
    message = _error(tmp_path, "data.name=folder", f"data.root={tmp_path / 'imgs'}")
    assert "is 20×20" in message and "data.image_size" in message
    cfg = load_config(overrides=["data.name=folder", f"data.root={tmp_path / 'imgs'}",
                                 "data.image_size=8"])
    assert SOURCES["folder"](cfg.data).x.shape[1:] == (3, 8, 8)
    assert "not a directory" in _error(tmp_path, "data.name=folder", f"data.root={tmp_path / 'no'}")


def test_npz_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 8, 8), dtype=np.uint8))
    assert "has no array y" in _error(tmp_path, "data.name=npz", f"data.root={path}")
    np.savez(path, x=np.zeros((4, 8, 8), dtype=np.uint8), y=np.array([0, 1, 0]))
    assert "one integer label per image" in _error(tmp_path, "data.name=npz", f"data.root={path}")
    np.savez(path, x=np.zeros((4, 8, 8), dtype=np.uint8), y=np.array([0, 1, 0, 5]),
             classes=np.array(["a", "b"]))
    assert "labels run 0..5 but there are 2 classes" in _error(tmp_path, "data.name=npz",
                                                               f"data.root={path}")
    np.savez(path, x=np.zeros((4, 5, 8, 8), dtype=np.uint8), y=np.zeros(4, dtype=int))
    assert "array x has shape (4, 5, 8, 8)" in _error(tmp_path, "data.name=npz", f"data.root={path}")
    path.write_bytes(b"corrupt")
    assert "not a readable .npz" in _error(tmp_path, "data.name=npz", f"data.root={path}")
    assert "does not exist" in _error(tmp_path, "data.name=npz", f"data.root={tmp_path / 'x.npz'}")


def test_fit_cli_on_a_users_folder_and_npz(cli, tmp_path: Path) -> None:
    write_folder(tmp_path / "imgs", per_class=10)
    status, out, err = cli("fit", "--out", tmp_path / "f", "data.name=folder",
                           f"data.root={tmp_path / 'imgs'}", "trainer.max_epochs=1",
                           "data.test_fraction=0.3", "data.val_fraction=0.2")
    assert status == 0, err
    assert "test_acc" in out
    np.savez(tmp_path / "d.npz", x=_images(40, (10, 10), np.repeat(np.arange(4), 10)),
             y=np.repeat(np.arange(4), 10))
    status, _, err = cli("fit", "--out", tmp_path / "n", "data.name=npz",
                         f"data.root={tmp_path / 'd.npz'}", "trainer.max_epochs=1",
                         "data.test_fraction=0.3", "data.val_fraction=0.2", "model.channels=[8]")
    assert status == 0, err
    status, _, err = cli("fit", "--out", tmp_path / "bad", "data.name=npz",
                         f"data.root={tmp_path / 'missing.npz'}")
    assert status == 2 and "does not exist" in err and not (tmp_path / "bad").exists()


def test_images_decode_as_a_viewer_shows_them(tmp_path: Path) -> None:
    """Palette PNGs were read as palette indices (a black background read 0.73), a CMYK JPEG's
    black ink was dropped (50% grey read as white) and EXIF rotation ignored."""
    from PIL import Image

    from cnnlab.data.sources import decode_file

    palette = Image.new("P", (8, 8), 5)  # index 5 is black in this palette
    palette.putpalette([255, 255, 255] * 5 + [0, 0, 0] + [255, 0, 0] * 250)
    palette.putpixel((0, 0), 6)
    palette.save(tmp_path / "palette.png")
    x = decode_file(tmp_path / "palette.png")
    assert x.shape == (3, 8, 8) and x[:, 1:, 1:].max() == 0 and x[:, 0, 0].tolist() == [1, 0, 0]

    grey = Image.new("CMYK", (8, 8), (0, 0, 0, 128))  # 50% black ink
    grey.save(tmp_path / "cmyk.jpg", quality=95)
    x = decode_file(tmp_path / "cmyk.jpg")
    assert x.shape == (3, 8, 8) and abs(float(x.mean()) - 0.5) < 0.05

    tall = Image.new("L", (4, 8), 0)  # stored 4 wide, 8 high; EXIF says: rotate to 8×4
    tall.paste(255, (0, 0, 4, 1))  # the stored top row is white
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    tall.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    x = decode_file(tmp_path / "rotated.jpg")
    assert x.shape == (1, 4, 8) and x[0, :, -1].min() > 0.9  # the white row is now the right column

    deep = Image.fromarray(np.full((4, 4), 32768, np.uint16))  # 16-bit grey, half way
    deep.save(tmp_path / "deep.png")
    assert abs(float(decode_file(tmp_path / "deep.png").mean()) - 0.5) < 1e-3


def test_a_folder_dataset_reads_every_file_or_names_the_one_it_cannot(tmp_path: Path,
                                                                      monkeypatch) -> None:
    """GIFs were skipped without a word; a FIFO named ``6.png`` hung the load."""
    import os

    from PIL import Image

    from cnnlab.data.sources import load_folder

    cfg = load_config([], ["data.name=folder", f"data.root={tmp_path}"]).data
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("L", (8, 8), 40 * i).save(tmp_path / label / f"{i}.png")
    frames = [Image.new("L", (8, 8), v) for v in (200, 10)]  # animated: its first frame counts
    frames[0].save(tmp_path / "a" / "moving.gif", save_all=True, append_images=frames[1:])
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0junk")  # hidden: not an image, not read
    data = load_folder(cfg)
    assert len(data.y) == 7 and abs(float(data.x[3].mean()) - 200 / 255) < 0.01  # sorted: moving.gif 4th

    (tmp_path / "b" / "notes.txt").write_text("not an image")
    with pytest.raises(CnnlabError, match=r"cannot decode image .*notes\.txt"):
        load_folder(cfg)
    (tmp_path / "b" / "notes.txt").unlink()
    os.mkfifo(tmp_path / "b" / "6.png")
    with pytest.raises(CnnlabError, match=r"6\.png is not a regular file"):
        load_folder(cfg)


@pytest.mark.slow
def test_predict_takes_an_animated_gif_by_its_first_frame(cli, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "run"
    assert cli("fit", "--out", out, "trainer.max_epochs=1", "model.channels=[8]",
               "model.hidden_units=[16]", "wandb.mode=disabled")[0] == 0
    frames = [Image.new("L", (8, 8), v) for v in (200, 10)]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:])
    status, stdout, err = cli("predict", out, tmp_path / "moving.gif")
    assert status == 0 and "Traceback" not in err, err
    assert "moving.gif" in stdout


class _Touch:
    """What a crafted batch holds: unpickling it calls ``Path.touch`` on a file of its choice."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_crafted_cifar_pickle_runs_no_code(tmp_path: Path) -> None:
    """A ``cifar-10-batches-py`` folder of crafted pickles used to execute code when loaded (it
    wrote a file), then crash. Now only arrays, lists and strings are built."""
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, per_class=2)
    ran = tmp_path / "the pickle ran code"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({"data": np.zeros((20, 3072), np.uint8), "labels": [_Touch(ran)] * 20}, f)
    cfg = load_config([], ["data.name=cifar10", f"data.root={tmp_path}"]).data
    with pytest.raises(CnnlabError, match=r"cannot read CIFAR-10 .*\(it names pathlib\.Path\.touch"
                                          r", which is not an array\); allowed: the dataset's "
                                          "original files"):
        SOURCES["cifar10"](cfg)
    assert not ran.exists()
    write_cifar(tmp_path / "good" / "cifar-10-batches-py", per_class=2)  # the real format loads
    good = SOURCES["cifar10"](load_config([], ["data.name=cifar10",
                                               f"data.root={tmp_path / 'good'}"]).data)
    assert good.x.shape == (120, 3, 32, 32) and good.test_from == 100 and good.classes[0] == "class0"
    from cnnlab.data.sources import SHAPES  # what --print-config assumes without reading files

    assert good.input_shape == SHAPES["cifar10"] and len(good.classes) == 10
    digits = SOURCES["digits"](load_config().data)
    assert digits.input_shape == SHAPES["digits"] and len(digits.classes) == 10
