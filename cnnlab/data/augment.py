"""Batched data augmentation: whole training batches at once, on the batch's device, seeded.

Ops (each enabled by a non-zero magnitude under ``data.augment``): horizontal flip, random crop
with padding, random resized crop, translation, rotation, stretching (independent x/y scale),
shear and lens (radial barrel/pincushion) distortion. The geometric ops compose into one affine
map plus the radial term and share one ``grid_sample`` pass; flips and padded crops are exact
index operations. A policy picks, per sample, which enabled ops apply: ``all`` (each with
probability ``prob``) or ``k_of_n`` (``k`` random ops of the enabled ``n``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid

from cnnlab.config import AugmentConfig, enabled_ops

GRID_OPS = ("resized_crop", "translate", "rotate", "stretch", "shear", "lens")


def _all(n: int, ops: int, cfg: AugmentConfig, gen: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, ops, generator=gen, device=device) < cfg.prob


def _k_of_n(n: int, ops: int, cfg: AugmentConfig, gen: torch.Generator, device: torch.device) -> Tensor:
    ranks = torch.rand(n, ops, generator=gen, device=device).argsort(dim=1).argsort(dim=1)
    return ranks < cfg.k


POLICIES: dict[str, Callable[[int, int, AugmentConfig, torch.Generator, torch.device], Tensor]] = {
    "all": _all,
    "k_of_n": _k_of_n,
}


def padded_crop(x: Tensor, dy: Tensor, dx: Tensor, padding: int, flip: Tensor | None = None
                ) -> Tensor:
    """Zero-pad by ``padding``, cut the original size shifted by integer (dy, dx) per sample,
    and mirror it left–right where ``flip``: one gather for both."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding)).flatten(2) if padding else x.flatten(2)
    rows = (torch.arange(h, device=x.device) + padding)[None] + dy[:, None]
    cols = torch.arange(w, device=x.device).expand(n, w)
    if flip is not None:
        cols = torch.where(flip[:, None], w - 1 - cols, cols)
    cols = cols + padding + dx[:, None]
    index = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).view(n, 1, h * w)
    return padded.gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


def warp(x: Tensor, matrix: Tensor, shift: Tensor, lens: Tensor) -> Tensor:
    """Resample ``x`` at input = lens(matrix · output + shift), all in pixel units about the centre.

    ``matrix`` is N×2×2, ``shift`` N×2 (x, y); ``lens`` (N) is the radial coefficient k in
    r_in = r_out·(1 + k·r_out²), r measured in half-widths, so the centre never moves.
    """
    n, _, h, w = x.shape
    half = torch.tensor([w / 2, h / 2], device=x.device, dtype=x.dtype)
    theta = torch.cat([matrix * half[None, None, :] / half[None, :, None],
                       (shift / half)[:, :, None]], dim=2)  # pixel units → normalised coords
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    grid = grid * (1 + lens.view(-1, 1, 1, 1) * grid.pow(2).sum(-1, keepdim=True))
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotation(degrees: Tensor) -> Tensor:
    """N×2×2 output→input maps that turn the image ``degrees`` counter-clockwise on screen."""
    rad = torch.deg2rad(degrees)
    cos, sin = rad.cos(), rad.sin()
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


Augment = Callable[[Tensor, torch.Generator], Tensor]  # a batch, a generator → augmented batch


