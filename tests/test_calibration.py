"""The decision rules checked as procedures, through the reports' own code: null family-wise
error ≤ α on count lattices (one- and two-image differences, ties), with failures, under every
shipped seed plan; exact sizes by enumeration for 3–5 seeds; power as the reports state it."""

import csv
import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from test_comparisons import _accuracy, _spec, _store

from cnnlab.metrics import METRICS
from cnnlab.shipped import ablation_names, pilots, specs
from cnnlab.studies.ablations.report import check_rows
from cnnlab.studies.ablations.results import collect
from cnnlab.studies.ablations.spec import PILOT_SEED, load_spec
from cnnlab.studies.statistics.comparisons import Sample, boschloo_p, paired_p, t_p
from cnnlab.studies.statistics.power import (
    Counts,
    Setting,
    count_samples,
    detectable_effect,
    error_rate,
    lattice_samples,
    power,
    rates_needed,
    rates_power,
    simulate,
)
from cnnlab.studies.statistics.sequential import Look, Plan, planned_looks

SIMS = 1000
# every shipped spec's plan, and --seeds auto's
SHIPPED_PLANS = sorted({load_spec(specs()[name]).plan for name in ablation_names()} |
                       {Plan(3, 10, 2)}, key=lambda p: (p.most, p.first))
MOST = max(p.most for p in SHIPPED_PLANS)
LOOKS = [[Look(n, 0.05)] for n in (3, 4, 5, 10)] + [planned_looks(p) for p in SHIPPED_PLANS]


def test_a_stronger_lattice_is_never_weaker_evidence() -> None:
    """The reproducers: the t-test gave [-1]*9 + [0] p 8.5e-6 but [-1]*10 p 0.002."""
    assert t_p(np.array([-1.0] * 9 + [0.0])) < 1e-5  # the trap the rule avoids
    assert paired_p(np.array([-1.0] * 9 + [0.0])) >= paired_p(np.array([-1.0] * 10))
    assert paired_p(np.array([1.0, 1, 1, 1, 2])) >= paired_p(np.array([1.0] * 5)) == 2 / 32
    assert paired_p(np.array([-3.0] * 9 + [0.0])) == paired_p(np.array([-1.0] * 9 + [0.0]))
    spread = np.array([12.0, 9, 15, 7, 11])  # counts spread over many images: the t-test
    assert paired_p(spread) == pytest.approx(stats.ttest_1samp(spread, 0).pvalue)


@pytest.mark.slow
@pytest.mark.parametrize("arms", [1, 6, 11])
def test_family_wise_error_on_count_lattices(arms: int) -> None:
    """Near-identical arms: differences of 0, ±1 (or ±1, ±2) images, P(d ≠ 0) 0.5–1."""
    for steps, nonzero in itertools.product((1, 2), (0.5, 0.9, 1.0)):
        rng = np.random.default_rng([arms, steps, int(10 * nonzero)])
        data = lattice_samples(steps, nonzero, arms, MOST, SIMS, rng)
        for looks in LOOKS:
            rate, se = error_rate(simulate(looks, data, [0.0] * arms), np.ones(arms, bool))
            assert rate <= 0.05 + 3 * se, (steps, nonzero, [k.seeds for k in looks], rate)


@pytest.mark.slow
@pytest.mark.parametrize("arms", [1, 6, 11])
def test_equivalence_with_the_truth_at_the_margin(arms: int) -> None:
    """TOST must not call arms equivalent when the true difference is exactly the margin."""
    for steps, nonzero in itertools.product((1, 2), (0.5, 0.9, 1.0)):
        rng = np.random.default_rng([arms, steps, int(10 * nonzero), 1])
        data = lattice_samples(steps, nonzero, arms, MOST, SIMS, rng, centre=3)
        for looks in LOOKS:
            wrong = simulate(looks, data, [3.0] * arms).equivalent.any(-1)
            se = math.sqrt(max(wrong.mean() * (1 - wrong.mean()), 1e-12) / SIMS)
            assert wrong.mean() <= 0.05 + 3 * se, (steps, nonzero, [k.seeds for k in looks])


