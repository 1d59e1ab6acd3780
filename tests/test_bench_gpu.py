"""The GPU benchmark's code on a CPU: synthetic CIFAR-shaped data, every figure it prints."""

import math
import re
import tempfile

import numpy as np
import pytest

from benchmarks import bench_gpu


@pytest.mark.slow
def test_gpu_benchmark_runs_on_a_cpu_with_a_small_network(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where its scratch folder goes
    lines = bench_gpu.bench("cpu", 96, None, (1, 2), ("model.channels=[4,8,8]", "data.batch_size=16",
                                                      "data.eval_batch_size=64"))
    assert lines[0].startswith("CPU, configs/presets/cifar10_fast.yaml, 96 synthetic")
    # the epoch time is the difference of a 3- and a 1-epoch fit: on 96 images and a busy CPU
    # (two test workers) it is noise of either sign; on a GPU's 50k images, the figure it is for
    epoch = float(re.search(r"epoch time: (-?[\d.]+) s", lines[1]).group(1))
    ratio = float(re.search(r"plain loop: ([\d.]+)", lines[2]).group(1))
    rates = [float(r) for r in re.findall(r"workers? ([\d.]+) \(", lines[3])]
    assert math.isfinite(epoch) and ratio > 0 and len(rates) == 2 and all(r > 0 for r in rates)
    left = [p for p in tmp_path.iterdir() if not p.name.startswith("pymp-")]  # multiprocessing's
    assert left == []  # its data, runs and studies are gone


def test_synthetic_data_has_the_asked_training_portion(tmp_path) -> None:
    overrides, source = bench_gpu.data_overrides(None, 400, tmp_path)
    data = np.load(tmp_path / "synthetic.npz")
    assert data["x"].shape == (500, 32, 32, 3) and set(data["y"]) == set(range(10))  # 20% test
    assert "data.name=npz" in overrides and source == "400 synthetic 3×32×32 images"
    (tmp_path / "cifar" / "cifar-10-batches-py").mkdir(parents=True)
    assert bench_gpu.data_overrides(tmp_path / "cifar", 400, tmp_path)[0] == [
        f"data.root={tmp_path / 'cifar'}"]
