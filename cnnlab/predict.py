"""``cnnlab predict``: images, folders of images or .npz arrays through a trained model."""

from __future__ import annotations

import csv
import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2.functional import resize, rgb_to_grayscale

from cnnlab.data.sources import decode_file, image_files, npz_array, npz_images
from cnnlab.errors import CnnlabError
from cnnlab.export import load

HEADER = ["input", "class", "probability"]


def read_inputs(paths: list[Path], shape: tuple[int, int, int]) -> tuple[list[str], Tensor, int]:
    """Images to predict on, as a model of input ``shape`` takes them: (a name per image,
    N×C×H×W pixels in [0, 1], how many were resized). ``paths`` are image files, folders of
    them (not recursive, sorted) or .npz files with an array ``x``; colour is converted to the
    model's channels and sizes resized to its input (antialiased, as ``data.image_size`` does)."""
    names: list[str] = []
    images: list[Tensor] = []
    for path in paths:
        if path.is_dir():
            files = image_files(path)
            if not files:
                raise CnnlabError(f"predict: folder {path} has no images; allowed: image files "
                                  "(PNG, JPEG, GIF, ...)")
            names += [str(p) for p in files]
            images += [decode_file(p, "predict") for p in files]
        elif path.suffix.lower() == ".npz" and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as archive:
                    x = npz_array(archive, "x", f"predict: {path}")
            except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, zlib.error):
                raise CnnlabError(f"predict: {path} is not an .npz file with a numeric array x; "
                                  "allowed: numpy.savez(path, x=images)") from None
            batch = npz_images(x, f"predict: {path}")
            names += [f"{path}[{i}]" for i in range(len(batch))]
            images += list(batch)
        elif path.exists():  # decode_file names a FIFO or a device instead of waiting on it
            names.append(str(path))
            images.append(decode_file(path, "predict"))
        else:
            raise CnnlabError(f"predict: {path} does not exist; allowed: image files, folders of "
                              "images, or .npz files")
    if not images:
        raise CnnlabError(f"predict: no images in {', '.join(map(str, paths))}; allowed: image "
                          "files, folders of images, or .npz files with at least one image")
    channels, size = shape[0], list(shape[1:])
    resized = 0
    for i, img in enumerate(images):
        img = img[:3] if img.shape[0] >= 3 else img[:1]  # drop alpha
        if img.shape[0] != channels:
            img = rgb_to_grayscale(img) if channels == 1 else img.expand(3, -1, -1)
        if list(img.shape[1:]) != size:
            img, resized = resize(img, size, antialias=True), resized + 1
        images[i] = img
    pixels = torch.stack(images)
    bad = int((~torch.isfinite(pixels)).sum())
    if bad:  # NaN in, "class 0, probability nan" out: refused instead
        raise CnnlabError(f"predict: {bad} pixel values are NaN or infinite; allowed: finite "
                          "numbers")
    return names, pixels, resized


@dataclass(frozen=True)
class Predictions:
    """One row per input (name, class, probability as text), and how many inputs were resized
    to the model's ``input_shape``."""

    columns = HEADER  # the header of ``rows``

    rows: list[list[str]]
    resized: int
    input_shape: tuple[int, int, int]
    warning: str | None  # the inputs look unlike the training data (Predictor.input_warning)

    def csv_bytes(self) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([HEADER, *self.rows])  # not CRLF
        return buffer.getvalue().encode()


def predict(model_path: Path, inputs: list[Path]) -> Predictions:
    """The class and its probability for every input, by the model of a run, checkpoint or export."""
    model = load(model_path)
    names, pixels, resized = read_inputs(inputs, model.input_shape)
    index, confidence = model.predict(pixels, check=False)
    rows = [[name, model.classes[i], f"{p:.4f}"]
            for name, i, p in zip(names, index.tolist(), confidence.tolist(), strict=True)]
    return Predictions(rows, resized, model.input_shape, model.input_warning(pixels))
