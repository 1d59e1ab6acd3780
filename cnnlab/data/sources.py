"""Datasets by name (``data.name``), each loaded whole into memory as float images.

Every source returns ``ImageData``; datasets with an official test split (MNIST, Fashion-MNIST,
CIFAR-10) keep it: its samples come last and ``test_from`` marks where they start.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import pickle
import re
import shutil
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from sklearn.datasets import load_digits as sk_digits
from torch import Tensor
from torchvision.datasets import CIFAR10, MNIST, FashionMNIST
from torchvision.datasets.folder import find_classes
from torchvision.datasets.utils import download_and_extract_archive
from torchvision.transforms.v2.functional import resize

from cnnlab.config import DataConfig
from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class ImageData:
    """Images ``x`` (N×C×H×W float, uint8 sources scaled to [0, 1]), labels ``y`` (N, int64),
    class names, and where an official test split starts (None: cut one by stratified split)."""

    x: Tensor
    y: Tensor
    classes: list[str]
    test_from: int | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x.shape[1:]
        return c, h, w

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of what a run trains and tests on (pixels, labels, class names, the test
        split's start): the data's identity, whatever path or timestamps it has."""
        sha = hashlib.sha256(repr((self.classes, self.test_from, tuple(self.x.shape))).encode())
        for tensor in (self.x, self.y):
            sha.update(tensor.contiguous().numpy().data)
        return sha.hexdigest()


INTEGER_SCALE = {torch.uint8: 255.0, torch.uint16: 65535.0}  # 8- and 16-bit images → [0, 1]


def _uint8_images(x: np.ndarray | Tensor) -> Tensor:
    x = torch.as_tensor(x)
    scale = INTEGER_SCALE.get(x.dtype)
    return x.float().div_(scale) if scale else x.float()


def load_digits(cfg: DataConfig) -> ImageData:
    """scikit-learn's 8×8 handwritten digits (1,797 images, shipped with the package)."""
    bunch = sk_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    return ImageData(x, y, [str(name) for name in bunch.target_names])


def _gunzip_idx(raw: Path) -> None:
    """torchvision reads raw IDX files; unpack ``*.gz`` copies placed there by hand."""
    for packed in raw.glob("*-ubyte.gz"):
        target = packed.with_suffix("")
        if not target.exists():
            with gzip.open(packed, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _torchvision_pair(cfg: DataConfig, cls: type, label: str, folder: str, files: str) -> ImageData:
    """Train + official test split of a torchvision dataset class, test samples last."""
    root = Path(cfg.root)
    _gunzip_idx(root / folder / "raw")
    try:
        train, test = (cls(str(root), train=flag, download=cfg.download) for flag in (True, False))
    except RuntimeError:
        raise CnnlabError(
            f"data.root: {label} files not found (or corrupt) under {root / folder} "
            f"(looked for {files}); allowed: set data.download=true to fetch them, or place "
            "the files there"
        ) from None
    except (OSError, EOFError, ValueError, KeyError) as err:
        raise CnnlabError(f"data.root: cannot read {label} under {root / folder} ({err}); "
                          "allowed: the dataset's original files") from None
    x = [_uint8_images(d.data) for d in (train, test)]
    x = [t.unsqueeze(1) if t.dim() == 3 else t.permute(0, 3, 1, 2) for t in x]
    y = [torch.as_tensor(np.asarray(d.targets), dtype=torch.int64) for d in (train, test)]
    return ImageData(torch.cat(x).contiguous(), torch.cat(y), list(train.classes), len(y[0]))


IDX_FILES = "raw/train-images-idx3-ubyte[.gz] and the other three IDX files"


def load_mnist(cfg: DataConfig) -> ImageData:
    return _torchvision_pair(cfg, MNIST, "MNIST", "MNIST", IDX_FILES)


def load_fashion_mnist(cfg: DataConfig) -> ImageData:
    return _torchvision_pair(cfg, FashionMNIST, "Fashion-MNIST", "FashionMNIST", IDX_FILES)


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays, lists, dicts, numbers, bytes and strings and
    nothing else: CIFAR-10's python batches are pickles, and a crafted one would otherwise
    run whatever function it names while it loads."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        (core, name) for core in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")} | {
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which is not an array")
        return super().find_class(module, name)


def _unpickle(path: Path) -> Any:
    with open(path, "rb") as f:
        return _ArraysOnly(f, encoding="latin1").load()


CIFAR_FILES = "data_batch_1..5, test_batch, batches.meta"


def load_cifar10(cfg: DataConfig) -> ImageData:
    """The five training batches, then the test batch (``test_from``), read by ``_ArraysOnly``;
    ``data.download`` fetches the archive first (torchvision checks its published MD5)."""
    root = Path(cfg.root)
    folder = root / "cifar-10-batches-py"
    names = [name for name, _ in (*CIFAR10.train_list, *CIFAR10.test_list)]
    if cfg.download and not all((folder / n).is_file() for n in names):
        download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename,
                                     md5=CIFAR10.tgz_md5)
    xs, ys = [], []
    try:
        for name in names:
            if not (folder / name).is_file():
                raise FileNotFoundError(folder / name)
            batch = _unpickle(folder / name)
            xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch["labels"], dtype=np.int64))
            if len(ys[-1]) != len(xs[-1]):
                raise ValueError(f"{name} has {len(xs[-1])} images and {len(ys[-1])} labels")
        classes = [str(c) for c in _unpickle(folder / CIFAR10.meta["filename"])[
            CIFAR10.meta["key"]]]
    except FileNotFoundError:
        raise CnnlabError(f"data.root: CIFAR-10 files not found under {folder} (looked for "
                          f"{CIFAR_FILES}); allowed: set data.download=true to fetch them, or "
                          "place the files there") from None
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, KeyError, TypeError,
            AttributeError, IndexError) as err:
        raise CnnlabError(f"data.root: cannot read CIFAR-10 under {folder} ({err}); allowed: "
                          "the dataset's original files") from None
    test_from = sum(len(y) for y in ys[:-1])
    return ImageData(_uint8_images(np.concatenate(xs)), torch.as_tensor(np.concatenate(ys)),
                     classes, test_from)


