"""Cross-validated search: completes, prunes a bad region, resumes, shares storage, PostgreSQL."""

import csv
import os
import sys
from pathlib import Path

import matplotlib
import optuna
import pytest
import warm
from optuna.trial import TrialState

from cnnlab.errors import CnnlabError
from cnnlab.studies.engine.storage import open_storage
from cnnlab.studies.engine.store import Store
from cnnlab.studies.searches.run import open_search
from cnnlab.studies.searches.spec import load_search_spec, suggest, with_overrides

SPEC = """
name: small
overrides: [trainer.max_epochs=2, "model.channels=[8]", data.batch_size=128]
space:
  optim.lr: {{type: float, low: {low}, high: {high}, log: true}}
  model.hidden_units.0: {{type: int, low: 16, high: 64}}
folds: 2
trials: 4
sampler: {{name: {sampler}, seed: 0}}
pruner: {pruner}
"""


def write_spec(tmp_path: Path, low: float = 1e-3, high: float = 1e-2, sampler: str = "tpe",
               pruner: str = "{name: median, n_startup_trials: 2}") -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SPEC.format(low=f"{low:.2e}", high=f"{high:.2e}", sampler=sampler,
                                pruner=pruner))
    return path


def trials(out: Path, url: str | None = None, name: str = "small") -> list:
    storage = open_storage(url or str(out / "study.journal"), readonly=True)
    return [t for t in Store.load(storage, name).get_trials() if "note" not in t.user_attrs]


