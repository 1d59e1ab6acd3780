"""cnnlab as an installed package: the wheel carries its configs and specs, and runs from any folder."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab import shipped

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "cnnlab", "configs", "experiments")


def _python(args: list[str], cwd: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "offline", "CNNLAB_WORKERS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources, installed into a folder first on the path."""
    tmp = tmp_path_factory.mktemp("wheel")
    (tmp / "src").mkdir()
    for name in SOURCES:  # a copy: building in the checkout would leave build/ there
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, tmp / "src" / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, tmp / "src" / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist",
                    tmp / "src"], check=True, capture_output=True, timeout=300)
    wheel = next((tmp / "dist").glob("cnnlab-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", tmp / "site", wheel], check=True,
                   capture_output=True, timeout=300)
    return tmp / "site"


@pytest.mark.slow
def test_the_wheel_runs_a_fit_and_a_shipped_ablation_by_name_from_another_folder(
        installed: Path, tmp_path: Path) -> None:
    """A non-editable install read ``site-packages/configs/default.yaml`` and failed; the shipped
    specs were reachable only by path from the checkout."""
    where = _python(["-c", "import cnnlab, cnnlab.shipped as s; print(cnnlab.__file__); "
                     "print(s.DEFAULT_CONFIG); print(sorted(s.specs()))"], tmp_path, installed)
    module, default, names = where.stdout.splitlines()
    assert module.startswith(str(installed)) and default.startswith(str(installed)), where.stdout
    assert names == str(sorted(shipped.specs())) and "norm" in names

    fit = _python(["-m", "cnnlab", "fit", "trainer.max_epochs=1", "--out", "run"], tmp_path, installed)
    assert fit.returncode == 0, fit.stderr
    assert (tmp_path / "run" / "metrics.json").is_file() and "test_acc" in fit.stdout

    ablate = _python(["-m", "cnnlab", "ablate", "learning_rate", "--quick", "trainer.max_epochs=1",
                      "--out", "study"], tmp_path, installed)
    assert ablate.returncode == 0, ablate.stderr
    report = (tmp_path / "study" / "report.md").read_text()
    assert "learning_rate-quick" in report and "optim.lr=0.006" in report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "study"]  # nothing else in cwd


def test_a_shipped_preset_is_a_config_by_name_and_a_typo_gets_the_near_one(cli) -> None:
    status, out, _ = cli("fit", "--config", "cifar10_fast", "--print-config")
    assert status == 0 and "name: cifar10" in out
    status, _, err = cli("fit", "--config", "cifar10_fst", "--print-config")
    assert status == 2 and "allowed: a YAML file or one of cifar10_fast (did you mean cifar10_fast?)" in err
    status, _, err = cli("ablate", "nrom", "--quick")
    assert status == 2 and "(did you mean norm?)" in err and "batch_norm_size" in err


def test_a_users_file_wins_over_a_shipped_name(cli, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``norm`` in the current folder is the user's file, not the shipped spec."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "norm").write_text("name: [")
    status, _, err = cli("ablate", "norm", "--quick")
    assert status == 2 and "spec norm: invalid YAML" in err.replace("'", "")


@pytest.mark.parametrize("gpu", [False, True])
def test_make_install_takes_cpu_only_torch_without_a_gpu(tmp_path: Path, gpu: bool) -> None:
    """``pip install .`` pulled 3 GB of CUDA wheels onto machines without a GPU: without a
    working nvidia-smi, make install takes torch from PyTorch's CPU index first."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "python3", "test", "touch"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or tool)
    if gpu:  # an NVIDIA driver that answers
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100'\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    done = subprocess.run(["make", "-n", "-B", "install", f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
                          env={**os.environ, "PATH": str(bin_dir)}, capture_output=True,
                          text=True, timeout=60, executable=shutil.which("make"))
    assert done.returncode == 0, done.stderr
    cpu = "--index-url \"https://download.pytorch.org/whl/cpu\" 'torch<=2.14.1' 'torchvision<=0.29.1'"
    assert (cpu in done.stdout) is not gpu, done.stdout
    assert "pip install --quiet -e '.[dev,postgres]'" in done.stdout
