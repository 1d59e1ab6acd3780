"""Trained models out of cnnlab: load one from a run, a checkpoint or an export, and export it
self-contained (weights, input normalisation, class names, input shape, config), optionally with
batch norm folded into the convs.

Loading is safe: checkpoints and exports are read with ``torch.load(weights_only=True)``, which
unpickles tensors and plain Python values (dicts, lists, strings, numbers) and refuses anything
that could run code. An export is a plain ``torch.save`` dict (no TorchScript or ``torch.export``
program): it loads with ``cnnlab.load`` and stays readable with torch alone, and the network
code it needs is the one ConvNet this package defines.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.config import ExperimentConfig, recorded
from cnnlab.data.datamodule import DataModule
from cnnlab.diagnostics import fuse_bn, max_abs_diff, speedup
from cnnlab.errors import CnnlabError
from cnnlab.models.convnet import ConvNet
from cnnlab.models.predictor import Predictor
from cnnlab.outputs.files import check_output, write_output
from cnnlab.training.module import Classifier

TOLERANCE = 1e-4
FORMAT = "cnnlab-export-2"  # marks the files cnnlab export writes
OLD_FORMATS = ("cnnlab-export-1",)  # no normalisation inside: cnnlab's, but not loadable


def checkpoint_of(path: Path) -> Path:
    """The checkpoint ``path`` names: a run folder's best one, or the file itself."""
    ckpt = path / "checkpoints" / "best.ckpt" if path.is_dir() else path
    if not ckpt.is_file():
        raise CnnlabError(f"{path}: no {'checkpoints/best.ckpt' if path.is_dir() else 'such file'}"
                          "; allowed: the --out folder of a finished cnnlab fit, a .ckpt it "
                          "wrote, or a cnnlab export")
    return ckpt


MAX_SIDE = 8192  # pixels per side of a model's input: an edited file may claim any size
LOADABLE = (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError)


def _checked(meta: Mapping[str, Any], weights: Mapping[str, Any], path: Path) -> ExperimentConfig:
    """The config of a checkpoint or export (``meta``: its config, input shape, classes, mean,
    std), checked before anything is built from it: a hand-edited file is one line, not a
    traceback or an allocation of the size its edited shape claims. ``weights``: the network's
    saved tensors, whose total size bounds the network it may describe."""
    try:
        cfg = recorded(dict(meta["config"]))
        c, h, w = (int(v) for v in meta["input_shape"])
        classes, mean, std = list(meta["classes"]), list(meta["mean"]), list(meta["std"])
    except CnnlabError as err:
        raise CnnlabError(f"{path}: its config does not load ({err}); allowed: a file cnnlab "
                          "fit or export wrote, unedited") from None
    except LOADABLE as err:
        raise CnnlabError(f"{path}: config, input_shape, classes, mean or std missing or "
                          f"malformed ({type(err).__name__}: {err}); allowed: a file cnnlab fit "
                          "or export wrote, unedited") from None
    if (c not in (1, 3) or not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE) or len(classes) < 2
            or len(mean) != c or len(std) != c):
        raise CnnlabError(f"{path}: input shape {c}×{h}×{w}, {len(classes)} classes, {len(mean)} "
                          f"means and {len(std)} stds do not describe an image model; allowed: a "
                          f"file cnnlab fit or export wrote, unedited (1 or 3 channels, sides up "
                          f"to {MAX_SIDE}, 2 classes or more, one mean and std per channel)")
    with torch.device("meta"):  # the network the config describes, without its memory
        needed = sum(p.numel() for p in ConvNet(cfg.model, (c, h, w), len(classes)).parameters())
    saved = sum(t.numel() for t in weights.values() if isinstance(t, torch.Tensor))
    if needed > 2 * saved + 10_000:  # folding batch norm only ever removes parameters
        raise CnnlabError(f"{path}: its config describes a network of {needed:,} parameters but "
                          f"it holds {saved:,}; allowed: a file cnnlab fit or export wrote, "
                          "unedited")
    return cfg


def load_classifier(path: Path) -> Classifier:
    """``Classifier.load_from_checkpoint`` on a run folder's best checkpoint or a .ckpt file."""
    ckpt = checkpoint_of(path)
    try:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception:  # pickle, zip and key errors all mean the same to the user
        saved = None
    if not isinstance(saved, dict) or "state_dict" not in saved:
        raise CnnlabError(f"{ckpt}: unreadable checkpoint; allowed: a checkpoint written by "
                          "cnnlab fit")
    if "config" not in saved.get("hyper_parameters", {}):
        raise CnnlabError(f"{ckpt}: the checkpoint holds no cnnlab hyperparameters (written "
                          "before cnnlab 0.3); allowed: a checkpoint of a current cnnlab fit "
                          "(rerun the fit)")
    _checked(saved["hyper_parameters"], saved["state_dict"], ckpt)
    try:
        return Classifier.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    except LOADABLE as err:
        raise CnnlabError(f"{ckpt}: its weights do not fit its config ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:160]}); allowed: a checkpoint cnnlab fit "
                          "wrote, unedited") from None


