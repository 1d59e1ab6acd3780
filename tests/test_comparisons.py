"""Comparisons a statistician signs: bounded intervals, Holm, mechanism metrics, seeds until decided."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from optuna.trial import TrialState
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired
from test_reliability import ENV
from torch import nn
from wandb_records import run_contents

from cnnlab.diagnostics import SPARSITY_THRESHOLD, epochs_to, weight_l2, weight_sparsity
from cnnlab.studies.ablation import open_ablation, planned, reconcile
from cnnlab.studies.comparisons import Interval, Pair, compare, holm, tost_p
from cnnlab.studies.spec import load_spec
from cnnlab.studies.storage import load_study, open_storage


def test_an_accuracy_interval_stays_inside_0_1_when_a_seed_collapses() -> None:
    accs = [0.97, 0.98, 0.10]  # the third seed collapsed to chance
    mean = float(np.mean(accs))
    half = stats.t.ppf(0.975, 2) * np.std(accs, ddof=1) / math.sqrt(3)
    assert mean + half > 1 and mean - half < 0  # the plain t-interval leaves [0, 1] both ways
    interval = Interval.of(accs, (0, 1))
    assert (interval.low, interval.high) == (0.0, 1.0) and interval.mean == pytest.approx(mean)
    assert interval.text() == f"{mean:.4f} [0.0000, 1.0000]"
    inside = Interval.of([0.90, 0.92, 0.91], (0, 1))  # not clipped where it need not be
    assert inside.low == pytest.approx(0.91 - stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3))
    (delta,) = compare([Pair("a", "b", "test_acc", {0: 0.1, 1: 0.95, 2: 0.96},
                             {0: 0.97, 1: 0.1, 2: 0.95})], {"test_acc": (0, 1)})
    assert -1 <= delta.delta.low and delta.delta.high <= 1  # a difference of accuracies: [−1, 1]


def test_holm_matches_a_hand_computation() -> None:
    # sorted p: 0.01·4 = 0.04; 0.03·3 = 0.09; 0.04·2 = 0.08 → 0.09 (monotone); 0.2·1 = 0.2
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    rng = np.random.default_rng(0)  # and the same as statsmodels' implementation
    for p_values in rng.uniform(0, 0.2, size=(20, 7)):
        assert holm(list(p_values)) == pytest.approx(list(multipletests(p_values, method="holm")[1]))
    adjusted = holm([0.3, math.nan, 0.6])  # an untestable comparison neither counts nor changes
    assert adjusted[0] == pytest.approx(0.6) and math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.6)
    base = {s: 0.9 for s in range(4)}
    pairs = [Pair("big", "base", "test_acc", {s: 0.5 + 0.01 * s for s in range(4)}, base),
             Pair("small", "base", "test_acc", {0: 0.91, 1: 0.89, 2: 0.92, 3: 0.9}, base)]
    big, small = compare(pairs, {"test_acc": (0, 1)})
    raw = [stats.ttest_rel(list(p.values.values()), list(base.values())).pvalue for p in pairs]
    assert (big.p, small.p) == pytest.approx(raw)
    assert (big.p_holm, small.p_holm) == pytest.approx(
        [2 * min(raw), max(2 * min(raw), max(raw))])
    assert big.significant and big.sign == -1 and not small.significant
    (same,) = compare([Pair("a", "b", "epochs_to_target", {0: 2, 1: 3, 2: 4}, {0: 3, 1: 4, 2: 5})],
                      {"epochs_to_target": (1, math.inf)})
    assert same.p == 0.25 and not same.significant  # no spread: 2/2³, not the t-test's p = 0
    near = {0: 0.901, 1: 0.899, 2: 0.902, 3: 0.9}
    close, far = compare([Pair("close", "base", "test_acc", near, base),
                          Pair("far", "base", "test_acc", {0: 0.93, 1: 0.87, 2: 0.95, 3: 0.85},
                               base)], {"test_acc": (0, 1)}, margin={"test_acc": 0.01})
    assert close.equivalent and close.decided and not close.significant  # TOST within ±0.01
    diffs = np.subtract(list(near.values()), list(base.values()))
    ours = tost_p(list(near.values()), list(base.values()), 0.01)
    assert ours == pytest.approx(ttost_paired(np.array(list(near.values())),
                                              np.array(list(base.values())), -0.01, 0.01)[0])
    assert ours < 0.05 and abs(diffs.mean()) < 0.01
    assert not far.equivalent and not far.decided  # too noisy to tell either way


def test_sparsity_and_weight_norm_match_a_hand_computation() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([0.0, 5e-4, -2e-3, 1.0, 0.5, -1e-4, 3.0, 0.0])
                              .reshape(2, 1, 2, 2))
        model[0].bias.fill_(0.0)  # biases and norm parameters never count
        model[1].weight.fill_(0.0)
        model[3].weight.copy_(torch.tensor([[2.0, 0.0], [1e-5, -4.0], [0.1, 1e-3]]))
    weights = [0.0, 5e-4, -2e-3, 1.0, 0.5, -1e-4, 3.0, 0.0, 2.0, 0.0, 1e-5, -4.0, 0.1, 1e-3]
    small = sum(abs(w) < SPARSITY_THRESHOLD for w in weights)
    assert small == 6  # 0, 5e-4, -1e-4, 0, 0, 1e-5 (1e-3 itself is not below the threshold)
    assert weight_sparsity(model) == pytest.approx(6 / 14)
    assert weight_l2(model) == pytest.approx(math.sqrt(sum(w * w for w in weights)))
    history = [{"val/acc": 0.5}, {"val/acc": 0.96}, {"val/acc": 0.94}]
    assert epochs_to(history, 0.95) == 2 and epochs_to(history, 0.97) is None


MECHANISMS = ("train_acc", "generalization_gap", "weight_sparsity", "weight_l2",
              "epochs_to_target", "bn_train_eval_gap")


def test_every_run_records_the_mechanism_metrics(cli, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)  # an offline W&B run to read back
    out = tmp_path / "run"
    status, _, err = cli("fit", "--out", out, "trainer.max_epochs=2", "model.channels=[8]",
                         "model.hidden_units=[16]", "reg.kind=l1", "reg.strength=1e-3",
                         "trainer.target_acc=0.01", "trainer.images=false")
    assert status == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["weight_sparsity"] <= 1 and metrics["weight_l2"] > 0
    assert metrics["generalization_gap"] == pytest.approx(metrics["train_acc"] - metrics["test_acc"])
    assert metrics["epochs_to_target"] == 1  # any accuracy reaches 1%
    (record,) = out.rglob("run-*.wandb")
    summary = run_contents(record)["summary"]  # what W&B shows, read back from its offline file
    assert {k: summary[k] for k in MECHANISMS} == pytest.approx({k: metrics[k] for k in MECHANISMS})


def test_a_trial_stores_the_mechanism_metrics_and_never_reached_is_censored(
        cli, tmp_path: Path) -> None:
    spec = tmp_path / "one.yaml"
    spec.write_text(AUTO_SPEC.replace("seeds: {min: 3, max: 5, step: 1}", "seeds: 1")
                    .replace("data.batch_size=16,", "data.batch_size=16, trainer.target_acc=1.0,"))
    status, _, err = cli("ablate", spec, "--out", tmp_path / "out")
    assert status == 0, err
    study = load_study(open_storage(str(tmp_path / "out" / "study.journal"), readonly=True), "auto")
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert set(MECHANISMS) <= set(t.user_attrs) and t.user_attrs["epochs_to_target"] is None
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    header = rows[0].split(",")
    column = header.index("epochs_to_target")
    assert {row.split(",")[column] for row in rows[1:]} == {"2"}  # 1 epoch, never: 1 + 1


AUTO_SPEC = """
name: auto
overrides: [trainer.max_epochs=1, "model.channels=[8]", "model.hidden_units=[16]",
            data.batch_size=16, optim.scheduler=none, wandb.mode=disabled]
