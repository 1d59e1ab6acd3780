"""Images to PNG bytes (for files written atomically, reports and W&B), and back.

Every PNG cnnlab writes carries the text chunk ``Software: cnnlab``: the proof, for a file outside
any cnnlab folder (``lr-find --out plot.png``), that cnnlab wrote it and may replace it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from cnnlab.errors import CnnlabError
from cnnlab.outputs.files import check_output

if TYPE_CHECKING:  # annotations only: reports draw figures without loading torch
    from torch import Tensor

SOFTWARE = "cnnlab"


def _tagged() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SOFTWARE)
    return info


def to_uint8(image: Tensor) -> np.ndarray:
    """A C×H×W float image in [0, 1] as H×W(×3) uint8 pixels: what PNGs and W&B should get
    (W&B casts floats to uint8 without scaling, which leaves only the values 0 and 1)."""
    scaled = image.detach().float().cpu().mul(255).add_(0.5).clamp_(0, 255).byte()
    pixels: np.ndarray = scaled.permute(1, 2, 0).numpy()
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


def png_bytes(image: Tensor) -> bytes:
    """PNG encoding of a C×H×W float image in [0, 1]."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="png", pnginfo=_tagged())
    return buffer.getvalue()


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes (tight bounding box); a pyplot figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight",
                metadata={"Software": SOFTWARE})
    plt.close(fig)  # a no-op for a figure pyplot does not manage
    return buffer.getvalue()


def png_image(data: bytes) -> Image.Image:
    """A PIL image from PNG bytes (for W&B, which takes PIL images)."""
    return Image.open(io.BytesIO(data))


def is_cnnlab_png(path: Path) -> bool:
    """True for a PNG file cnnlab wrote (its ``Software`` text chunk says so)."""
    try:
        with Image.open(path) as img:
            return img.format == "PNG" and img.info.get("Software") == SOFTWARE
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def check_png_out(out: Path) -> None:
    """``out`` may take a PNG cnnlab writes: a name ending in .png, no file there but cnnlab's."""
    if out.suffix.lower() != ".png":
        raise CnnlabError(f"--out {out}: allowed: a file name ending in .png")
    check_output(out, is_cnnlab_png)
