"""Image tensors to PNG bytes (for files written atomically and for reports), and back."""

import io

from PIL import Image
from torch import Tensor


def png_bytes(image: Tensor) -> bytes:
    """PNG encoding of a C×H×W float image in [0, 1]."""
    from torchvision.utils import save_image

    buffer = io.BytesIO()
    save_image(image, buffer, format="png")
    return buffer.getvalue()


def png_image(data: bytes) -> Image.Image:
    """A PIL image from PNG bytes (for W&B, which takes PIL images)."""
    return Image.open(io.BytesIO(data))