@pytest.mark.slow
@pytest.mark.parametrize("failure", [0.1, 0.3, 0.5])
def test_family_wise_error_with_failures(failure: float) -> None:
    """Failures independent of the seed or shared by a seed's runs (correlated with it), on a
    lattice of near-identical arms and with a realistic seed-to-seed spread."""
    for arms, together in itertools.product((1, 6, 11), (False, True)):
        rng = np.random.default_rng([arms, int(10 * failure), together])
        spread = [] if together else [count_samples(Counts(failure=failure), [0.0] * arms,
                                                    MOST, SIMS, rng)]
        for data in [lattice_samples(2, 0.9, arms, MOST, SIMS, rng, fails=failure,
                                     paired_failures=together), *spread]:
            for looks in LOOKS:
                rate, se = error_rate(simulate(looks, data, [0.0] * arms), np.ones(arms, bool))
                assert rate <= 0.05 + 3 * se, (arms, together, [k.seeds for k in looks], rate)


def _lattice_nulls() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Symmetric null laws of a paired difference on a lattice: one or two images with a mass
    at 0, and a discretised normal."""
    laws = {}
    for steps, zero in itertools.product((1, 2), (0.0, 0.1, 0.5)):
        side = np.full(steps, (1 - zero) / (2 * steps))
        laws[f"±{steps}, P(0) {zero}"] = (np.arange(-steps, steps + 1.0),
                                         np.concatenate([side, [zero], side]))
    for sd in (1.0, 2.0):
        k = np.arange(-8, 9.0)
        w = stats.norm.cdf(k + 0.5, 0, sd) - stats.norm.cdf(k - 0.5, 0, sd)
        laws[f"normal sd {sd}"] = (k, w / w.sum())
    return laws


@pytest.mark.slow
@pytest.mark.parametrize("n", [3, 4, 5])
def test_exact_size_by_enumeration(n: int) -> None:
    """Every outcome of n seeds enumerated with its probability: the size of the paired test
    at the αs a look and a family give (0.05, 0.0095, 0.0045) is at most α. The t-test alone
    reached 7× α at 5 seeds."""
    for name, (support, prob) in _lattice_nulls().items():
        index = np.array(list(itertools.product(range(len(support)), repeat=n)))
        d, w = support[index], prob[index].prod(-1)
        p = paired_p(d)
        for alpha in (0.05, 0.0095, 0.0045):
            assert float(w[p <= alpha].sum()) <= alpha, (name, alpha)


def test_the_t_test_alone_fails_the_enumeration() -> None:
    """The check has teeth: the plain t-test breaks it on the two-image lattice (6× α)."""
    support, prob = _lattice_nulls()["±2, P(0) 0.0"]
    index = np.array(list(itertools.product(range(5), repeat=5)))
    d, w = support[index], prob[index].prod(-1)
    assert float(w[t_p(d) <= 0.0095].sum()) > 0.0095


@pytest.mark.parametrize("setting", [Setting(5.0, lattice=True), Setting(1.2, lattice=True),
                                     Setting(0.01), Setting(5.0, True, 0.3, 0.0)],
                         ids=["counts", "coarse-counts", "continuous", "with-failures"])
def test_power_lines_hold_in_simulation(setting: Setting) -> None:
    """At the stated detectable |Δ| and α, fresh simulations of the comparison (other draws
    than the statement's) decide it 80% ± 3 s.e. of the time."""
    n, alpha, sims = 8, 0.05 / 2, 4000
    effect = detectable_effect(n, alpha, setting)
    assert math.isfinite(effect)
    found = power(effect, n, alpha, Setting(setting.sd, setting.lattice, setting.fail_arm,
                                            setting.fail_reference, seed=99), sims)
    assert abs(found - 0.8) <= 3 * math.sqrt(0.16 / sims), found


def test_power_lines_are_at_the_alpha_each_comparison_was_tested(tmp_path: Path) -> None:
    """A two-look study: the undecided comparison's statement is at its last look's α over the
    comparisons tested there, and simulating the report's own decision at the stated |Δ|
    decides it about 80% of the time."""
    spec = _spec(tmp_path, "{min: 4, max: 8, step: 4}")
    rng = np.random.default_rng(5)
    base = rng.integers(330, 345, 8)
    rows = [{"arm": "arm=base", "seed": s, "metrics": _accuracy(int(c))} for s, c in
            enumerate(base)]
    noise = [3, -4, 5, -2, 4, -6, 2, -1]
    rows += [{"arm": "arm=other", "seed": s, "metrics": _accuracy(int(c) + noise[s])}
             for s, c in enumerate(base)]
    store = _store(tmp_path / "s.journal", spec, rows)
    plan = Plan(4, 8, 4)
    looks = planned_looks(plan)
    store.study.set_user_attr("looks_taken", [{"seeds": k.seeds, "alpha": k.alpha} for k in looks])
    (check,) = collect(store).checks
    assert check.outcome == "undecided" and check.power is not None
    assert check.power.alpha == pytest.approx(looks[1].alpha)  # not 0.05, not one look
    assert check.power.test == "paired test"
    effect = check.power.detectable * 360  # in images
    sims = 4000
    d = np.round(effect + np.std(noise, ddof=1) * np.random.default_rng(1).standard_normal(
        (sims, 8)))
    sample = Sample(d, np.zeros_like(d), np.zeros_like(d, bool), np.zeros_like(d, bool))
    decided = (sample.p() < looks[1].alpha).mean()
    assert abs(decided - 0.8) <= 3 * math.sqrt(0.16 / sims), decided


FLATTERING = {  # what a failed run measured that would read as better than every success
    "test_loss": math.nan, "train_loss": math.inf, "fit_seconds": 0.01, "weight_l2": 0.0,
    "generalization_gap": 0.0, "weight_sparsity": 1.0, "bn_train_eval_gap": math.nan,
    "epochs_to_target": 1, "train_acc": 0.99, "val_acc": 0.99,
}


NOT_FINITE = {  # a diverged run's NaN weights: nothing it measured is a number
    "test_loss": math.nan, "train_loss": math.nan, "fit_seconds": math.inf,
    "weight_l2": math.nan, "generalization_gap": math.nan, "weight_sparsity": math.nan,
    "bn_train_eval_gap": math.nan, "epochs_to_target": None, "train_acc": math.nan,
    "val_acc": math.nan,
}


def _run(correct: int, failed: dict | None, rng: np.random.Generator) -> dict:
    metrics = {**_accuracy(correct), "val_acc": correct / 360, "train_acc": 0.97,
               "val_correct": correct, "val_total": 360, "train_correct": 1400,
               "train_total": 1440, "test_loss": rng.uniform(0.1, 0.3),
               "train_loss": rng.uniform(0.05, 0.1), "fit_seconds": rng.uniform(2, 3),
               "weight_l2": rng.uniform(5, 6), "generalization_gap": rng.uniform(0.0, 0.03),
               "weight_sparsity": rng.uniform(0.0, 0.1), "bn_train_eval_gap": 0.0,
               "epochs_to_target": int(rng.integers(2, 4)), "max_epochs": 6, "epochs": 6}
    if failed is not None:
        metrics |= {**failed, "failure": "diverged", "diverged": True, "train_correct": 1430}
    return metrics


def test_a_failed_run_enters_every_metric_at_a_value_no_run_beats(tmp_path: Path) -> None:
    """For every stored metric: a failed run with NaN / inf or a flattering measurement is
    counted in every comparison (confirmatory and exploratory), never dropped, and at a
    value no successful run is worse than."""
    metrics = [m for m in METRICS if not METRICS[m].rates]
    spec = _spec(tmp_path, "{min: 4, max: 4}", f"metrics: [{', '.join(metrics)}]\n")
    rng = np.random.default_rng(0)
    rows = [{"arm": "arm=base", "seed": s, "metrics": _run(340 + s, None, rng)}
            for s in range(4)]
    failures = {2: NOT_FINITE, 3: FLATTERING}
    rows += [{"arm": "arm=other", "seed": s, "metrics": _run(338 + s, failures.get(s), rng)}
             for s in range(4)]
    results = collect(_store(tmp_path / "s.journal", spec, rows))
    for metric in metrics:
        trained = [v for r in results.trials if r.failure is None
                   and (v := r.value(metric)) is not None]
        worst = min(trained) if METRICS[metric].direction == "maximize" else max(trained)
        for failed in (r for r in results.trials if r.failure is not None):
            value = failed.value(metric)
            assert value is not None and math.isfinite(value), (metric, failed.seed)
            assert (value <= worst if METRICS[metric].direction == "maximize"
                    else value >= worst), (metric, failed.seed, value, worst)
    (check,) = results.checks
    assert check.comparison.delta.n == 4 and check.comparison.failed_pairs == 2
    for metric, per_arm in results.mechanisms.items():
        (_, interval, comparison), = [x for x in per_arm if x[0] == "arm=other"]
        assert interval.n == 4 and comparison is not None, metric
        assert comparison.delta.n == 4 and comparison.failed_pairs == 2, metric


def test_a_report_mid_round_spends_no_alpha_and_the_round_spends_it_once(tmp_path: Path) -> None:
    """``cnnlab report`` during the first round (no look stored) decides nothing and stores
    nothing; the round's end stores its look with the plan's share, once."""
    spec = _spec(tmp_path, "{min: 4, max: 8, step: 4}")
    rows = [{"arm": "arm=base", "seed": s, "metrics": _accuracy(340 + s)} for s in range(4)]
    rows += [{"arm": "arm=other", "seed": s, "metrics": _accuracy(c)}
             for s, c in enumerate([305, 301, 309, 302])]
    store = _store(tmp_path / "s.journal", spec, rows, look=False)
    mid = collect(store)
    assert not mid.looks_stored and mid.alpha_spent == 0.0
    assert [c.outcome for c in mid.checks] == ["undecided"] and mid.verdict == "undecided"
    assert "looks_taken" not in store.study.user_attrs  # a report stores nothing
    store.take_next_look(spec)
    store.take_next_look(spec)  # the same round again: no second look
    done = collect(store)
    assert done.looks == [Look(4, Plan(4, 8, 4).spent(4))]
    assert done.checks[0].outcome == "as expected" and done.alpha_spent == Plan(4, 8, 4).spent(4)


QUOTE = re.compile(r"^seeds: .*# cnnlab plan (\S+) --quick: (.*)$", re.M)
FIGURE = re.compile(r"(P\(supported\)|P\(decided\)|FWER) ([\d.]+)")


@pytest.mark.parametrize("name", ablation_names())
def test_a_spec_quotes_what_its_stored_pilot_gives(cli, name: str) -> None:
    """Every shipped spec quotes its plan's figures as ``cnnlab plan NAME --quick`` prints them
    from the pilot shipped beside it (seeds from 1000); rerun, each is within 3 s.e. of 2000
    simulated studies."""
    spec = specs()[name]
    assert f"{name}-pilot-quick" in pilots()  # the pilot is stored
    rows = list(csv.DictReader(pilots()[f"{name}-pilot-quick"].open()))
    assert min(int(r["seed"]) for r in rows) >= PILOT_SEED  # never a confirmatory seed
    (command, quoted), = QUOTE.findall(spec.read_text())
    assert command == name
    status, out, _ = cli("plan", name, "--quick")
    assert status == 0
    line = next(x for x in out.splitlines() if "P(supported)" in x)
    got = _figures(line)
    for key, value in FIGURE.findall(quoted):
        se = math.sqrt(max(got[key] * (1 - got[key]), 0.0025) / 2000)
        assert abs(float(value) - got[key]) <= 3 * se, (key, value, got[key])


def _figures(line: str) -> dict[str, float]:
    """A plan line's P(supported), P(decided) and FWER."""
    out = {k: float(v) for k, v in re.findall(r"(P\(supported\)|P\(decided\)) ([\d.]+)", line)}
    out["FWER"] = float(re.search(r"FWER under the null ([\d.]+)", line).group(1))
    return out


@pytest.mark.slow
def test_boschloo_seeds_needed_have_the_stated_power() -> None:
    """"Seeds for the observed rates" is the fewest seeds whose exact power reaches 0.80 (the
    expected counts alone gave seeds with a real power of 0.42); drawn outcomes agree."""
    arm, reference, alpha = 0.5, 0.05, 0.025
    n = rates_needed(arm, reference, alpha)
    assert n is not None and rates_power(arm, reference, n, alpha) >= 0.8
    assert rates_power(arm, reference, n - 1, alpha) < 0.8
    rng, sims = np.random.default_rng(4), 2000
    a, r = rng.binomial(n, arm, sims), rng.binomial(n, reference, sims)
    decided = np.mean([boschloo_p(int(x), int(y), n, n) < alpha for x, y in zip(a, r, strict=True)])
    assert decided >= 0.8 - 3 * math.sqrt(0.16 / sims)


def test_a_power_line_never_names_an_effect_beyond_the_metric_range(tmp_path: Path) -> None:
    """3 seeds of wildly spread accuracies: 80% power needs |Δ| > 1, which an accuracy cannot
    differ by; the line says so instead of "|Δ| ≥ 1.6"."""
    spec = _spec(tmp_path)
    rows = [{"arm": "arm=base", "seed": s, "metrics": _accuracy(c)}
            for s, c in enumerate([350, 120, 340])]
    rows += [{"arm": "arm=other", "seed": s, "metrics": _accuracy(c)}
             for s, c in enumerate([100, 345, 200])]
    results = collect(_store(tmp_path / "s.journal", spec, rows))
    (check,) = results.checks
    assert check.outcome == "undecided" and check.power is not None
    assert check.power.detectable > 1
    assert "no effect within the metric's range" in check_rows(results)[1][-1]
