"""Batched augmentation vs the equivalent per-sample torchvision.transforms.v2 pipeline.

10k CIFAR-shaped uint8 images; both sides end with float images in [0, 1]. torchvision has no
lens distortion, so the full policy's torchvision side does one op less than cnnlab's.
"""

import statistics

import torch
from torchvision.transforms import v2

from benchmarks.common import Ratio, timed
from cnnlab.config import load_config
from cnnlab.cpus import usable_cpus
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


def _compare(images: torch.Tensor, options: list[str], full: bool, repeats: int
             ) -> list[tuple[float, float]]:
    """(batched, per-sample) seconds of each interleaved repeat, after a warm-up of both."""
    augment = Augmenter(load_config(overrides=[f"data.augment.{o}" for o in options]).data.augment)
    pipeline = torchvision_pipeline(full)
    gen = torch.Generator().manual_seed(0)

    def batched() -> None:
        for start in range(0, N, BATCH):
            augment(images[start : start + BATCH].float().div_(255), gen)

    def per_sample() -> None:
        for img in images:
            pipeline(img)

    batched(), batched(), per_sample()  # warm-up: the first batched passes allocate
    return [(timed(batched), timed(per_sample)) for _ in range(repeats)]


def bench(repeats: int = 5) -> list[Ratio]:
    """The median of the per-repeat ratios, with their range: one busy moment of the machine
    moves one repeat, not the result."""
    torch.set_num_threads(usable_cpus())  # as an idle fit; earlier benchmarks may have changed it
    images = torch.randint(0, 256, (N, 3, 32, 32), dtype=torch.uint8)
    ratios = []
    for name, options, full, target in (("flip + padded crop", FLIP_CROP, False, 5.0),
                                        ("full policy", FULL, True, 3.0)):
        times = _compare(images, options, full, repeats)
        each = sorted(per_sample / batched for batched, per_sample in times)
        batched, per_sample = (statistics.median(t) for t in zip(*times, strict=True))
        ratios.append(Ratio(f"augmentation, {name}: batched / per-sample v2",
                            statistics.median(each), target,
                            f"10k 3×32×32 uint8, {torch.get_num_threads()} threads, median of "
                            f"{repeats} interleaved repeats (range {each[0]:.1f}–{each[-1]:.1f}): "
                            f"cnnlab {N / batched:,.0f} img/s, torchvision {N / per_sample:,.0f} img/s"))
    return ratios