factors:
  arm:
    base: {}
    frozen: {optim.lr: 1.0e-9}
    dropout: {model.dropout: 0.2}
seeds: {min: 3, max: 5, step: 1}
baseline: {arm: base}
"""


def _seeds(out: Path) -> dict[str, list[int]]:
    study = load_study(open_storage(str(out / "study.journal"), readonly=True), "auto")
    seeds: dict[str, list[int]] = {}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        seeds.setdefault(t.user_attrs["arm"], []).append(t.user_attrs["seed"])
    return {arm: sorted(s) for arm, s in seeds.items()}


def _decisions(out: Path) -> dict[str, str]:
    rows = [line.split(" | ") for line in (out / "report.md").read_text().splitlines()
            if line.startswith("| arm=")]
    return {row[0].strip("| "): row[-1].strip(" |") for row in rows if len(row) == 8}


def test_seeds_auto_stops_when_decided_and_resumes_after_sigkill(tmp_path: Path) -> None:
    spec = tmp_path / "auto.yaml"
    spec.write_text(AUTO_SPEC)
    clean = tmp_path / "clean"
    command = [sys.executable, "-m", "cnnlab.cli", "ablate", str(spec), "--out"]
    done = subprocess.run([*command, str(clean)], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    seeds, decisions = _seeds(clean), _decisions(clean)
    assert decisions["arm=frozen"] == "lower"  # chance accuracy: decided before the maximum,
    assert len(seeds["arm=frozen"]) < 5  # and no seeds were added to it after that
    for arm in ("arm=frozen", "arm=dropout"):  # more seeds only while undecided, up to the max
        assert decisions[arm] != "undecided" or seeds[arm] == [0, 1, 2, 3, 4]
    assert seeds["arm=base"] == list(range(max(len(s) for s in seeds.values())))
    text = (clean / "report.md").read_text()
    assert "at most 3 looks" in text and "α = 0.05 / looks = 0.0167" in text
    assert "98.3% CI" in text  # each look's intervals at 1 − 0.05/3

    killed = tmp_path / "killed"  # killed in its second round, then rerun: the same study
    proc = subprocess.Popen([*command, str(killed)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if (killed / "report.md").is_file():  # the first round's report: round two has begun
            break
        time.sleep(0.05)
    rounds = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run([*command, str(killed)], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert _seeds(killed) == seeds and _decisions(killed) == decisions
    if rounds:  # the first round left undecided comparisons, so the kill hit round two
        assert max(len(s) for s in seeds.values()) > 3


def test_a_kill_while_a_round_is_queued_resumes_the_whole_round(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "auto.yaml").write_text(AUTO_SPEC)
    spec = load_spec(tmp_path / "auto.yaml")
    study = open_ablation(spec, False, open_storage(str(tmp_path / "study.journal")))
    reconcile(study, spec, False)  # round one: 3 seeds per arm
    real, calls = study.enqueue_trial, []

    def killed(*args, **kwargs):  # the process dies after queueing one trial of round two
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(study, "enqueue_trial", killed)
    with pytest.raises(KeyboardInterrupt):
        reconcile(study, spec, False, {"arm=base": 4, "arm=frozen": 4})
    monkeypatch.setattr(study, "enqueue_trial", real)
    rerun = open_ablation(spec, False, open_storage(str(tmp_path / "study.journal")))
    assert planned(rerun, spec) == {"arm=base": 4, "arm=frozen": 4, "arm=dropout": 3}
    assert reconcile(rerun, spec, False) == 1  # the rest of the round, nothing more
    keys = {t.user_attrs["key"] for t in rerun.get_trials()}
    assert {"arm=base | seed=3", "arm=frozen | seed=3"} <= keys and "arm=dropout | seed=3" not in keys


def test_a_hypothesis_naming_an_unknown_level_is_one_line(cli, tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(AUTO_SPEC + "hypothesis:\n  claim: x\n  expect:\n"
                    "    - {arm: {arm: fast}, is: higher}\n")
    status, _, err = cli("ablate", spec, "--out", tmp_path / "out")
    assert status == 2 and not (tmp_path / "out").exists()
    assert err.strip().endswith("hypothesis.expect[0].arm: arm=fast is not a level; allowed: "
                                "base, frozen, dropout")
    spec.write_text(AUTO_SPEC.replace("seeds: {min: 3, max: 5, step: 1}", "seeds: {min: 4, max: 2}"))
    status, _, err = cli("ablate", spec, "--out", tmp_path / "out")
    assert status == 2 and "seeds is {'min': 4, 'max': 2}; allowed:" in err