def _resize(images: list[Tensor], cfg: DataConfig, files: list[str]) -> list[Tensor]:
    if cfg.image_size is not None:
        need, free = 4 * len(images) * 3 * cfg.image_size**2, _free_bytes()  # float32, ≤ 3 channels
        if need > free // 2:
            raise CnnlabError(f"data.image_size: {cfg.image_size} makes {len(images):,} images "
                              f"of {need / 2**30:,.1f} GiB; allowed: a size whose images fit in "
                              f"half the free memory ({free / 2**30:.1f} GiB free)")
        return [resize(img, [cfg.image_size, cfg.image_size], antialias=True) for img in images]
    first = images[0].shape[1:]
    for img, name in zip(images, files, strict=True):
        if img.shape[1:] != first:
            raise CnnlabError(
                f"data.root: {name} is {img.shape[2]}×{img.shape[1]} but {files[0]} is "
                f"{first[1]}×{first[0]}; allowed: images of one size, or set data.image_size"
            )
    return images


def image_files(folder: Path) -> list[Path]:
    """A folder's images, sorted: every entry but hidden ones (``.DS_Store``), so a file that
    does not decode is named (``decode_file``), never skipped without a word."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def load_folder(cfg: DataConfig) -> ImageData:
    """One sub-folder per class of image files (like torchvision's ImageFolder)."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise CnnlabError(f"data.root: {root} is not a directory; allowed: a folder with one "
                          "sub-folder of images per class")
    try:
        classes, _ = find_classes(str(root))
    except FileNotFoundError:
        raise CnnlabError(f"data.root: {root} has no class sub-folders; allowed: a folder with "
                          "one sub-folder of images per class") from None
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = image_files(root / name)
        if not found:
            raise CnnlabError(f"data.root: class folder {root / name} has no images; allowed: "
                              "image files (PNG, JPEG, GIF, ...)")
        files += found
        labels += [label] * len(found)
    images = [decode_file(path) for path in files]
    rgb = any(img.shape[0] >= 3 for img in images)
    images = [img[:3] if rgb and img.shape[0] >= 3 else
              img[:1].expand(3, -1, -1) if rgb else img[:1] for img in images]
    images = _resize(images, cfg, [str(p) for p in files])
    return ImageData(torch.stack(images), torch.tensor(labels), classes)


