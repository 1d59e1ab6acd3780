"""Fast paths: channels-last memory layout, bf16 mixed precision where the hardware has it, and
optional ``torch.compile``.

``auto`` (the default for ``model.channels_last`` and ``trainer.precision``) turns on what is
measured to help and never what would slow a machine down: channels-last on CPUs and CUDA GPUs,
bf16 autocast only on GPUs that support bf16 and on CPUs with native bf16 instructions
(AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slower, so ``auto`` keeps 32-bit floats.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.config import ExperimentConfig
from cnnlab.cpus import usable_cpus

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")


def device_type(accelerator: str) -> str:
    """The device a Lightning ``accelerator`` setting resolves to: cuda, mps or cpu."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return "mps"
    return "cpu"


def native_bf16(device: str) -> bool:
    """Whether bf16 matmuls and convolutions run natively (not emulated) on ``device``."""
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    if device == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


@dataclass(frozen=True)
class FastPath:
    """What ``auto`` resolved to for one run."""

    precision: str
    channels_last: bool


def resolve(cfg: ExperimentConfig) -> FastPath:
    device = device_type(cfg.trainer.accelerator)
    precision = cfg.trainer.precision
    if precision == "auto":
        precision = "bf16-mixed" if native_bf16(device) else "32-true"
    elif precision == "16-mixed" and device == "cpu":  # what Lightning runs there: recorded so
        precision = "bf16-mixed"
    channels_last = cfg.model.channels_last
    if channels_last == "auto":
        channels_last = device in ("cpu", "cuda")
    return FastPath(precision, bool(channels_last))


WORK_PER_THREAD = 5e8  # multiply-adds per training step that one more torch thread is worth


def threads_for(step_macs: float) -> int:
    """Torch threads for a fit whose training step costs ``step_macs`` multiply-adds (forward
    and backward): one per ``WORK_PER_THREAD``, up to the usable cores. A digits net (7·10⁷)
    gets one thread and no longer collapses when another process takes a core (2 s → 166 s on a
    busy machine); a CIFAR-sized net (10⁹ and more) gets the cores. It depends on the config and
    the machine's cores only, never on the load: torch's sums, and so a fit's numbers, change
    with the thread count."""
    return max(1, min(usable_cpus(), math.ceil(step_macs / WORK_PER_THREAD)))


def resolved(cfg: ExperimentConfig, step_macs: float) -> tuple[ExperimentConfig, FastPath]:
    """``cfg`` with precision and memory layout as this machine resolves ``auto``, and
    ``trainer.threads: 0`` as ``threads_for`` the model's work per step (``step_macs``): what a
    run's config.yaml and W&B record, and what ``cnnlab fit --print-config`` shows."""
    fast = resolve(cfg)
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, channels_last=fast.channels_last),
        trainer=dataclasses.replace(cfg.trainer, precision=fast.precision,
                                    threads=cfg.trainer.threads or threads_for(step_macs))), fast


def prepare(model: nn.Module, fast: FastPath, compile_model: bool) -> nn.Module:
    """Put ``model`` in the chosen memory layout and, if asked, compile it in place.

    ``Module.compile`` keeps parameter names (checkpoints stay loadable), and TorchDynamo caches
    the compiled forward per code object: the next run in this process with the same layer
    shapes (another seed or arm of a study) reuses it instead of compiling again.
    """
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
    if compile_model:
        # on a CUDA build of torch without a GPU, inductor's C++ build logs a CUDA_HOME warning
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        # each distinct architecture in one process is one more cached graph; a study has many
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        model.compile()
    return model
