"""Pruned vs unpruned cross-validated search: same spec, sampler seed and trial count."""

import tempfile
from pathlib import Path

from optuna.trial import TrialState
from rich.console import Console

from benchmarks.common import Ratio
from cnnlab.studies.search import tune
from cnnlab.studies.search_spec import load_search_spec, with_overrides
from cnnlab.studies.storage import default_url, load_study, open_storage

TRIALS = 30  # as make tune


def _search(pruner: str) -> tuple[float, int]:
    """Best CV accuracy and fold-epochs spent by a quick search, with the spec's pruner or none."""
    root = Path(tempfile.mkdtemp(prefix="cnnlab-bench-"))
    text = Path("experiments/search.yaml").read_text()
    spec_path = root / "search.yaml"
    spec = "pruner: {name: median, n_startup_trials: 3}"
    assert spec in text, "benchmarks/bench_search.py expects the pruner of experiments/search.yaml"
    spec_path.write_text(text if pruner == "spec" else text.replace(spec, "pruner: {name: none}"))
    spec = with_overrides(load_search_spec(spec_path), TRIALS, None)
    out = root / "out"
    tune(spec, True, out, default_url(out), "bench", 1, None, Console(quiet=True))
    trials = load_study(open_storage(default_url(out), readonly=True), "bench").get_trials()
    best = max(t.value for t in trials if t.state == TrialState.COMPLETE)
    return best, sum(t.user_attrs.get("fold_epochs", 0) for t in trials)


def bench() -> list[Ratio]:
    best_pruned, epochs_pruned = _search("spec")
    best_full, epochs_full = _search("none")
    gap = 100 * (best_full - best_pruned)
    return [Ratio("search fold-epochs, pruned / unpruned", epochs_pruned / epochs_full, 0.6,
                  f"{TRIALS} TPE trials (seed 0), 3 folds, quick preset, median pruner: {epochs_pruned} vs "
                  f"{epochs_full} fold-epochs; best CV {best_pruned:.4f} vs {best_full:.4f} "
                  f"({gap:+.2f} points, target within 0.3)", lower_is_better=True)]