MAX_PIXELS = 50_000_000  # per image: a bigger one is refused before it is decoded
GRAY = ("1", "L", "LA", "La")  # Pillow modes that stay one channel (8-bit)
DEEP = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # 16-bit gray, kept at its depth


def _pixels(img: Image.Image) -> np.ndarray:
    """H×W or H×W×3 floats in [0, 1] through Pillow's own conversions: a palette by its
    colours (not its indices), CMYK and YCbCr as RGB, 16-bit gray at its depth, alpha dropped
    (the colour under it kept), as an image viewer shows the pixels."""
    if img.mode in DEEP:
        return np.clip(np.asarray(img.convert("I"), dtype=np.float32) / 65535.0, 0.0, 1.0)
    if img.mode == "F":
        return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow's way to a palette's transparent colour
    gray = img.mode in GRAY or (img.mode == "P" and _gray_palette(img))
    return np.asarray(img.convert("L" if gray else "RGB"), dtype=np.float32) / 255.0


def _gray_palette(img: Image.Image) -> bool:
    palette = img.getpalette() or []
    return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette), 3))


def decode_file(path: Path, where: str = "data.root") -> Tensor:
    """One image file as C×H×W floats in [0, 1] (C: 1 for gray, 3 for colour), as a viewer
    shows it: Pillow decodes every format it knows, its EXIF orientation applied, its mode
    converted by ``_pixels``; an animation gives its first frame. A decompression bomb (an
    874 KB PNG of 30000×30000 pixels took 5.5 GB) is refused from its header; a FIFO or a
    device is refused before it is opened (reading one would wait for good)."""
    if not path.is_file():
        raise CnnlabError(f"{where}: {path} is not a regular file; allowed: image files")
    try:
        with Image.open(path) as opened:
            pixels = opened.size[0] * opened.size[1]
            if pixels > MAX_PIXELS:
                raise Image.DecompressionBombError(f"({pixels} pixels)")
            array = _pixels(ImageOps.exif_transpose(opened))
    except Image.DecompressionBombError as err:  # ours, or Pillow's: "Image size (N pixels)…"
        found = re.search(r"\((\d+) pixels\)", str(err))
        raise CnnlabError(f"{where}: {path} declares {int(found[1]) if found else pixels:,} "
                          f"pixels; allowed: at most {MAX_PIXELS:,} pixels per image (a bigger "
                          "one is refused as a decompression bomb)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise CnnlabError(f"{where}: cannot decode image {path}; allowed: image files Pillow "
                          "reads (PNG, JPEG, GIF, WebP, BMP, PPM/PGM, TIFF, ...)") from None
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def load_npz(cfg: DataConfig) -> ImageData:
    """Arrays ``x`` (N×H×W, N×H×W×C or N×C×H×W; uint8 or float) and integer ``y`` in one .npz;
    an optional ``classes`` array names the labels 0..K-1."""
    path = Path(cfg.root)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CnnlabError(f"data.root: {path} does not exist; allowed: an .npz file with "
                          "arrays x and y") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        raise CnnlabError(f"data.root: {path} is not a readable .npz file; allowed: an .npz "
                          "written by numpy.savez with arrays x and y") from None
    where = f"data.root: {path}"
    with archive:
        missing = [k for k in ("x", "y") if k not in archive.files]
        if missing:
            raise CnnlabError(f"data.root: {path} has no array {', '.join(missing)} (found: "
                              f"{', '.join(archive.files) or 'none'}); allowed: arrays x and y")
        try:
            x, y = npz_array(archive, "x", where), npz_array(archive, "y", where)
            names = [str(c) for c in archive["classes"]] if "classes" in archive.files else None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error):
            raise CnnlabError(f"data.root: {path} is damaged (an array does not decompress); "
                              "allowed: an .npz written by numpy.savez") from None
        except ValueError:  # object arrays need pickle, which can run code: refused
            raise CnnlabError(f"data.root: {path} holds an object array; allowed: numeric x and "
                              "y, and classes as a string array (np.array([...], dtype=str))") from None
    images = npz_images(x, f"data.root: {path}")
    if y.ndim != 1 or len(y) != len(images) or not np.issubdtype(y.dtype, np.integer):
        raise CnnlabError(f"data.root: {path} array y has shape {y.shape} and dtype {y.dtype} for "
                          f"{len(images)} images; allowed: one integer label per image")
    if names is None:
        values, y = np.unique(y, return_inverse=True)
        names = [str(v) for v in values]
    elif y.min() < 0 or y.max() >= len(names):
        raise CnnlabError(f"data.root: {path} labels run {y.min()}..{y.max()} but there are "
                          f"{len(names)} classes; allowed: labels 0..{len(names) - 1}")
    return ImageData(images, torch.as_tensor(y, dtype=torch.int64), names)


