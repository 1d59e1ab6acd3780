"""A study knows what it ran on: its data by content (not path) and its ``configs:`` files as
they resolved when it began, checked when a command starts and before every trial."""

from pathlib import Path

import numpy as np
import pytest
from test_ablation import trials
from test_search import trials as search_trials
from test_search import write_spec as write_search_spec

from cnnlab.studies.ablations.store import AblationStore

SPEC = """
name: tiny
configs: [base.yaml]
overrides: [trainer.max_epochs=1, "model.channels=[8]", "model.hidden_units=[16]",
            data.name=npz, data.root=data.npz, data.batch_size=64, wandb.mode=disabled]
factors:
  model.norm: [batch, none]
seeds: {seeds}
metric: test_acc
"""


def write_data(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), 60)
    x = (rng.random((240, 8, 8)) * 80 + y[:, None, None] * 40).astype(np.uint8)
    np.savez(path, x=x, y=y)


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path / "data.npz", seed=0)
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.01}\n")
    (tmp_path / "tiny.yaml").write_text(SPEC.format(seeds=1))
    return tmp_path / "tiny.yaml"


@pytest.mark.slow
def test_data_replaced_under_the_same_path_is_refused_in_one_line(cli, study: Path) -> None:
    """Old-data and new-data seeds went into one report, exit 0: the digest held the path."""
    assert cli("ablate", study, "--out", "out")[0] == 0
    journal = (study.parent / "out" / "study.journal").read_bytes()
    write_data(study.parent / "data.npz", seed=1)  # other images, same name
    status, _, err = cli("ablate", study, "--out", "out", "--seeds", "2")
    assert status == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(
        "cnnlab: error: study 'tiny': arm 'model.norm=batch''s data changed since the study "
        "pinned it (sha256 "), err
    assert (study.parent / "out" / "study.journal").read_bytes() == journal  # nothing queued
    write_data(study.parent / "data.npz", seed=0)  # the same content again: resumes
    assert cli("ablate", study, "--out", "out", "--seeds", "2")[0] == 0
    assert len([t for t in trials(study.parent / "out") if t.state.is_finished()]) == 4


@pytest.mark.slow
def test_a_configs_file_edited_while_the_study_runs_stops_it(cli, study: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """5 of 6 trials trained at the edited lr, all in one report: trials re-read the file.
    Now the trial after the edit refuses (exit 2) and records nothing of the edited config."""
    (study.parent / "tiny.yaml").write_text(SPEC.format(seeds=3))
    record = AblationStore.record

    def edit_after_the_first(trial, metrics, history):
        (study.parent / "base.yaml").write_text("optim: {lr: 0.5}\n")
        return record(trial, metrics, history)

    monkeypatch.setattr(AblationStore, "record", staticmethod(edit_after_the_first))
    status, _, err = cli("ablate", study, "--out", "out")
    assert status == 2 and "arm 'model.norm=batch''s resolved config changed" in err, err
    finished = [t for t in trials(study.parent / "out") if t.state.is_finished()]
    assert len(finished) == 2  # the first, and the refused one (failed, queued by a rerun)


@pytest.mark.slow
def test_a_search_refits_only_on_the_data_its_trials_had(cli, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``tune`` after the swap reported the old data's best CV beside the new data's test
    accuracy. Now the swap is refused before any trial or refit."""
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path / "data.npz", seed=0)
    spec = write_search_spec(tmp_path)
    spec.write_text(spec.read_text().replace(
        "overrides: [", "overrides: [data.name=npz, data.root=data.npz, "))
    assert cli("tune", spec, "--out", "out", "--trials", "2")[0] == 0
    write_data(tmp_path / "data.npz", seed=1)
    status, _, err = cli("tune", spec, "--out", "out", "--trials", "3")
    assert status == 2 and "the data (data.name=npz) changed since the study pinned it" in err
    assert len(search_trials(tmp_path / "out")) == 2