@pytest.mark.slow
def test_small_search_completes_refits_and_reports(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    style = dict(matplotlib.rcParams)
    status, stdout, err = cli("tune", write_spec(tmp_path), "--out", out)
    assert status == 0, err
    assert dict(matplotlib.rcParams) == style  # Optuna's plots switched the process to ggplot
    done = [t for t in trials(out) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 4
    for t in done:
        scores = t.user_attrs.get("fold_scores", [])
        if t.state == TrialState.COMPLETE:  # the value is the mean of the fold scores
            assert t.user_attrs["fold_epochs"] == 2 * len(scores) == 4
            assert t.value == pytest.approx(sum(scores) / 2)
            # fold 0's validation accuracy per epoch (steps 0, 1), then the CV mean after fold 1
            assert list(t.intermediate_values) == [0, 1, 2]
            assert max(t.intermediate_values[0], t.intermediate_values[1]) == pytest.approx(scores[0])
            assert t.intermediate_values[2] == pytest.approx(t.value)
    report = (out / "search.md").read_text()
    assert "test accuracy" in report and "CV accuracy" in report
    assert (out / "history.png").is_file() and (out / "refit" / "metrics.json").is_file()
    assert (out / "hidden_units.png").is_file()  # CV accuracy vs hidden units
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 4 and {"optim.lr", "model.hidden_units.0", "cv_mean"} <= rows[0].keys()
    assert "val_acc" not in (out / "refit" / "metrics.json").read_text()  # refit has no val split


@pytest.mark.slow
def test_pruner_stops_trials_in_a_bad_region(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # half the learning-rate range is far too small to learn in two epochs
    spec = write_spec(tmp_path, low=1e-7, high=1e-2, sampler="random",
                      pruner="{name: median, n_startup_trials: 2}")
    status, _, err = cli("tune", spec, "--out", out, "--trials", "8")
    assert status == 0, err
    pruned = [t for t in trials(out) if t.state == TrialState.PRUNED]
    assert pruned
    for t in pruned:  # inside fold 0, after the epoch where it fell below the median
        epoch = max(t.intermediate_values)
        assert t.user_attrs["reason"].startswith(f"pruned in fold 0 after epoch {epoch} ")
        assert t.user_attrs["fold_epochs"] == epoch + 1 <= 2
        assert (out / "trials" / f"{t.number:04d}" / "fold0" / "metrics.json").is_file()


@pytest.mark.slow
def test_rerun_adds_trials_instead_of_restarting(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = write_spec(tmp_path)
    assert cli("tune", spec, "--out", out, "--trials", "2")[0] == 0
    first = {t.number: t.params for t in trials(out)}
    assert len(first) == 2
    assert cli("tune", spec, "--out", out, "--trials", "2")[0] == 0  # already there: no new trial
    assert len(trials(out)) == 2
    status, stdout, _ = cli("tune", spec, "--out", out, "--trials", "4")
    assert status == 0 and "small: resuming: 2 of 4 trials done" in stdout
    after = {t.number: t.params for t in trials(out)}
    assert len(after) == 4 and all(after[n] == p for n, p in first.items())


def test_diverging_trials_are_pruned_with_the_reason(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = write_spec(tmp_path, low=1000.0, high=10000.0, pruner="{name: none}")
    spec.write_text(spec.read_text().replace("data.batch_size=128",
                                             "data.batch_size=128, optim.name=sgd, model.norm=none"))
    status, _, err = cli("tune", spec, "--out", out, "--trials", "2")
    assert status == 2 and "no trial completed" in err
    for t in trials(out):
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["reason"].startswith("diverged in fold 0: training loss")


@pytest.mark.slow
def test_two_workers_share_a_journal_storage(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "cnnlab.cli", "tune", str(write_spec(tmp_path)), "--out",
               str(out), "--trials", "6", "--workers", "2"]
    done = warm.run(command, env, timeout=300)
    assert done.returncode == 0, done.stderr
    finished = [t for t in trials(out) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6 and len({t.number for t in finished}) == 6
    assert len({t.user_attrs["worker"] for t in finished}) == 2
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == 6  # the two workers' samplers do not repeat each other


@pytest.mark.slow
def test_search_on_postgresql(cli, tmp_path: Path, postgres_url: str) -> None:
    out = tmp_path / "out"
    status, _, err = cli("tune", write_spec(tmp_path), "--out", out, "--storage", postgres_url,
                         "--trials", "2", "--study", "pg-small")
    assert status == 0, err
    assert len(trials(out, postgres_url, "pg-small")) == 2
    assert not (out / "study.journal").exists()
    status, _, _ = cli("tune", write_spec(tmp_path), "--out", out, "--storage", postgres_url,
                       "--trials", "3", "--study", "pg-small")
    assert status == 0 and len(trials(out, postgres_url, "pg-small")) == 3


@pytest.mark.slow
def test_an_extended_search_proposes_new_configurations(cli, tmp_path: Path) -> None:
    """Each rerun reseeds the sampler from the stored history: before, ``--trials 4`` after
    ``--trials 2`` replayed the random sampler's first two proposals."""
    spec, out = write_spec(tmp_path, sampler="random", pruner="{name: none}"), tmp_path / "out"
    for count in ("2", "4"):
        status, _, err = cli("tune", spec, "--out", out, "--trials", count)
        assert status == 0, err
    finished = [t for t in trials(out) if t.state == TrialState.COMPLETE]
    assert len(finished) == 4
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 4


def test_a_run_killed_after_a_finished_trial_does_not_reseed_the_next_as_it_was(
        tmp_path: Path) -> None:
    """Slots are queued up front: a run killed after finishing a trial, before it queued or
    lost anything, left the stored-trial count as it found it, so the next run was seeded as it
    had been and drew the finished configuration again (the flaky ``7 == 8`` of
    ``test_search_survives_repeated_sigkills``)."""
    spec = with_overrides(load_search_spec(write_spec(tmp_path)), 4, None)
    storage = open_storage(str(tmp_path / "study.journal"))
    first = open_search(spec, True, storage, "small")
    first.queue_slots(spec.trials)
    drawn = []
    for _ in range(2):  # each "run": open, draw one configuration, finish it, die
        study = open_search(spec, True, storage, "small").study
        trial = study.ask()
        drawn.append(suggest(trial, spec.space))
        study.tell(trial, 0.5)
    assert drawn[0] != drawn[1]


def test_a_conditional_key_is_sampled_only_where_it_has_an_effect(tmp_path: Path) -> None:
    """The search sampled ``reg.strength`` with ``reg.kind=none``: the dashboard ranked it and
    the best trial read ``reg.kind=none, reg.strength=5.28e-06``."""
    spec = load_search_spec(Path("experiments/search.yaml"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: len(suggest(trial, spec.space)), n_trials=40)
    kinds = {t.params["reg.kind"] for t in study.trials}
    assert kinds == {"none", "l2", "elastic"}
    for t in study.trials:
        assert ("reg.strength" in t.params) == (t.params["reg.kind"] != "none"), t.params
    bad = Path("experiments/search.yaml").read_text().replace("[l2, elastic]", "[l1]")
    (tmp_path / "bad.yaml").write_text(bad)
    with pytest.raises(CnnlabError, match=r"space.reg.strength.when is .*allowed: a mapping of an "
                                          "earlier categorical key"):
        load_search_spec(tmp_path / "bad.yaml")
