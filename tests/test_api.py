"""The Python API a notebook uses: the CLI's code paths, typed results, CnnlabError (no SystemExit)."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

import cnnlab
from tests.conftest import FAST

ROOT = Path(__file__).resolve().parent.parent


def test_fit_returns_the_runs_metrics_and_folder(tmp_path: Path) -> None:
    result = cnnlab.fit([*FAST, "model.norm=layer"], out=tmp_path / "run")
    assert result.out == tmp_path / "run"
    assert 0.0 <= result.number("test_acc") <= 1.0 and len(result.history) == 1
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert stored["test_acc"] == pytest.approx(result.metrics["test_acc"])
    assert "norm: layer" in (tmp_path / "run" / "config.yaml").read_text()


@pytest.mark.parametrize("call", [
    lambda tmp: cnnlab.fit(["model.nrom=batch"], out=tmp / "run"),
    lambda tmp: cnnlab.fit(config=["cifar10_fst"], out=tmp / "run"),
    lambda tmp: cnnlab.ablate("nrom", quick=True, out=tmp / "study"),
    lambda tmp: cnnlab.tune("serch", quick=True, out=tmp / "search"),
    lambda tmp: cnnlab.report("nrom", out=tmp / "study"),
])
def test_bad_input_raises_cnnlab_error_and_writes_nothing(call, tmp_path: Path) -> None:
    with pytest.raises(cnnlab.CnnlabError):
        call(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ablate_and_report_give_the_same_typed_table(cli, tmp_path: Path) -> None:
    """``ablate`` returns what the report shows; ``report`` rebuilds it from the storage alone."""
    study = cnnlab.ablate("learning_rate", ["trainer.max_epochs=1"], quick=True, out=tmp_path)
    assert study.study == "learning_rate-quick" and study.report.is_file()
    assert study.verdict in ("supported", "not supported", "undecided")
    arms = {row["arm"]: row for row in study.arms}
    assert set(arms) == {a.name for a in study.results.spec.arms}
    for row in arms.values():
        assert row["seeds"] >= 2 and 0.0 <= row["test_acc"] <= 1.0
    assert sum(row["delta"] is None for row in study.arms) == 1  # the baseline
    assert [c["outcome"] for c in study.checks] == [c.outcome for c in study.results.checks]
    again = cnnlab.report("learning_rate-quick", out=tmp_path)
    assert again.arms == study.arms and again.checks == study.checks
    status, out, err = cli("report", "--summary", "learning_rate-quick", "--out", tmp_path)
    header, rule, row = out.splitlines()[-3:]  # the table of verdicts, one row per study
    assert status == 0 and header.startswith("| study | hypothesis") and rule.startswith("|---")
    assert row.startswith("| `learning_rate-quick` | Too low a learning rate")
    assert f"**{study.verdict}**: test_acc: optim.lr=0.0003 lower than optim.lr=0.006: Δ " in row
    assert row.count("p_Holm") == len(study.checks) and row.endswith(
        f"| {max(r['seeds'] for r in study.arms)}, {len(study.results.looks)} look"
        f"{'s' * (len(study.results.looks) != 1)} |")
    status, _, err = cli("report", "a", "b")
    assert status == 2 and "several names need --summary" in err


@pytest.mark.slow
def test_tune_returns_the_refits_test_and_where_the_report_is(tmp_path: Path) -> None:
    result = cnnlab.tune("search", ["trainer.max_epochs=1"], quick=True, trials=2, folds=2,
                         out=tmp_path)
    assert result.out == tmp_path and (tmp_path / "search.md").is_file()
    assert 0.0 <= result.test_acc <= 1.0 and len(result.fold_scores) == 2
    assert f"best trial {result.best_trial}" in (tmp_path / "search.md").read_text()


def _notebook_state() -> tuple:
    return (list(warnings.filters), {n: logging.getLogger(n).level for n in LOGGERS},
            os.environ.get("MPLBACKEND"), _umask(), plt.get_fignums())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


LOGGERS = ("lightning.pytorch", "lightning.fabric", "optuna", "")


@pytest.mark.slow
def test_the_api_leaves_a_notebooks_global_state_as_it_found_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Warning filters, log levels, the matplotlib backend, the umask and the user's open
    figures: a fit, a search (Optuna's storage and pyplot figures) and a report change none."""
    monkeypatch.delenv("MPLBACKEND", raising=False)
    for name in LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.INFO)
    mask = os.umask(0o027)
    figure = plt.figure()  # the notebook's own figure
    try:
        with warnings.catch_warnings():
            warnings.resetwarnings()
            warnings.simplefilter("default")  # a notebook shows every warning once
            before = _notebook_state()
            cnnlab.fit(FAST, out=tmp_path / "run")
            assert _notebook_state() == before
            cnnlab.tune("search", ["trainer.max_epochs=1"], quick=True, trials=2, folds=2,
                        out=tmp_path / "search")
            assert _notebook_state() == before
            cnnlab.ablate("learning_rate", ["trainer.max_epochs=1"], quick=True,
                          seeds=2, out=tmp_path / "study")
            cnnlab.report("learning_rate-quick", out=tmp_path / "study")
            assert _notebook_state() == before
            assert plt.fignum_exists(figure.number)
    finally:
        os.umask(mask)
        plt.close(figure)


CTRL_C = """
import signal, sys
import cnnlab
try:
    cnnlab.fit(["trainer.max_epochs=500", "wandb.mode=disabled"], out=sys.argv[1])
except KeyboardInterrupt:
    print("KeyboardInterrupt", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""


@pytest.mark.slow
def test_ctrl_c_inside_fit_is_a_keyboard_interrupt_never_an_exit(tmp_path: Path) -> None:
    """Lightning turns Ctrl-C inside a fit into ``sys.exit(1)`` (and ignores SIGINT meanwhile):
    a notebook's kernel got SystemExit. The API raises the KeyboardInterrupt, Ctrl-C works
    again, and no half-written run is left."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    staging = tmp_path / ".run.cnnlab-partial" / "config.yaml"
    deadline = time.monotonic() + 120
    while not staging.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # inside the fit loop
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and stdout.split() == ["KeyboardInterrupt", "True"], stdout
    assert not out.exists() and not staging.parent.exists()


@pytest.mark.parametrize(("call", "line"), [
    (lambda: cnnlab.fit("trainer.max_epochs=1"),  # one error per character, before
     "cnnlab.fit: overrides: got 'trainer.max_epochs=1'; allowed: Sequence[str]"),
    (lambda: cnnlab.ablate("norm", workers="2"), "cnnlab.ablate: workers: got '2'; allowed: int"),
    (lambda: cnnlab.ablate("norm", seeds=-1),  # ran a 0-seed study, then ValueError
     "--seeds: got -1; allowed: an integer from 1 to 1,000"),
    (lambda: cnnlab.tune(trials=0), "--trials: got 0; allowed: an integer from 1"),  # ran 30
    (lambda: cnnlab.tune(folds=1), "--folds: got 1; allowed: an integer from 2 to 100"),
    (lambda: cnnlab.report(7), "cnnlab.report: name: got 7; allowed: str"),
    (lambda: cnnlab.fit(epochs=3), "cnnlab.fit: got an unexpected keyword argument 'epochs'"),
])
def test_the_api_refuses_wrong_arguments_with_one_cnnlab_error(tmp_path: Path, monkeypatch,
                                                                call, line: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cnnlab.CnnlabError) as refused:
        call()
    assert str(refused.value).startswith(line), refused.value
    assert list(tmp_path.iterdir()) == []  # nothing started
