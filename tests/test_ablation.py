"""Ablations: specs, resumable and shared studies, W&B run counts, and the report's numbers."""

import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from optuna.trial import TrialState
from scipy import stats
from wandb_records import finished_records

from cnnlab.studies.ablations.spec import load_spec
from cnnlab.studies.engine.storage import open_storage
from cnnlab.studies.engine.store import Store

SPEC = """
name: tiny
overrides: [trainer.max_epochs=1, "model.channels=[8]", "model.hidden_units=[16]", data.batch_size=128]
factors:
  model.norm: [batch, none]
  reg:
    none: {{}}
    l2: {{reg.kind: l2, reg.strength: 1.0e-3}}
seeds: {seeds}
metric: test_acc
baseline: {{model.norm: batch, reg: none}}
"""


def write_spec(tmp_path: Path, seeds: int = 2, arms: str | None = None) -> Path:
    path = tmp_path / "tiny.yaml"
    text = SPEC.format(seeds=seeds)
    if arms == "norm only":
        text = text.replace("  reg:\n    none: {}\n    l2: {reg.kind: l2, reg.strength: 1.0e-3}\n", "")
        text = text.replace(", reg: none", "").replace("[batch, none]", "[batch, layer, none]")
    path.write_text(text)
    return path


def trials(out: Path) -> list:
    return Store.load(open_storage(str(out / "study.journal"), readonly=True), "tiny").get_trials()


def complete_keys(out: Path) -> list[str]:
    return [t.user_attrs["key"] for t in trials(out) if t.state == TrialState.COMPLETE]


