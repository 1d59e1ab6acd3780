"""Batched augmentation on known patterns: exact flips, rotations, shifts, lens and seeding."""

import math

import pytest
import torch

from cnnlab.config import load_config
from cnnlab.data.augment import (
    POLICIES,
    Augmenter,
    build_augment,
    padded_crop,
    rotation,
    warp,
)


def aug_config(*overrides: str):
    return load_config(overrides=[f"data.augment.{o}" for o in overrides]).data.augment


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


X = torch.rand(5, 3, 12, 12)


def identity_warp(x: torch.Tensor) -> torch.Tensor:
    n = len(x)
    return warp(x, torch.eye(2).expand(n, 2, 2), torch.zeros(n, 2), torch.zeros(n))


def test_flip_equals_torch_flip() -> None:
    out = Augmenter(aug_config("hflip=true", "prob=1.0"))(X, gen())
    assert torch.equal(out, torch.flip(X, dims=[-1]))
    out = Augmenter(aug_config("hflip=true", "prob=0.5"))(X, gen(2))
    flipped = torch.tensor([torch.equal(o, x.flip(-1)) for o, x in zip(out, X, strict=True)])
    assert torch.equal(out[~flipped], X[~flipped]) and 0 < flipped.sum() < len(X)


def test_zero_magnitudes_are_the_identity() -> None:
    zero = aug_config()
    assert build_augment(zero) is None
    assert torch.equal(Augmenter(zero)(X, gen()), X)
    every_op_never = aug_config("hflip=true", "crop_padding=4", "rotate=30", "lens=0.3",
                                "translate=0.2", "shear=10", "stretch=0.2",
                                "resized_crop_scale=0.5", "prob=0.0")
    assert torch.equal(Augmenter(every_op_never)(X, gen()), X)
    assert torch.allclose(identity_warp(X), X, atol=1e-5)
    assert torch.equal(padded_crop(X, torch.zeros(5, dtype=torch.long),
                                   torch.zeros(5, dtype=torch.long), 3), X)


def test_rotation_by_90_degrees_of_a_square_pattern() -> None:
    pattern = torch.zeros(1, 1, 8, 8)
    pattern[0, 0, 1:3, 1:6] = 1.0  # an asymmetric L-shape
    pattern[0, 0, 1:7, 1:3] = 0.5
    out = warp(pattern, rotation(torch.tensor([90.0])), torch.zeros(1, 2), torch.zeros(1))
    assert torch.allclose(out, torch.rot90(pattern, k=1, dims=(-2, -1)), atol=1e-5)
    back = warp(out, rotation(torch.tensor([-90.0])), torch.zeros(1, 2), torch.zeros(1))
    assert torch.allclose(back, pattern, atol=1e-5)


def test_translation_moves_a_bright_pixel_by_the_offset() -> None:
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    shift = torch.tensor([[2.0, -1.0]])  # sample input at output + (2, -1): content moves by (-2, +1)
    out = warp(x, torch.eye(2)[None], shift, torch.zeros(1))
    assert out[0, 0, 5, 2].item() == pytest.approx(1.0, abs=1e-5)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_padded_crop_shifts_by_whole_pixels_and_fills_zeros() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = padded_crop(x, torch.tensor([1]), torch.tensor([-1]), padding=2)
    assert out[0, 0, 0].tolist() == [0.0, 4.0, 5.0, 6.0]  # row 1 of x, shifted right by one
    assert out[0, 0, 3].tolist() == [0.0, 0.0, 0.0, 0.0]  # below the image: padding


def test_crop_and_flip_in_one_gather_equal_a_slice_of_the_padded_image_then_a_flip() -> None:
    dy, dx = torch.tensor([-2, 0, 1, 2, -1]), torch.tensor([1, -2, 0, 2, 0])
    flip = torch.tensor([True, False, True, True, False])
    out = padded_crop(X, dy, dx, padding=2, flip=flip)
    padded = torch.nn.functional.pad(X, (2, 2, 2, 2))
    for i in range(len(X)):
        window = padded[i, :, 2 + dy[i] : 14 + dy[i], 2 + dx[i] : 14 + dx[i]]
        assert torch.equal(out[i], window.flip(-1) if flip[i] else window)
    both = Augmenter(aug_config("hflip=true", "crop_padding=2", "prob=1.0"))(X, gen())
    assert not torch.equal(both, X.flip(-1)) and both.shape == X.shape


def _centroid(img: torch.Tensor) -> tuple[float, float]:
    rows, cols = torch.meshgrid(torch.arange(img.shape[0]), torch.arange(img.shape[1]),
                                indexing="ij")
    total = img.sum()
    return (rows * img).sum().item() / total.item(), (cols * img).sum().item() / total.item()