def _free_bytes() -> int:
    """Memory the machine has free now (all of it where the OS does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def total_memory() -> int:
    """The machine's memory (unbounded where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def npz_array(archive: Any, name: str, where: str) -> np.ndarray:
    """Array ``name`` of an open .npz, its declared size checked against free memory before it
    is read (an 8-byte header can declare billions of values)."""
    with archive.zip.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(f)
    as_float, free = math.prod(shape) * max(dtype.itemsize, 4), _free_bytes()  # float32 pixels
    if as_float > free // 2:
        raise CnnlabError(f"{where} array {name} declares shape {shape} ({as_float / 2**30:.1f} GiB "
                          f"in memory); allowed: arrays that fit in half the free memory "
                          f"({free / 2**30:.1f} GiB free)")
    return archive[name]


def npz_images(x: np.ndarray, where: str) -> Tensor:
    """An .npz array ``x`` as N×C×H×W floats (uint8 scaled to [0, 1]), or one clear error."""
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise CnnlabError(f"{where} array x has dtype {x.dtype}; allowed: integer (uint8: "
                          "0..255) or float pixels")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise CnnlabError(f"{where} array x has shape {x.shape}; allowed: N×H×W, N×H×W×C or "
                          "N×C×H×W with C = 1 or 3")
    return _uint8_images(np.ascontiguousarray(x))


SOURCES: dict[str, Callable[[DataConfig], ImageData]] = {
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "folder": load_folder,
    "npz": load_npz,
}


def load(cfg: DataConfig) -> ImageData:
    """The dataset ``cfg`` names, checked: readable, finite pixels and at least two classes."""
    where = f"data.root {cfg.root}" if cfg.name in ("folder", "npz") else f"data.name {cfg.name}"
    try:
        data = SOURCES[cfg.name](cfg)
    except PermissionError as err:  # not a full disk: nothing is written here
        raise CnnlabError(f"{where}: cannot read {err.filename or cfg.root} (permission denied); "
                          "allowed: data files and folders you may read") from None
    bad = int((~torch.isfinite(data.x)).sum())
    if bad:
        raise CnnlabError(f"{where}: {bad} pixel values are NaN or infinite; allowed: finite "
                          "numbers")
    present = len(torch.unique(data.y))
    if present < 2:
        raise CnnlabError(f"{where}: every image has the same label ({present} class); allowed: "
                          "at least two classes")
    return data


Datasets = dict[tuple[Any, ...], ImageData]  # datasets loaded once per process (a study's runs)


def dataset_key(cfg: DataConfig) -> tuple[Any, ...]:
    """What identifies a loaded dataset: two configs with the same key share one in memory."""
    return (cfg.name, cfg.root, cfg.download, cfg.image_size)


SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28),
          "cifar10": (3, 32, 32)}  # the named datasets' images (ten classes each)


def shape_of(cfg: DataConfig, cache: Datasets) -> tuple[tuple[int, int, int], int]:
    """The input shape and class count ``cfg`` gives a network: known for the named datasets
    (nothing read: ``--print-config`` needs no files), else from the data (loaded once; data
    a caller already put in ``cache`` is what the run trains on, so it decides)."""
    if cfg.name in SHAPES and dataset_key(cfg) not in cache:
        return SHAPES[cfg.name], 10
    data = load_cached(cfg, cache)
    return data.input_shape, len(data.classes)


def load_cached(cfg: DataConfig, cache: Datasets) -> ImageData:
    """The dataset ``cfg`` names, loaded once per ``cache`` (a study's many runs share it)."""
    key = dataset_key(cfg)
    if key not in cache:
        cache[key] = load(cfg)
    return cache[key]
