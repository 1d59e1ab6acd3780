"""The README's sections run as written, in order, in a new folder: what a newcomer copies works."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _blocks(title: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block of the README section ``title``, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(bash|python)\n(.*?)```", section, re.S)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A folder as a fresh clone after ``make install``: the Makefile, and .venv/bin/{python,
    cnnlab} running this interpreter."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "experiments").mkdir()
    bin_ = tmp_path / ".venv" / "bin"
    bin_.mkdir(parents=True)
    for name, run in (("python", ""), ("cnnlab", " -m cnnlab")):
        (bin_ / name).write_text(f'#!/bin/sh\nexec {sys.executable}{run} "$@"\n')
        (bin_ / name).chmod(0o755)
    (tmp_path / ".venv" / ".installed-stamp").touch()  # newer than pyproject.toml: installed
    return tmp_path


def _run(blocks: list[tuple[str, str]], cwd: Path) -> list[str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "CNNLAB_WORKERS": "1"}
    outputs = []
    for language, code in blocks:
        command = ["bash", "-e", "-c", code] if language == "bash" else [
            str(cwd / ".venv" / "bin" / "python"), "-c", code]
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=400)
        assert done.returncode == 0, f"{code}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    return outputs


@pytest.mark.slow
def test_using_a_trained_model_runs_as_written(checkout: Path) -> None:
    """It read runs/examples/digits.npz, which nothing made: it failed on a fresh clone."""
    blocks = _blocks("Using a trained model")
    assert [language for language, _ in blocks] == ["bash", "python", "bash"]
    snippet = blocks[1][1] + ("\nfrom sklearn.datasets import load_digits\n"
                              "assert index.tolist() == load_digits().target[-8:].tolist(), index\n")
    _run([blocks[0], ("python", snippet), blocks[2]], checkout)
    rows = (checkout / "runs" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "input,class,probability" and len(rows) == 6  # the five PNGs


@pytest.mark.slow
def test_from_python_runs_as_written(checkout: Path) -> None:
    (python,) = [code for language, code in _blocks("From Python") if language == "python"]
    (out,) = _run([("python", python)], checkout)
    assert "did you mean norm?" in out
    assert (checkout / "reports" / "api-lr" / "report.md").is_file()
    assert (checkout / "reports" / "api-search" / "search.md").is_file()
