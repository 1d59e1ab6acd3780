"""Fast paths: what ``auto`` turns on, channels-last and bf16 in a real fit, no host syncs per
step, compiled models reused across runs, and the CIFAR-10 preset."""

import ctypes
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import FAST
from lightning.pytorch.callbacks import Callback
from test_sources import write_cifar

from cnnlab.config import load_config, to_dict
from cnnlab.models.convnet import ConvNet
from cnnlab.models.summary import summarize
from cnnlab.training import fast
from cnnlab.training import run as run_module
from cnnlab.training.module import Classifier

# Tensor methods that copy a value to the host: on a GPU each one waits for the device.
SYNCS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


@pytest.mark.parametrize(("device", "native", "expected"), [
    ("cpu", True, "bf16-mixed"), ("cpu", False, "32-true"), ("cuda", True, "bf16-mixed"),
    ("cuda", False, "32-true")])
def test_auto_uses_bf16_only_with_native_support(monkeypatch: pytest.MonkeyPatch, device: str,
                                                 native: bool, expected: str) -> None:
    monkeypatch.setattr(fast, "device_type", lambda accelerator: device)
    monkeypatch.setattr(fast, "native_bf16", lambda d: native)
    resolved = fast.resolve(load_config())
    assert resolved.precision == expected and resolved.channels_last is True
    chosen = fast.resolve(load_config(overrides=["trainer.precision=32-true",
                                                 "model.channels_last=false"]))
    assert chosen == fast.FastPath("32-true", False)  # explicit settings always win


def test_native_bf16_reads_the_cpu_flags() -> None:
    flags = open("/proc/cpuinfo").read().split()
    assert fast.native_bf16("cpu") == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert fast.native_bf16("mps") is False


class _Watch(Callback):
    """Counts host syncs inside training steps and records, at the second conv (the first has a
    single input channel, for which both layouts coincide), the input layout, the weight layout
    and the output dtype that training steps produce."""

    def __init__(self) -> None:
        self.active = False
        self.syncs: Counter[str] = Counter()
        self.seen: list[tuple[bool, bool, torch.dtype]] = []

    def on_train_start(self, trainer, module) -> None:
        conv = [m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d)][1]

        def record(layer, inputs, output) -> None:
            if self.active:
                self.seen.append((inputs[0].is_contiguous(memory_format=torch.channels_last),
                                  layer.weight.is_contiguous(memory_format=torch.channels_last),
                                  output.dtype))

        conv.register_forward_hook(record)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.active = True

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.active = False


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> _Watch:
    """Every fit in the test runs with a ``_Watch`` whose counters see the Tensor sync methods."""
    w = _Watch()
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            if w.active:
                w.syncs[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    build = run_module.build_trainer
    monkeypatch.setattr(run_module, "build_trainer",
                        lambda *a, **k: build(*a, **{**k, "callbacks": [*k.get("callbacks", ()), w]}))
    return w


def test_a_fit_trains_channels_last_in_bf16_without_host_syncs_per_step(
        watch: _Watch, tmp_path: Path) -> None:
    cfg = load_config(overrides=[*FAST, "trainer.max_epochs=3", "trainer.precision=bf16-mixed",
                                 "model.channels_last=true", "reg.kind=l2", "reg.strength=1e-4",
                                 "data.augment.crop_padding=1",
                                 "data.augment.rotate=10"])
    result = run_module.run(cfg, tmp_path / "run")
    assert watch.seen and watch.syncs == Counter()  # nothing waits for the device in a step
    assert all(seen == (True, True, torch.bfloat16) for seen in watch.seen[:3])
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["trainer"]["precision"] == "bf16-mixed" and written["model"]["channels_last"]
    assert result.metrics["test_acc"] > 0.3
    watch.active = True  # the counter itself works: a deliberate sync is seen
    torch.ones(1).item()
    assert watch.syncs == Counter({"item": 1})


def test_fp32_contiguous_path_is_what_it_says(watch: _Watch, tmp_path: Path) -> None:
    cfg = load_config(overrides=[*FAST, "trainer.precision=32-true", "model.channels_last=false"])
    run_module.run(cfg, tmp_path / "run")
    assert watch.seen[0] == (False, False, torch.float32)


@pytest.mark.slow
def test_compiled_model_is_compiled_once_per_architecture(tmp_path: Path) -> None:
    from torch._dynamo.utils import counters

    def fit(seed: int, norm: str) -> dict:
        cfg = load_config(overrides=[*FAST, "model.channels=[4]", "model.hidden_units=[]",
                                     "trainer.compile=true", "trainer.images=false",
                                     f"seed={seed}", f"model.norm={norm}"])
        return run_module.run(cfg, tmp_path / f"{norm}{seed}").metrics

    first = fit(0, "batch")
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    second = fit(1, "batch")  # another seed, same shapes: the cached graphs are reused
    assert counters["stats"]["unique_graphs"] == graphs
    fit(0, "none")  # another architecture: compiled anew
    assert counters["stats"]["unique_graphs"] > graphs
    assert 0 < first["test_acc"] <= 1 and 0 < second["test_acc"] <= 1


def test_label_smoothing_applies_to_the_training_loss_only() -> None:
    cfg = load_config(overrides=["reg.label_smoothing=0.2", "model.channels=[4]"])
    model = ConvNet(cfg.model, (1, 8, 8), 10)
    module = Classifier(to_dict(cfg), (1, 8, 8), [str(i) for i in range(10)], [0.0], [1.0], model)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    model.eval()
    logits = model(x)
    train_loss = module.training_step((x, y), 0)
    assert train_loss.item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.2).item())
    module.validation_step((x, y), 0)
    assert module.outputs["val"][0][2].item() == pytest.approx(F.cross_entropy(logits, y).item())