@pytest.mark.slow
def test_ablation_runs_every_arm_and_seed_and_resumes_without_rerunning(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = write_spec(tmp_path)
    status, stdout, err = cli("ablate", spec, "--out", out)
    assert status == 0, err
    keys = complete_keys(out)
    assert len(keys) == 8 and len(set(keys)) == 8  # 4 arms × 2 seeds, each once
    assert "• model.norm=batch, reg=none" in stdout
    assert (out / "report.md").is_file() and (out / "bars.png").is_file()
    assert len((out / "results.csv").read_text().splitlines()) == 9
    first = {t.number: t.value for t in trials(out)}
    assert "resuming" not in stdout
    # off a terminal (a log file) each arm is one whole line, not fragments folded at 80 columns
    arms = [line for line in stdout.splitlines() if line.startswith("  model.norm=")]
    paired = r"· Δ .*, p [\d.e-]+ \(paired test\)$"
    assert len(arms) == 4 and sum(bool(re.search(paired, a)) for a in arms) == 3
    status, stdout, _ = cli("ablate", spec, "--out", out, "--workers", "auto")  # nothing to do
    assert "workers: " in stdout and "(auto: one per core other processes leave free" in stdout
    assert status == 0 and "resuming: 8 of 8 trials done" in stdout
    assert {t.number: t.value for t in trials(out)} == first
    status, stdout, _ = cli("ablate", spec, "--out", out, "--seeds", "3")  # one more seed per arm
    assert status == 0 and "resuming: 8 of 12 trials done" in stdout
    keys = complete_keys(out)
    assert len(keys) == 12 and len(set(keys)) == 12
    assert all(t.value == first[t.number] for t in trials(out) if t.number in first)


@pytest.mark.slow
def test_two_workers_share_one_ablation(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline W&B runs to count
    out = tmp_path / "out"
    spec = write_spec(tmp_path, seeds=2, arms="norm only")  # 6 trials
    status, _, err = cli("ablate", spec, "--out", out, "--workers", "2")
    assert status == 0, err
    done = [t for t in trials(out) if t.state == TrialState.COMPLETE]
    keys = [t.user_attrs["key"] for t in done]
    assert len(keys) == 6 and len(set(keys)) == 6
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both workers took trials
    assert len(list((out / "trials").glob("*/seed*/metrics.json"))) == 6
    runs = list(out.glob("**/run-*.wandb"))
    assert len(runs) == 6 + 1  # one per trial, one summary
    job_types = set()
    for path in runs:
        (run,) = [r.run for r in finished_records(path) if r.WhichOneof("record_type") == "run"]
        assert run.run_group == "tiny"
        job_types.add(run.job_type)
    assert job_types == {"model.norm=batch", "model.norm=layer", "model.norm=none", "summary"}


@pytest.mark.slow
def test_one_set_of_workers_runs_several_specs(cli, tmp_path: Path) -> None:
    """Every spec's trials are queued up front; the same worker processes run them all (a worker
    with nothing left in one spec goes on with the next), and each spec gets its report."""
    first = write_spec(tmp_path, seeds=2, arms="norm only")  # 6 trials
    second = tmp_path / "other.yaml"
    second.write_text(first.read_text().replace("name: tiny", "name: other"))
    status, stdout, err = cli("ablate", first, second, "--out", tmp_path / "out", "--workers", "2")
    assert status == 0, err
    workers = {}
    for name in ("tiny", "other"):
        out = tmp_path / "out" / name
        done = [t for t in Store.load(open_storage(str(out / "study.journal"), readonly=True),
                                      name).get_trials() if t.state == TrialState.COMPLETE]
        assert len({t.user_attrs["key"] for t in done}) == len(done) == 6
        assert (out / "report.md").is_file() and f"{name}: arms" in stdout  # its lines
        workers[name] = {t.user_attrs["worker"] for t in done}
    assert workers["tiny"] & workers["other"]  # not a new set of processes per spec


@pytest.mark.slow
def test_report_numbers_equal_a_hand_computation(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    status, _, err = cli("ablate", write_spec(tmp_path, seeds=3), "--out", out)
    assert status == 0, err
    values: dict[str, dict[int, int]] = {}
    total = set()
    for t in trials(out):
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["failure"] is None  # 1 epoch of a small net: none fails
            attrs = t.user_attrs
            values.setdefault(attrs["arm"], {})[attrs["seed"]] = attrs["test_correct"]
            total.add(attrs["test_total"])
            assert attrs["test_acc"] == pytest.approx(attrs["test_correct"] / attrs["test_total"])
    (n,) = total
    text = (out / "report.md").read_text()
    arms_table = text[text.index("## Arms (exploratory)"):text.index("## Mechanisms")]
    rows = {line.split(" | ")[0].strip("| "): line for line in arms_table.splitlines()
            if line.startswith("| model.norm")}
    base = "model.norm=batch, reg=none"
    for arm, by_seed in values.items():
        xs = [by_seed[s] / n for s in range(3)]
        m, half = statistics.mean(xs), stats.t.ppf(0.975, 2) * statistics.stdev(xs) / math.sqrt(3)
        assert f"| {m:.4f} [{max(m - half, 0):.4f}, {min(m + half, 1):.4f}] |" in rows[arm]
    others = [a for a in values if a != base]
    raw = {}
    for arm in others:  # counts of images, paired by seed: the exploratory Δ and unadjusted p
        d = [(values[arm][s] - values[base][s]) / n for s in range(3)]
        half = stats.t.ppf(0.975, 2) * np.std(d, ddof=1) / math.sqrt(3)
        raw[arm] = stats.ttest_rel([values[arm][s] for s in range(3)],
                                   [values[base][s] for s in range(3)]).pvalue
        assert f"| {np.mean(d):+.4f} [{np.mean(d) - half:+.4f}, {np.mean(d) + half:+.4f}] | " \
            f"{raw[arm]:.3g} (paired test) |" in rows[arm]
    # the confirmatory family (no hypothesis: every arm vs the baseline), Holm at the first
    # look's α: seeds: 3 plans up to 10 seeds, Pocock-type spending at 3/10
    alpha = 0.05 * math.log(1 + (math.e - 1) * 0.3)
    family = text[text.index("## Arms against the baseline"):text.index("## Looks")]
    order = sorted(others, key=raw.get)  # Holm by hand: (m − rank)·p, running maximum, cap 1
    running = 0.0
    for rank, arm in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * raw[arm]))
        (line,) = [row for row in family.splitlines() if row.startswith(f"| test_acc: {arm} vs")]
        assert f"| {raw[arm]:.3g} | {running:.3g} | {alpha:.3g} (1) |" in line
    assert f"| 1 | 3 | {alpha:.4g} | {alpha:.4g} |" in text  # the look, stored
    assert "plan allows" not in text  # the plan's α at each look: the column it would repeat
    assert "| baseline |" in rows[base]
    (out / "report.md").unlink()
    status, stdout, _ = cli("report", "tiny", "--out", out)  # rebuilt from the storage alone
    assert status == 0 and (out / "report.md").is_file() and "model.norm=none" in stdout


def test_a_changed_spec_does_not_mix_into_an_existing_study(cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = write_spec(tmp_path, seeds=1, arms="norm only")
    assert cli("ablate", spec, "--out", out)[0] == 0
    spec.write_text(spec.read_text().replace("trainer.max_epochs=1", "trainer.max_epochs=2"))
    status, _, err = cli("ablate", spec, "--out", out)
    assert status == 2 and "made from a different spec" in err
    assert len(complete_keys(out)) == 3


def test_shipped_specs_are_valid() -> None:
    from cnnlab.studies.searches.spec import load_search_spec

    paths = sorted(Path("experiments").glob("*.yaml"))
    specs = [load_spec(p) for p in paths if p.name != "search.yaml"]
    assert load_search_spec(Path("experiments/search.yaml")).folds >= 2
    names = {s.name for s in specs}
    assert {"norm", "dropout", "regularization", "augmentation", "batch_norm_size",
            "hidden_units", "learning_rate"} <= names
    for spec in specs:
        assert spec.quick and spec.seeds >= 3


def test_numeric_factor_levels_reach_the_dashboard_as_numbers_and_names_stay_text() -> None:
    """``factor.optim.lr: "0.0003"`` sorted as text in W&B's parallel coordinates."""
    lr = load_spec(Path("experiments/learning_rate.yaml"))
    values = [lr.level_values(arm.levels)["optim.lr"] for arm in lr.arms]
    assert all(isinstance(v, float) for v in values) and sorted(values)[0] == 0.0003
    norm = load_spec(Path("experiments/norm.yaml"))  # model.norm: names; optim.lr: numbers
    kinds = {f: {type(norm.level_values(arm.levels)[f]) for arm in norm.arms} for f in norm.factors}
    assert kinds == {"model.norm": {str}, "optim.lr": {float}}


@pytest.mark.slow
def test_sqlite_storage(cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = write_spec(tmp_path, seeds=1, arms="norm only")
    status, _, err = cli("ablate", spec, "--out", tmp_path / "out", "--storage", url)
    assert status == 0, err
    done = [t for t in Store.load(open_storage(url, readonly=True), "tiny").get_trials()
            if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and not (tmp_path / "out" / "study.journal").exists()
    status, _, _ = cli("report", "tiny", "--out", tmp_path / "again", "--storage", url)
    assert status == 0 and (tmp_path / "again" / "report.md").is_file()


def test_make_ablation_runs_every_ablation_spec_and_not_the_search() -> None:
    dry = subprocess.run(["make", "--no-print-directory", "-n", "ablation"], capture_output=True,
                         text=True, check=True)
    (command,) = [line for line in dry.stdout.splitlines() if "cnnlab ablate" in line]
    assert "--quick" in command and "search.yaml" not in command
    for name in ("norm", "dropout", "regularization", "augmentation", "batch_norm_size",
                 "hidden_units", "learning_rate"):
        assert f"experiments/{name}.yaml" in command


@pytest.mark.slow
def test_workers_auto_gives_the_same_trial_metrics_as_one_worker(cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, seeds=1)
    spec.write_text(spec.read_text().replace("data.batch_size=128]",
                                             "data.batch_size=128, trainer.threads=1]"))
    results = {}
    for workers in ("1", "auto"):
        out = tmp_path / workers
        status, _, err = cli("ablate", spec, "--out", out, "--workers", workers)
        assert status == 0, err
        results[workers] = {t.user_attrs["key"]: {k: t.user_attrs[k] for k in
                                                  ("test_acc", "val_acc", "train_loss", "epochs")}
                            for t in trials(out) if t.state == TrialState.COMPLETE}
    assert len(results["1"]) == 4 and results["auto"] == results["1"]


@pytest.mark.slow
def test_an_edited_base_config_file_is_another_study(cli, tmp_path: Path) -> None:
    """A spec's ``configs:`` files are part of the study's identity: after an edit (another
    learning rate), growing the study would mix two settings, so it is refused and nothing
    around it changes; the unedited file resumes it."""
    base = tmp_path / "base.yaml"
    base.write_text("optim:\n  lr: 0.01\n")
    spec = write_spec(tmp_path, seeds=1, arms="norm only")
    spec.write_text(spec.read_text().replace("name: tiny\n", f"name: tiny\nconfigs: [{base}]\n"))
    out = tmp_path / "out"
    assert cli("ablate", spec, "--out", out)[0] == 0
    base.write_text("optim:\n  lr: 0.05\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    status, _, err = cli("ablate", spec, "--out", out, "--seeds", "2")
    assert status == 2 and "configs resolve differently now (a configs: file or the defaults " \
        "changed since)" in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    base.write_text("optim:\n  lr: 0.01\n")
    assert cli("ablate", spec, "--out", out, "--seeds", "2")[0] == 0
    assert len(complete_keys(out)) == 6


@pytest.mark.slow
def test_the_command_prints_its_own_progress_and_no_optuna_log_lines(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, seeds=1, arms="norm only")
    done = subprocess.run([sys.executable, "-m", "cnnlab.cli", "ablate", str(spec), "--out",
                           str(tmp_path / "out"), "--workers", "1"], capture_output=True,
                          text=True, env={**os.environ, "WANDB_MODE": "disabled"}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "tiny [3/3]" in done.stdout  # a line per finished trial (not a terminal)
    assert "[I " not in done.stderr and "A new study created" not in done.stderr, done.stderr


@pytest.mark.slow
def test_fewer_seeds_than_the_study_has_says_so_and_changes_nothing(cli, tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path, seeds=2, arms="norm only"), tmp_path / "out"
    assert cli("ablate", spec, "--out", out, "--workers", "1")[0] == 0
    keys, report = sorted(complete_keys(out)), (out / "report.md").read_text()
    status, _, err = cli("ablate", spec, "--out", out, "--workers", "1", "--seeds", "1")
    assert status == 0 and "has 2 seeds per arm; 1 changes nothing" in err
    study = Store.load(open_storage(str(out / "study.journal"), readonly=True), "tiny")
    assert study.user_attrs["spec"]["seeds"] == 2  # the stored spec was rewritten to 1 before
    assert sorted(complete_keys(out)) == keys and (out / "report.md").read_text() == report
