"""The console as a user sees it: the commands that train in the command's own process (``fit``,
``ablate --workers 1``, ``tune --workers 1``) print no Lightning banner, whatever imported
Lightning first."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_ablation import write_spec
from test_search import write_spec as write_search_spec

CNNLAB = Path(sys.executable).parent / "cnnlab"
BANNERS = re.compile(r"GPU available|TPU available|💡 Tip|litlogger|Loading `train_dataloader`|"
                     r"Restoring states|Using bfloat16|Using 16bit|`Trainer.fit` stopped|"
                     r"Loaded model weights|LOCAL_RANK")


def test_lightnings_import_after_configure_leaves_its_banners_off(tmp_path: Path) -> None:
    """``configure`` runs first in every command; importing Lightning afterwards set its logger
    back to INFO, and every trial printed six banner lines."""
    code = ("from cnnlab.process import configure; configure()\n"
            "from pathlib import Path\n"
            "from cnnlab.config import load_config\n"
            "from cnnlab.training.run import run\n"
            "cfg = load_config([], ['trainer.max_epochs=1', 'trainer.precision=bf16-mixed',"
            " 'wandb.mode=disabled'])\n"
            "import sys; run(cfg, Path(sys.argv[1]))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not BANNERS.search(done.stdout + done.stderr), done.stdout + done.stderr


@pytest.mark.slow
def test_fit_ablate_and_tune_with_one_worker_print_no_banner(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {
        "WANDB_MODE": "offline"}
    commands = {
        "fit": ["fit", "trainer.max_epochs=1", "--out", "fit"],
        "ablate": ["ablate", str(write_spec(tmp_path, seeds=1, arms="norm only")), "--out", "ab",
                   "--workers", "1"],
        "tune": ["tune", str(write_search_spec(tmp_path)), "--trials", "2", "--out", "tune",
                 "--workers", "1"],
    }
    for name, args in commands.items():
        done = subprocess.run([str(CNNLAB), *args], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path, env=env)
        shown = done.stdout + done.stderr
        assert done.returncode == 0, (name, done.stderr)
        assert not BANNERS.search(shown), (name, shown)
        assert shown.strip(), name  # it did print its own lines


def test_help_reads_as_paragraphs_without_markup() -> None:
    """``cnnlab --help`` printed its description as one run-on paragraph with RST backticks."""
    done = subprocess.run([sys.executable, "-m", "cnnlab", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "``" not in text
    intro = text.split("\n\n")[1]  # after the usage lines: the first paragraph, as written
    assert intro.splitlines()[0].startswith("A PyTorch Lightning lab")
    assert "\n\nEvery command takes --config FILE" in text