def test_convs_per_block_stack_before_each_pool() -> None:
    cfg = load_config(overrides=["model.channels=[8,16]", "model.convs_per_block=2",
                                 "model.hidden_units=[]", "model.norm=none"])
    rows = summarize(ConvNet(cfg.model, (3, 32, 32), 10), (3, 32, 32))
    convs = [r for r in rows if r.kind == "Conv2d"]
    assert [r.params for r in convs] == [8 * (3 * 9 + 1), 8 * (8 * 9 + 1), 16 * (8 * 9 + 1),
                                         16 * (16 * 9 + 1)]
    assert [r.shape for r in convs] == [(8, 32, 32), (8, 32, 32), (16, 16, 16), (16, 16, 16)]
    assert [r.shape for r in rows if r.kind == "MaxPool2d"] == [(8, 16, 16), (16, 8, 8)]


@pytest.mark.slow
def test_the_cifar10_fast_preset_trains_on_cifar_files(cli, tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar-10-batches-py", per_class=4)
    status, _, err = cli("fit", "--config", "configs/presets/cifar10_fast.yaml", "--out",
                         tmp_path / "run", f"data.root={tmp_path}", "trainer.max_epochs=1",
                         "wandb.mode=disabled", "data.batch_size=64")
    assert status == 0, err
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["model"]["convs_per_block"] == 2 and written["reg"]["label_smoothing"] > 0
    assert written["data"]["augment"]["hflip"] and written["data"]["augment"]["crop_padding"] > 0


@pytest.mark.slow
def test_a_cpu_machine_checks_for_cuda_without_loading_nvml_each_step() -> None:
    """Lightning asks torch for NVML-based CUDA checks; where NVML cannot load, cnnlab asks the
    CUDA runtime instead (torch's own fallback), so Adam's per-step check loads no library."""
    script = ("import os, tempfile, pathlib, torch; from cnnlab.config import load_config; "
              "from cnnlab.training.trainer import build_trainer; "
              "build_trainer(load_config(overrides=['trainer.precision=32-true']).trainer, "
              "pathlib.Path(tempfile.mkdtemp()), []); "
              "print(os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK'), torch.cuda.is_available())")
    env = {k: v for k, v in os.environ.items() if k != "PYTORCH_NVML_BASED_CUDA_CHECK"}
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env=env, check=True).stdout.split()
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        nvml = True
    except OSError:
        nvml = False
    assert shown == ["1" if nvml else "None", str(torch.cuda.is_available())]
