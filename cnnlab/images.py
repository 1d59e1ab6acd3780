"""Image tensors to PNG bytes (for files written atomically and for reports)."""

import io

from torch import Tensor


def png_bytes(image: Tensor) -> bytes:
    """PNG encoding of a C×H×W float image in [0, 1]."""
    from torchvision.utils import save_image

    buffer = io.BytesIO()
    save_image(image, buffer, format="png")
    return buffer.getvalue()
