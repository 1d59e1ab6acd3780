"""Typed experiment configs: ``configs/default.yaml`` + ``--config`` files + ``key=value`` overrides.

The dataclasses below are the schema (keys and types, merged and type-checked by OmegaConf);
``configs/default.yaml`` holds the values. ``load_config`` validates everything before any work.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from cnnlab.errors import CnnlabError, did_you_mean
from cnnlab.shipped import DEFAULT_CONFIG, config_path
from cnnlab.yaml_files import check_shape, load_yaml


@dataclass(frozen=True)
class AugmentConfig:
    policy: str = MISSING
    k: int = MISSING
    prob: float = MISSING
    hflip: bool = MISSING
    crop_padding: int = MISSING
    resized_crop_scale: float = MISSING
    resized_crop_ratio: float = MISSING
    translate: float = MISSING
    rotate: float = MISSING
    stretch: float = MISSING
    shear: float = MISSING
    lens: float = MISSING


@dataclass(frozen=True)
class DataConfig:
    name: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    image_size: int | None = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    val_fraction: float = MISSING
    test_fraction: float = MISSING
    split_seed: int = MISSING
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class ModelConfig:
    channels: list[int] = MISSING
    convs_per_block: int = MISSING
    kernel_size: int = MISSING
    stride: int = MISSING
    padding: int = MISSING
    pool: str = MISSING
    pool_kernel: int = MISSING
    pool_stride: int = MISSING
    norm: str = MISSING
    groups: int = MISSING
    dropout: float = MISSING
    spatial_dropout: float = MISSING
    hidden_units: list[int] = MISSING
    init: str = MISSING
    sync_batchnorm: bool = MISSING
    channels_last: bool | str = MISSING  # true | false | auto (on for CPU and CUDA)


@dataclass(frozen=True)
class OptimConfig:
    name: str = MISSING
    lr: float | int | str = MISSING  # a number, or "auto": run the LR finder first
    momentum: float = MISSING
    nesterov: bool = MISSING
    weight_decay: float = MISSING
    scheduler: str = MISSING


@dataclass(frozen=True)
class RegConfig:
    kind: str = MISSING
    strength: float = MISSING
    l1_ratio: float = MISSING
    label_smoothing: float = MISSING


@dataclass(frozen=True)
class TrainerConfig:
    max_epochs: int = MISSING
    accelerator: str = MISSING
    devices: int = MISSING
    num_nodes: int = MISSING
    strategy: str = MISSING
    precision: str = MISSING
    compile: bool = MISSING
    deterministic: bool = MISSING
    threads: int = MISSING
    log_norms: bool = MISSING
    images: bool = MISSING
    progress_bar: bool = MISSING
    target_acc: float = MISSING


@dataclass(frozen=True)
class WandbConfig:
    mode: str | None = MISSING
    project: str = MISSING
    group: str | None = MISSING
    job_type: str = MISSING
    name: str | None = MISSING
    tags: list[str] = MISSING
    log_model: bool = MISSING


@dataclass(frozen=True)
class ExperimentConfig:
    seed: int = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


# The names each choice key allows. The modules that implement them (``sources.SOURCES``,
# ``norms.NORMS``, …) keep their own string → implementation tables, which import torch; these
# names stay here so that reading a config and reporting a bad choice never does (a test holds
# the two in step: ``test_registries_implement_exactly_the_config_choices``).
CHOICES: dict[str, tuple[Any, ...]] = {
    "data.name": ("digits", "mnist", "fashion_mnist", "cifar10", "folder", "npz"),
    "data.augment.policy": ("all", "k_of_n"),
    "model.pool": ("max", "avg", "none"),
    "model.norm": ("batch", "layer", "instance", "group", "none"),
    "model.init": ("kaiming", "xavier", "default"),
    "optim.name": ("sgd", "adam", "adamw"),
    "optim.scheduler": ("none", "cosine", "onecycle"),
    "reg.kind": ("none", "l1", "l2", "elastic"),
    "trainer.accelerator": ("auto", "cpu", "gpu", "cuda", "mps"),
    "trainer.strategy": ("auto", "ddp"),
    "trainer.precision": ("auto", "32-true", "bf16-mixed", "16-mixed"),
    "model.channels_last": ("auto", True, False),
    "wandb.mode": (None, "offline", "online", "disabled"),
}


# Which augmentation ops a config turns on (in the order they are applied).
AUGMENT_OPS: dict[str, Callable[[AugmentConfig], bool]] = {
    "hflip": lambda c: c.hflip,
    "crop": lambda c: c.crop_padding > 0,
    "resized_crop": lambda c: c.resized_crop_scale < 1 or c.resized_crop_ratio > 1,
    "translate": lambda c: c.translate > 0,
    "rotate": lambda c: c.rotate > 0,
    "stretch": lambda c: c.stretch > 0,
    "shear": lambda c: c.shear > 0,
    "lens": lambda c: c.lens > 0,
}


def enabled_ops(cfg: AugmentConfig) -> list[str]:
    """The ops whose magnitude is non-zero, in their fixed order."""
    return [name for name, on in AUGMENT_OPS.items() if on(cfg)]


def _read_yaml(path: Path) -> DictConfig:
    data = load_yaml(path, "--config")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CnnlabError(f"--config {path}: top level is {type(data).__name__}; allowed: a mapping of keys")
    check_shape(data, _schema(), "")
    return OmegaConf.create(data)


def _allowed_keys(full_key: str) -> str:
    parent = OmegaConf.structured(ExperimentConfig)
    *path, _ = full_key.split(".")
    for part in path:
        parent = parent.get(part) if isinstance(parent, DictConfig) and part in parent else None
    keys = [str(k) for k in parent.keys()] if isinstance(parent, DictConfig) else []
    return ", ".join(keys) + did_you_mean(full_key.split(".")[-1], keys) if keys else "see default.yaml"


def _overrides(items: list[str]) -> DictConfig:
    layers = []
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise CnnlabError(f"override {item!r}: expected key=value, e.g. model.norm=layer")
        if key.startswith(("+", "~", "--")) or key.endswith("+"):
            raise CnnlabError(f"override {item!r}: cnnlab overrides are plain key=value, e.g. "
                              f"{key.lstrip('+~-').rstrip('+')}=..., no Hydra/Lightning prefixes")
        try:
            layer = OmegaConf.from_dotlist([item])
        except (OmegaConfBaseException, yaml.YAMLError):
            raise CnnlabError(
                f"override {item!r}: cannot parse the value; allowed: a YAML scalar or list, "
                "e.g. model.channels=[16,32]"
            ) from None
        check_shape(cast(dict[Any, Any], OmegaConf.to_container(layer)), _schema(), "")
        layers.append(layer)
    return cast(DictConfig, OmegaConf.merge(*layers)) if layers else OmegaConf.create()


@functools.cache
def _schema() -> DictConfig:
    return OmegaConf.structured(ExperimentConfig)


@functools.cache
def _defaults() -> DictConfig:
    """The schema with ``configs/default.yaml`` merged in (parsed once per process)."""
    return cast(DictConfig, OmegaConf.merge(_schema(), _read_yaml(DEFAULT_CONFIG)))


def _merge(*layers: DictConfig) -> ExperimentConfig:
    """Merge config layers onto the defaults, turning OmegaConf errors into one clear line."""
    try:
        return cast(ExperimentConfig, OmegaConf.to_object(OmegaConf.merge(_defaults(), *layers)))
    except ConfigKeyError as err:
        raise CnnlabError(
            f"unknown key {err.full_key!r}; allowed: {_allowed_keys(err.full_key or '')}"
        ) from None
    except MissingMandatoryValue as err:
        raise CnnlabError(f"{err.full_key}: no value given; allowed: set it in a config file") from None
    except OmegaConfBaseException as err:
        reason = str(err.msg).splitlines()[0]
        raise CnnlabError(f"{err.full_key}: {reason}") from None


def load_config(files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Defaults, then each file (or shipped preset name), then ``key=value`` overrides; validated."""
    cfg = _merge(*(_read_yaml(config_path(f)) for f in files), _overrides(list(overrides)))
    validate(cfg)
    return cfg