def load(path: Path) -> Predictor:
    """A ready model in eval mode that takes pixels in [0, 1], from a run folder, a checkpoint
    or a ``cnnlab export`` file."""
    path = Path(path)
    saved = _read(path) if path.is_file() else None
    if _format_of(saved) is not None:
        return _from_export(saved, path)
    module = load_classifier(path)
    return _predictor(module.model, module.hparams).eval()


def _predictor(model: nn.Module, meta: Mapping[str, Any]) -> Predictor:
    """``model`` behind the normalisation, with the class names and input shape, that ``meta``
    holds: a checkpoint's hyperparameters or an export (the same keys)."""
    return Predictor(model, meta["mean"], meta["std"], meta["classes"],
                     tuple(meta["input_shape"]))


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def export(source: Path, out: Path, fuse: bool) -> dict[str, Any]:
    """Write ``out``: the model of ``source`` (run folder or checkpoint) with its normalisation,
    class names, input shape and config; with ``fuse`` (and batch norm in the model) folded and
    checked against the original on the validation set."""
    check_output(out, is_export)
    module = load_classifier(source)
    h: Any = module.hparams  # what Classifier saved: config, input_shape, classes, mean, std
    model: nn.Module = module.model
    report: dict[str, Any] = {"fused_bn": fuse and has_batch_norm(model), "norm": h.config["model"]["norm"]}
    if report["fused_bn"]:
        cfg = recorded(dict(h.config))
        data = DataModule(cfg.data, cfg.seed)
        data.setup("fit")
        assert data.val is not None  # no fold, no refit: a validation split
        x_val = data.val[0]  # normalised, as the network sees it
        fused = fuse_bn(model)
        report["max_abs_diff"] = max_abs_diff(model, fused, x_val)
        if report["max_abs_diff"] > TOLERANCE:
            raise CnnlabError(f"fused model differs from the original by "
                              f"{report['max_abs_diff']:.2e} on the validation set; allowed: "
                              f"≤ {TOLERANCE:g}")
        x = x_val.repeat(max(1, 4096 // len(x_val)), 1, 1, 1)
        report["speedup"], report["speedup_low"], report["speedup_high"] = speedup(model, fused, x)
        model = fused
    predictor = _predictor(model, h)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "config": dict(h.config), "fused_bn": report["fused_bn"],
                "input_shape": list(h.input_shape), "classes": list(h.classes),
                "mean": list(h.mean), "std": list(h.std), "state_dict": predictor.state_dict()},
               buffer)
    write_output(out, buffer.getvalue(), is_export)
    return report


def _read(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file at all: someone else's
        return None


def _format_of(saved: Any) -> str | None:
    form = saved.get("format") if isinstance(saved, dict) else None
    return form if form in (FORMAT, *OLD_FORMATS) else None


def is_export(path: Path) -> bool:
    """True for a file ``cnnlab export`` wrote (it may be replaced by the next export)."""
    return _format_of(_read(path)) is not None


def load_exported(path: Path) -> Predictor:
    """Rebuild an exported model (fused or not) from its file."""
    return _from_export(_read(path), path)


def _from_export(saved: Any, path: Path) -> Predictor:
    form = _format_of(saved)
    if form is None:
        raise CnnlabError(f"{path}: not a cnnlab export; allowed: a file cnnlab export wrote")
    if form != FORMAT:
        raise CnnlabError(f"{path}: exported by an older cnnlab, without its input normalisation; "
                          "allowed: export the run again (cnnlab export RUN)")
    if not isinstance(saved.get("state_dict"), Mapping):
        raise CnnlabError(f"{path}: the export holds no weights; allowed: a file cnnlab export "
                          "wrote, unedited")
    cfg = _checked(saved, saved["state_dict"], path)
    c, h, w = (int(v) for v in saved["input_shape"])
    try:
        net: nn.Module = ConvNet(cfg.model, (c, h, w), len(saved["classes"]))
        model = fuse_bn(net) if saved.get("fused_bn") else net
        predictor = _predictor(model, saved)
        predictor.load_state_dict(saved["state_dict"])
    except LOADABLE as err:
        raise CnnlabError(f"{path}: its weights do not fit its config ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:160]}); allowed: a file cnnlab export "
                          "wrote, unedited") from None
    return predictor.eval()


def default_out(run: Path, fuse: bool) -> Path:
    """Beside the run (a run folder, or the run of a .ckpt it wrote): model.pt or model_fused.pt."""
    folder = run if run.is_dir() else run.parent
    folder = folder.parent if folder.name == "checkpoints" else folder
    return folder / ("model_fused.pt" if fuse else "model.pt")


def describe(out: Path, report: dict[str, Any], fuse: bool) -> str:
    """What ``export`` wrote, and what folding batch norm did (or why nothing was folded)."""
    line = f"wrote {out} (weights, input normalisation, class names, input shape, config)"
    if report["fused_bn"]:
        line += (f": batch norm folded into the convs; max |fused − original| on the validation "
                 f"set {report['max_abs_diff']:.2e}; inference speed {report['speedup']:.2f}× the "
                 f"unfused model's (median of 7 timings side by side, from "
                 f"{report['speedup_low']:.2f}× to {report['speedup_high']:.2f}×; batch 256; "
                 "timings vary with the machine's load)")
    elif fuse:
        line += (f": no batch norm in this model (model.norm={report['norm']}), nothing to fold; "
                 "exported unfused")
    return line
