"""Batched augmentation vs the equivalent per-sample torchvision.transforms.v2 pipeline.

10k CIFAR-shaped uint8 images; both sides end with float images in [0, 1]. torchvision has no
lens distortion, so the full policy's torchvision side does one op less than cnnlab's.
"""

import torch
from torchvision.transforms import v2

from benchmarks.common import Ratio, median_times
from cnnlab.config import load_config
from cnnlab.data.augment import Augmenter

N, BATCH = 10_000, 512
FLIP_CROP = ["hflip=true", "crop_padding=4"]
FULL = [*FLIP_CROP, "resized_crop_scale=0.6", "resized_crop_ratio=1.33", "translate=0.1",
        "rotate=15", "stretch=0.1", "shear=10", "lens=0.2"]


def torchvision_pipeline(full: bool) -> v2.Compose:
    def maybe(t: v2.Transform) -> v2.Transform:
        return v2.RandomApply([t], p=0.5)

    ops = [maybe(v2.RandomCrop(32, padding=4)), v2.RandomHorizontalFlip(0.5)]
    if full:
        ops += [maybe(v2.RandomResizedCrop(32, scale=(0.6, 1.0), ratio=(0.75, 1.33))),
                maybe(v2.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1),
                                      shear=10))]
    return v2.Compose([*ops, v2.ToDtype(torch.float32, scale=True)])


def _compare(images: torch.Tensor, options: list[str], full: bool, repeats: int) -> dict[str, float]:
    augment = Augmenter(load_config(overrides=[f"data.augment.{o}" for o in options]).data.augment)
    pipeline = torchvision_pipeline(full)
    gen = torch.Generator().manual_seed(0)

    def batched() -> None:
        for start in range(0, N, BATCH):
            augment(images[start : start + BATCH].float().div_(255), gen)

    def per_sample() -> None:
        for img in images:
            pipeline(img)

    batched(), per_sample()  # warm-up
    return median_times({"batched": batched, "per_sample": per_sample}, repeats)


def bench(repeats: int = 3) -> list[Ratio]:
    images = torch.randint(0, 256, (N, 3, 32, 32), dtype=torch.uint8)
    ratios = []
    for name, options, full, target in (("flip + padded crop", FLIP_CROP, False, 5.0),
                                        ("full policy", FULL, True, 3.0)):
        t = _compare(images, options, full, repeats)
        ratios.append(Ratio(f"augmentation, {name}: batched / per-sample v2",
                            t["per_sample"] / t["batched"], target,
                            f"10k 3×32×32 uint8: cnnlab {N / t['batched']:,.0f} img/s, "
                            f"torchvision {N / t['per_sample']:,.0f} img/s"))
    return ratios
