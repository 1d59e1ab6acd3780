"""Export a trained run's best weights, optionally with batch norm folded into the convs."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from cnnlab.config import ExperimentConfig, load_config, merge, to_dict
from cnnlab.data.datamodule import DataModule
from cnnlab.diagnostics import fuse_bn, inference_seconds, max_abs_diff
from cnnlab.errors import CnnlabError
from cnnlab.files import check_output, write_output
from cnnlab.models.convnet import ConvNet
from cnnlab.training.build import build

TOLERANCE = 1e-4
FORMAT = "cnnlab-export-1"  # marks the files cnnlab export writes


def load_run(run_dir: Path) -> tuple[ExperimentConfig, DataModule, nn.Module]:
    """A finished run's config, its data and its model with the best checkpoint's weights."""
    config, checkpoint = run_dir / "config.yaml", run_dir / "checkpoints" / "best.ckpt"
    for path in (config, checkpoint):
        if not path.is_file():
            raise CnnlabError(f"{run_dir}: no {path.relative_to(run_dir)}; allowed: the --out "
                              "directory of a finished cnnlab fit")
    cfg = load_config([config])
    data, model = build(cfg)
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    except Exception as err:  # pickle, zip and key errors all mean the same to the user
        raise CnnlabError(f"{checkpoint}: unreadable checkpoint ({type(err).__name__}); allowed: "
                          "a checkpoint written by cnnlab fit") from None
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()
                           if k.startswith("model.")})
    return cfg, data, model.eval()


def export(run_dir: Path, out: Path, fuse: bool) -> dict[str, Any]:
    """Write ``out`` (weights + config); with ``fuse`` check the fused model against the original."""
    check_output(out, is_export)
    cfg, data, model = load_run(run_dir)
    x_val = data.val[0]
    report: dict[str, Any] = {"fused_bn": fuse}
    exported = model
    if fuse:
        exported = fuse_bn(model)
        report["max_abs_diff"] = max_abs_diff(model, exported, x_val)
        if report["max_abs_diff"] > TOLERANCE:
            raise CnnlabError(f"fused model differs from the original by "
                              f"{report['max_abs_diff']:.2e} on the validation set; allowed: "
                              f"≤ {TOLERANCE:g}")
        x = x_val.repeat(max(1, 4096 // len(x_val)), 1, 1, 1)
        report["speedup"] = inference_seconds(model, x) / inference_seconds(exported, x)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "config": to_dict(cfg), "fused_bn": fuse,
                "input_shape": data.input_shape, "num_classes": data.num_classes,
                "state_dict": exported.state_dict()}, buffer)
    write_output(out, buffer.getvalue(), is_export)
    return report


def is_export(path: Path) -> bool:
    """True for a file ``cnnlab export`` wrote (it may be replaced by the next export)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file at all: someone else's
        return False
    return isinstance(saved, dict) and saved.get("format") == FORMAT


def load_exported(path: Path) -> nn.Module:
    """Rebuild an exported model (fused or not) from its file."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    cfg = merge(OmegaConf.create(saved["config"]))
    model = ConvNet(cfg.model, tuple(saved["input_shape"]), saved["num_classes"])
    model = fuse_bn(model) if saved["fused_bn"] else model
    model.load_state_dict(saved["state_dict"])
    return model.eval()