class Augmenter:
    """Random batched augmentation per ``AugmentConfig``; call with a batch and a generator.

    Pixels moved in from outside the image take ``fill`` (per channel; the normalised value of
    black when the data module builds it, as torchvision fills with 0 before normalising).
    """

    def __init__(self, cfg: AugmentConfig, fill: Tensor | None = None) -> None:
        self.cfg = cfg
        self.ops = enabled_ops(cfg)
        self.fill = fill

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        cfg, n, device = self.cfg, len(x), x.device
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else \
            torch.contiguous_format
        # Ops fill with zeros, so shift zero to mean ``fill`` while they run.
        x = x if self.fill is None else x - self.fill.to(device)
        chosen = POLICIES[cfg.policy](n, len(self.ops), cfg, gen, device)
        on = {name: chosen[:, i] for i, name in enumerate(self.ops)}
        # Every op runs on the whole batch with neutral settings where it is off, instead of on
        # a boolean-masked subset: masked indexing waits for the GPU (a host sync every step).
        grid_on = [on[name] for name in GRID_OPS if name in on]
        if grid_on:
            warped = torch.stack(grid_on).any(0).view(-1, 1, 1, 1)
            x = torch.where(warped, self._warp(x, on, gen), x)
        if "crop" in on or "hflip" in on:
            p = cfg.crop_padding
            dy, dx = (torch.randint(-p, p + 1, (n,), generator=gen, device=device) * on["crop"]
                      if "crop" in on else torch.zeros(n, dtype=torch.long, device=device)
                      for _ in range(2))  # a zero shift is the identity
            x = padded_crop(x, dy, dx, p, on.get("hflip"))  # crop, then flip
        x = x if self.fill is None else x + self.fill.to(x.device)
        return x.contiguous(memory_format=layout)  # the model's layout, as the batch came in

    def _warp(self, x: Tensor, on: dict[str, Tensor], gen: torch.Generator) -> Tensor:
        cfg, n, device = self.cfg, len(x), x.device
        _, _, h, w = x.shape
        size = torch.tensor([w, h], device=device, dtype=x.dtype)

        def uniform(*shape: int) -> Tensor:  # U(-1, 1)
            return torch.rand(*shape, generator=gen, device=device) * 2 - 1

        def gate(name: str, value: Tensor, neutral: float) -> Tensor:
            mask = on.get(name, torch.zeros(n, dtype=torch.bool, device=device))
            return torch.where(mask.view(-1, *[1] * (value.dim() - 1)), value, neutral)

        # input = crop · stretch⁻¹ · shear · rotation · (output + translation) + crop centre
        translation = gate("translate", uniform(n, 2) * cfg.translate * size, 0.0)
        matrix = rotation(gate("rotate", uniform(n) * cfg.rotate, 0.0))
        shear = torch.eye(2, device=device).repeat(n, 1, 1)
        shear[:, 0, 1] = torch.tan(torch.deg2rad(gate("shear", uniform(n) * cfg.shear, 0.0)))
        matrix = shear @ matrix
        stretch = gate("stretch", 1 + uniform(n, 2) * cfg.stretch, 1.0)
        matrix = torch.diag_embed(1 / stretch) @ matrix
        # Resized crop: a box of area fraction a and aspect e^r, zoomed to the full image.
        area = 1 - (1 - cfg.resized_crop_scale) * torch.rand(n, generator=gen, device=device)
        log_ratio = uniform(n) * math.log(cfg.resized_crop_ratio)
        box = torch.stack([(area * log_ratio.exp()).sqrt(), (area / log_ratio.exp()).sqrt()], -1)
        box = gate("resized_crop", box.clamp(max=1.0), 1.0)
        centre = gate("resized_crop", uniform(n, 2) * (1 - box) * size / 2, 0.0)
        matrix = torch.diag_embed(box) @ matrix
        shift = (matrix @ translation[:, :, None]).squeeze(-1) + centre
        lens = gate("lens", uniform(n) * cfg.lens, 0.0)
        return warp(x, matrix, shift, lens)


def build_augment(cfg: AugmentConfig, fill: Tensor | None = None) -> Augmenter | None:
    """The configured augmentation, or None when every op is off."""
    return Augmenter(cfg, fill) if enabled_ops(cfg) else None


def preview(x: Tensor, augment: Augment, mean: Tensor, std: Tensor, variants: int = 6,
            seed: int = 0, min_size: int = 64) -> Tensor:
    """A 3×H×W image grid: one row per sample, the original first, then augmented variants."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    columns = [x] + [augment(x, gen) for _ in range(variants)]
    tiles = torch.stack(columns, dim=1).flatten(0, 1) * std + mean  # back to [0, 1] pixels
    scale = max(1, math.ceil(min_size / x.shape[-1]))
    tiles = F.interpolate(tiles, scale_factor=scale, mode="nearest").clamp(0, 1)
    return make_grid(tiles, nrow=variants + 1, padding=2, pad_value=1.0)