@pytest.mark.parametrize("k", [0.3, -0.3])
def test_lens_keeps_the_centre_and_moves_corners_radially(k: float) -> None:
    size, centre = 33, 16
    x = torch.zeros(1, 1, size, size)
    x[0, 0, centre, centre] = 1.0
    x[0, 0, 8:10, 8:10] = 1.0  # a blob towards the top-left corner
    out = warp(x, torch.eye(2)[None], torch.zeros(1, 2), torch.tensor([k]))[0, 0]
    assert out[centre, centre].item() == pytest.approx(1.0, abs=1e-5)
    corner = out.clone()
    corner[centre - 2 : centre + 3, centre - 2 : centre + 3] = 0
    r, c = _centroid(corner)
    before = (8.5 - centre, 8.5 - centre)
    after = (r - centre, c - centre)
    assert math.atan2(*after) == pytest.approx(math.atan2(*before), abs=0.02)  # same ray
    radius_in, radius_out = math.hypot(*before), math.hypot(*after)
    # barrel (k > 0) pulls the corner towards the centre, pincushion pushes it out
    assert (radius_out < radius_in - 0.5) if k > 0 else (radius_out > radius_in + 0.5)


def test_shear_keeps_the_centre_row_and_stretch_widens_a_bar() -> None:
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 3:6] = 1.0  # horizontal bar through the centre
    x[0, 0, 1, 4] = 1.0
    shear = torch.tensor([[[1.0, math.tan(math.radians(30))], [0.0, 1.0]]])
    out = warp(x, shear, torch.zeros(1, 2), torch.zeros(1))
    assert torch.allclose(out[0, 0, 4], x[0, 0, 4], atol=1e-5)
    assert not torch.allclose(out[0, 0, 1], x[0, 0, 1], atol=1e-2)
    wide = warp(x, torch.diag(torch.tensor([0.5, 1.0]))[None], torch.zeros(1, 2), torch.zeros(1))
    assert (wide[0, 0, 4] > 0.5).sum() > (x[0, 0, 4] > 0.5).sum()


FULL = ("hflip=true", "crop_padding=2", "rotate=20", "translate=0.1", "shear=10", "stretch=0.2",
        "lens=0.2", "resized_crop_scale=0.6", "resized_crop_ratio=1.3")


@pytest.mark.parametrize("policy", ["policy=all", "policy=k_of_n"])
def test_same_seed_gives_the_same_batch(policy: str) -> None:
    augment = Augmenter(aug_config(*FULL, policy))
    a, b, c = augment(X, gen(7)), augment(X, gen(7)), augment(X, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == X.shape and torch.isfinite(a).all()
    assert torch.equal(X, X.clone())  # the input batch is left untouched


def test_policies_choose_ops_per_sample() -> None:
    cfg = aug_config(*FULL, "policy=k_of_n", "k=3")
    chosen = POLICIES["k_of_n"](1000, 8, cfg, gen(), torch.device("cpu"))
    assert chosen.sum(1).eq(3).all()
    assert (chosen.float().mean(0) - 3 / 8).abs().max() < 0.06  # each op equally likely
    cfg = aug_config(*FULL, "prob=0.25")
    chosen = POLICIES["all"](4000, 8, cfg, gen(), torch.device("cpu"))
    assert abs(chosen.float().mean().item() - 0.25) < 0.02


def test_augmented_fit_trains(fast_config, tmp_path) -> None:
    from cnnlab.training.run import run

    result = run(fast_config("trainer.max_epochs=2", *[f"data.augment.{o}" for o in FULL]),
                 tmp_path)
    assert result.history[1]["train/loss"] < result.history[0]["train/loss"]


def test_augment_preview_writes_a_png_grid(cli, tmp_path) -> None:
    from PIL import Image

    out = tmp_path / "preview.png"
    status, stdout, err = cli("augment-preview", "--out", out, "--samples", "3", "--variants", "4",
                              "data.augment.rotate=30", "data.augment.hflip=true")
    assert status == 0, err
    with Image.open(out) as img:
        # 8×8 digits upscaled to 64 px, 5 columns × 3 rows with 2 px padding
        assert img.size == (5 * 66 + 2, 3 * 66 + 2)
    status, _, err = cli("augment-preview", "--out", tmp_path / "none.png")
    assert status == 2 and "every op is off" in err and not (tmp_path / "none.png").exists()
    status, _, err = cli("augment-preview", "--out", tmp_path / "p.jpg", "data.augment.rotate=5")
    assert status == 2 and "ending in .png" in err


def test_fit_logs_the_augmentation_preview_to_wandb(cli, tmp_path, monkeypatch) -> None:
    from wandb_records import run_contents

    monkeypatch.delenv("WANDB_MODE", raising=False)
    status, _, err = cli("fit", "--out", tmp_path / "r", "trainer.max_epochs=1",
                         "model.channels=[8]", "data.augment.hflip=true")
    assert status == 0, err
    (path,) = (tmp_path / "r" / "wandb").glob("offline-run-*/run-*.wandb")
    (row,) = [r for r in run_contents(path)["history"] if "augment/preview/_type" in r]
    assert row["augment/preview/count"] == 1
    (png,) = row["augment/preview/filenames"]
    assert (path.parent / "files" / png).stat().st_size > 1000