def recorded(values: dict[str, Any]) -> ExperimentConfig:
    """The config a run recorded (its checkpoint's or export's), rebuilt exactly: merged over
    the schema alone, never today's defaults, so a key the record lacks is an error, not a
    silent new default; validated."""
    try:
        cfg = cast(ExperimentConfig, OmegaConf.to_object(OmegaConf.merge(_schema(), values)))
    except MissingMandatoryValue as err:
        raise CnnlabError(f"{err.full_key}: missing from the recorded config (written by an older "
                          "cnnlab?); allowed: a record with every key of this cnnlab's "
                          "configs/default.yaml") from None
    except OmegaConfBaseException as err:
        raise CnnlabError(f"{err.full_key}: {str(err.msg).splitlines()[0]}") from None
    validate(cfg)
    return cfg


def with_values(cfg: Any, values: dict[str, Any]) -> Any:
    """``cfg`` (a config or one of its sections) with dotted keys set, as a new frozen config:
    configs are never changed in place, so the one a run records is the one it ran."""
    sections: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            sections.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    direct |= {head: with_values(getattr(cfg, head), sub) for head, sub in sections.items()}
    return dataclasses.replace(cfg, **direct)


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """Plain nested dict of ``cfg`` (for YAML, W&B and storage)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise CnnlabError(f"{key}: got {value!r}; allowed: {allowed}")


SEED_RANGE = (0, 2**32 - 1)  # what numpy and torch accept


def _check_finite(node: Any, prefix: str = "") -> None:
    """No NaN or infinity anywhere: ``optim.lr=.inf`` would train nothing, silently."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise CnnlabError(f"{prefix}{f.name}: got {value}; allowed: a finite number")


MAX_THREADS = 256


