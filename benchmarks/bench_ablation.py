"""Ablation overhead and worker scaling.

- what ``make ablation`` runs, on two of its shipped specs (``MAKE_ABLATION``: quick preset,
  ``--workers auto``, one command): its wall time over the sum of its trials' training times
  divided by the cores used (all seven specs take ``make ablation`` minutes, ``make bench`` not);
- throughput of 2 worker processes (one torch thread each) over 1 worker, from the storage's
  trial timestamps, so process start-up is not counted.
"""

import contextlib
import io
import tempfile
import time
from pathlib import Path

from optuna.trial import TrialState
from rich.console import Console

from benchmarks.common import Ratio
from cnnlab import api
from cnnlab.cli import main
from cnnlab.cpus import free_cpus
from cnnlab.studies.engine.storage import default_url, open_storage
from cnnlab.studies.engine.store import Store

SPEC = """
name: bench
overrides: [trainer.max_epochs=15]  # as the full norm spec; the quick preset (6) costs more per epoch
factors:
  model.norm: [batch, group, layer, none]
seeds: {seeds}
"""


def _run(workers: int, seeds: int) -> tuple[float, list]:
    root = Path(tempfile.mkdtemp(prefix="cnnlab-bench-"))
    (root / "bench.yaml").write_text(SPEC.format(seeds=seeds))
    out = root / "out"
    start = time.perf_counter()
    api.ablate(root / "bench.yaml", workers=workers, out=out, console=Console(quiet=True))
    wall = time.perf_counter() - start
    trials = Store.load(open_storage(default_url(out), readonly=True), "bench").get_trials()
    return wall, [t for t in trials if t.state == TrialState.COMPLETE]


def _throughput(trials: list) -> float:
    """Steady-state trials per second: each worker's first trial (its first W&B run and
    Lightning set-up in a fresh process) is left out."""
    firsts = {}
    for t in sorted(trials, key=lambda t: t.datetime_start):
        firsts.setdefault(t.user_attrs["worker"], t.number)
    rest = [t for t in trials if t.number not in firsts.values()]
    span = max(t.datetime_complete for t in rest) - min(t.datetime_start for t in rest)
    return len(rest) / span.total_seconds()


MAKE_ABLATION = ("dropout", "regularization")  # 58 quick trials, two specs in one command


def make_ablation() -> tuple[float, float, int, int]:
    """(wall seconds, Σ trial fit seconds, trials, workers) of what ``make ablation`` runs
    (``cnnlab ablate experiments/NAME.yaml … --quick``, default workers), in a scratch folder."""
    root = Path(tempfile.mkdtemp(prefix="cnnlab-bench-"))
    specs = [Path("experiments") / f"{name}.yaml" for name in MAKE_ABLATION]
    workers = free_cpus()  # what --workers auto will see
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        status = main(["ablate", *map(str, specs), "--quick", "--out", str(root)])
    wall = time.perf_counter() - start
    assert status == 0, "cnnlab ablate failed"
    fits = [t.user_attrs["fit_seconds"] for spec in specs for t in Store.load(
        open_storage(default_url(root / f"{spec.stem}-quick"), readonly=True),
        f"{spec.stem}-quick").get_trials() if "fit_seconds" in t.user_attrs]
    return wall, sum(fits), len(fits), workers


def bench() -> list[Ratio]:
    _run(1, 1)  # warm-up: imports, first W&B run
    wall, fit, trials, workers = make_ablation()
    _, one = _run(1, 2)  # trials run one torch thread each (the study trial policy)
    _, two = _run(2, 2)
    rate = {"one": _throughput(one), "two": _throughput(two)}
    return [
        Ratio("make ablation wall / (Σ trial fit times / workers)", wall / (fit / workers), 1.2,
              f"{trials} quick trials of {' + '.join(MAKE_ABLATION)}, {workers} workers, W&B offline: wall "
              f"{wall:.1f}s ({trials / wall:.2f} trials/s), Σ fit {fit:.1f}s", lower_is_better=True),
        Ratio("ablation throughput, 2 workers / 1 worker", rate["two"] / rate["one"], 1.7,
              f"trials/s, 1 thread per trial: 2 workers {rate['two']:.2f}, 1 worker "
              f"{rate['one']:.2f}"),
    ]
