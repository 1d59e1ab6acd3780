"""Pruned vs unpruned cross-validated search: same spec, sampler seed and trial count, over
several sampler seeds (one seed is noise). The measures are fold-epochs and accuracies, which
do not depend on timing, so the six searches run two at a time (one per core, one torch
thread each: the trial policy) in worker processes."""

import os
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from optuna.trial import TrialState
from rich.console import Console

from benchmarks.common import Ratio
from cnnlab import api
from cnnlab.process import configure
from cnnlab.studies.engine.storage import default_url, open_storage
from cnnlab.studies.engine.store import Store

TRIALS = 30  # as make tune
SEEDS = (0, 1, 2)
PRUNER = "pruner: {name: median, n_startup_trials: 3}"


def _search(pruned: bool, seed: int) -> tuple[float, int]:
    """Best CV accuracy and fold-epochs spent by a quick search, with the spec's pruner or none."""
    root = Path(tempfile.mkdtemp(prefix="cnnlab-bench-"))
    text = Path("experiments/search.yaml").read_text()
    assert PRUNER in text, "benchmarks/bench_search.py expects the pruner of experiments/search.yaml"
    text = text.replace("sampler: {name: tpe, seed: 0}", f"sampler: {{name: tpe, seed: {seed}}}")
    spec_path = root / "search.yaml"
    spec_path.write_text(text if pruned else text.replace(PRUNER, "pruner: {name: none}"))
    out = root / "out"
    api.tune(spec_path, quick=True, trials=TRIALS, out=out, study="bench",
             console=Console(quiet=True))
    trials = Store.load(open_storage(default_url(out), readonly=True), "bench").get_trials()
    best = max(t.value for t in trials if t.state == TrialState.COMPLETE)
    return best, sum(t.user_attrs.get("fold_epochs", 0) for t in trials)


def _job(job: tuple[bool, int]) -> tuple[float, int]:
    configure()  # a spawned process: quiet as the command is
    os.environ["WANDB_MODE"] = "disabled"  # fold-epochs and accuracies do not depend on W&B
    return _search(*job)


def bench() -> list[Ratio]:
    jobs = [(pruned, seed) for seed in SEEDS for pruned in (True, False)]
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        done = dict(zip(jobs, pool.map(_job, jobs), strict=True))
    runs = [(done[True, seed], done[False, seed]) for seed in SEEDS]
    spent = sum(p[1] for p, _ in runs), sum(f[1] for _, f in runs)
    gaps = [100 * (full[0] - pruned[0]) for pruned, full in runs]
    per_seed = "; ".join(f"seed {s}: {p[1]} vs {f[1]}, best {p[0]:.4f} vs {f[0]:.4f}"
                         for s, (p, f) in zip(SEEDS, runs, strict=True))
    return [
        Ratio("search fold-epochs, pruned / unpruned", spent[0] / spent[1], 0.5,
              f"{TRIALS} TPE trials × {len(SEEDS)} sampler seeds, 3 folds, quick preset, median "
              f"pruner (fold 0 per epoch, then per fold): {spent[0]} vs {spent[1]} fold-epochs",
              lower_is_better=True),
        Ratio("search best CV, unpruned − pruned (points)", statistics.mean(gaps), 0.3,
              f"mean over seeds, max {max(gaps):+.2f}; {per_seed}", lower_is_better=True),
    ]