def validate(cfg: ExperimentConfig) -> None:
    """Check choices and ranges; raises ``CnnlabError`` naming the first bad key."""
    _check_finite(cfg)
    for key, seed in {"seed": cfg.seed, "data.split_seed": cfg.data.split_seed}.items():
        _check(SEED_RANGE[0] <= seed <= SEED_RANGE[1], key, seed,
               f"an integer in {SEED_RANGE[0]}..{SEED_RANGE[1]}")
    for key, table in CHOICES.items():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value not in table:
            raise CnnlabError(
                f"{key}: unknown value {value!r}; allowed: "
                + ", ".join("null" if c is None else str(c).lower() if isinstance(c, bool) else str(c)
                            for c in table)
            )
    d, m, o, r, t = cfg.data, cfg.model, cfg.optim, cfg.reg, cfg.trainer
    positive = {
        "data.batch_size": d.batch_size,
        "data.eval_batch_size": d.eval_batch_size,
        "model.kernel_size": m.kernel_size,
        "model.convs_per_block": m.convs_per_block,
        "model.stride": m.stride,
        "model.pool_kernel": m.pool_kernel,
        "model.pool_stride": m.pool_stride,
        "model.groups": m.groups,
        "trainer.max_epochs": t.max_epochs,
        "trainer.devices": t.devices,
        "trainer.num_nodes": t.num_nodes,
    }
    for key, value in positive.items():
        _check(value > 0, key, value, "a positive integer")
    _check(len(m.channels) > 0 and min(m.channels) > 0, "model.channels", m.channels,
           "a non-empty list of positive integers")
    _check(all(h > 0 for h in m.hidden_units), "model.hidden_units", m.hidden_units,
           "a list of positive integers (may be empty)")
    _check(0 <= t.threads <= MAX_THREADS, "trainer.threads", t.threads,
           f"an integer from 0 to {MAX_THREADS} (0 = one per usable core; 100,000 crashed torch)")
    _check(0 < t.target_acc <= 1, "trainer.target_acc", t.target_acc, "a number in (0, 1]")
    _check(m.padding >= 0, "model.padding", m.padding, "an integer ≥ 0")
    _check(m.norm != "group" or all(c % m.groups == 0 for c in m.channels), "model.groups",
           m.groups, f"a divisor of every entry of model.channels {m.channels}")
    for key, share in {"model.dropout": m.dropout, "model.spatial_dropout": m.spatial_dropout}.items():
        _check(0 <= share < 1, key, share, "a probability in [0, 1)")
    _check(o.lr == "auto" if isinstance(o.lr, str) else o.lr > 0, "optim.lr", o.lr,
           "a positive number, or auto (the LR finder picks it)")
    _check(0 <= o.momentum < 1, "optim.momentum", o.momentum, "a number in [0, 1)")
    _check(not o.nesterov or o.momentum > 0, "optim.nesterov", o.nesterov,
           "true only with optim.momentum > 0")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "a number ≥ 0")
    _check(r.strength >= 0, "reg.strength", r.strength, "a number ≥ 0")
    _check(0 <= r.l1_ratio <= 1, "reg.l1_ratio", r.l1_ratio, "a number in [0, 1]")
    _check(0 <= r.label_smoothing < 1, "reg.label_smoothing", r.label_smoothing, "a number in [0, 1)")
    for key, share in {"data.val_fraction": d.val_fraction, "data.test_fraction": d.test_fraction}.items():
        _check(0 < share < 1, key, share, "a fraction in (0, 1)")
    _check(d.image_size is None or d.image_size > 0, "data.image_size", d.image_size,
           "null (keep the images' size) or a positive integer")
    _validate_augment(d.augment)


def _validate_augment(a: AugmentConfig) -> None:
    ranges = {
        "prob": (a.prob, 0, 1, "a probability in [0, 1]"),
        "translate": (a.translate, 0, 0.99, "a fraction of the image size in [0, 1)"),
        "rotate": (a.rotate, 0, 180, "degrees in [0, 180]"),
        "shear": (a.shear, 0, 60, "degrees in [0, 60]"),
        "stretch": (a.stretch, 0, 0.99, "a relative scale change in [0, 1)"),
        "lens": (a.lens, 0, 0.99, "a radial coefficient in [0, 1)"),
        "resized_crop_scale": (a.resized_crop_scale, 0.01, 1, "an area fraction in (0, 1]"),
        "resized_crop_ratio": (a.resized_crop_ratio, 1, 10, "a maximum aspect ratio ≥ 1"),
        "crop_padding": (a.crop_padding, 0, 1024, "pixels ≥ 0"),
    }
    for name, (value, low, high, allowed) in ranges.items():
        _check(low <= value <= high, f"data.augment.{name}", value, allowed)
    enabled = len(enabled_ops(a))
    _check(a.k >= 1 and (a.policy != "k_of_n" or a.k <= max(enabled, 1)), "data.augment.k", a.k,
           f"1..{max(enabled, 1)} (the number of enabled ops)")
