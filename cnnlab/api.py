"""cnnlab from Python (a notebook): ``fit``, ``ablate``, ``tune`` and ``report`` as functions.

They are the code the ``cnnlab`` commands run (the CLI parses, calls one of these, prints), and
they take what the commands take: overrides as ``key=value`` strings, specs and presets by name
or path. Bad input raises ``CnnlabError`` (never ``SystemExit``). Like the command bodies, each
function imports its machinery (torch, Lightning, Optuna) when called, so ``import cnnlab`` and
``cnnlab --help`` stay light.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from cnnlab.config import load_config
from cnnlab.errors import CnnlabError
from cnnlab.outputs.files import check_run_out, check_study_folder, study_folder
from cnnlab.process import configure
from cnnlab.shipped import pilots, spec_path
from cnnlab.studies.specs import safe_name

if TYPE_CHECKING:
    from cnnlab.studies.ablations.results import Results
    from cnnlab.studies.searches.report import SearchResult
    from cnnlab.studies.statistics.comparisons import Interval
    from cnnlab.training.run import RunResult


def fit(overrides: Sequence[str] = (), *, out: str | Path | None = None,
        config: Sequence[str | Path] = (), overwrite: bool = False) -> RunResult:
    """Train and test one model into ``out`` (default ``runs/fit-<time>``), as ``cnnlab fit``:
    ``config`` files or preset names merged over the defaults, then ``overrides``."""
    configure()
    cfg = load_config(list(config), list(overrides))
    folder = Path(out) if out is not None else Path("runs") / time.strftime("fit-%Y%m%d-%H%M%S")
    check_run_out(folder, overwrite)  # fail now, not after training
    from cnnlab.training.run import run

    return run(cfg, folder, overwrite=overwrite)


def _numbers(prefix: str, interval: Interval | None) -> dict[str, float | None]:
    if interval is None:
        return {prefix: None, f"{prefix}_low": None, f"{prefix}_high": None}
    return {prefix: interval.mean, f"{prefix}_low": None if math.isnan(interval.low) else interval.low,
            f"{prefix}_high": None if math.isnan(interval.high) else interval.high}


@dataclass(frozen=True)
class StudyResult:
    """An ablation as its report gives it: the verdict, one record per arm and per confirmatory
    check (plain dicts: ``pandas.DataFrame(result.arms)`` is the results table), the files, and
    ``results``, the whole model the report is drawn from."""

    study: str
    out: Path
    verdict: str | None  # supported | not supported | undecided (None: the spec states no hypothesis)
    arms: list[dict[str, Any]]
    checks: list[dict[str, Any]]
    results: Results

    @property
    def report(self) -> Path:
        return self.out / "report.md"

    @classmethod
    def of(cls, results: Results, out: Path) -> StudyResult:
        arms = [{"arm": a.arm, "levels": a.levels, "seeds": a.seeds,
                 "failed": sum(a.failures.values()), **_numbers(results.spec.metric, a.itt),
                 **_numbers("delta", None if a.delta is None else a.delta.delta),
                 "p": None if a.delta is None else a.delta.p} for a in results.arms]
        checks = [{"metric": c.comparison.metric, "arm": c.comparison.arm,
                   "reference": c.comparison.reference, "outcome": c.outcome,
                   **_numbers("delta", c.comparison.delta), "p_holm": c.comparison.p_adj,
                   "alpha": c.comparison.alpha} for c in results.checks]
        return cls(results.study, out, results.verdict, arms, checks, results)


def ablate_specs(specs: Sequence[str | Path], overrides: Sequence[str] = (), *, quick: bool = False,
                 seeds: int | str | None = None, workers: int = 1, out: str | Path | None = None,
                 storage: str | None = None, console: Console | None = None,
                 on_report: Callable[[StudyResult], None] = lambda result: None,
                 pilot: bool = False) -> list[StudyResult]:
    """Run (or resume) ablation specs, as ``cnnlab ablate``: every spec is checked before any
    work, one set of ``workers`` runs them all, and each report is written as its spec ends
    (``on_report`` sees it then). ``seeds``: per arm, or ``"auto"`` (rounds until decided).
    ``pilot``: each spec's pilot instead (``<name>-pilot``, seeds from 1000, ``seeds`` or 3 an
    arm), for ``cnnlab plan``."""
    configure()
    from cnnlab.studies.ablations.spec import PILOT_SEEDS, load_spec
    from cnnlab.studies.engine.workers import warm_workers

    loaded = [load_spec(spec_path(s)).with_extra(tuple(overrides)) for s in specs]
    if pilot:
        if seeds == "auto":
            raise CnnlabError("ablate --pilot: --seeds auto; allowed: a number of seeds (a pilot "
                              "has one round)")
        loaded = [spec.as_pilot(int(seeds or PILOT_SEEDS)) for spec in loaded]
    elif seeds:
        loaded = [spec.with_seeds(seeds) for spec in loaded]
    if workers > 1:
        warm_workers("cnnlab.studies.ablations.run")
    from cnnlab.studies.ablations.run import ablate, jobs_for

    jobs = jobs_for(loaded, Path(out) if out is not None else None, storage, quick)
    # each spec's report files and W&B summary are written while the workers go on
    with ThreadPoolExecutor(max_workers=1) as writer:
        written = []
        reports = ablate(jobs, quick, workers, console or Console(),
                         finish=lambda write: written.append(writer.submit(write)),
                         on_report=lambda job, results: on_report(StudyResult.of(results, job.out)))
        for future in written:
            future.result()  # a failed write (a full disk) fails the call
    return [StudyResult.of(r, job.out) for r, job in zip(reports, jobs, strict=True)]


def ablate(spec: str | Path, overrides: Sequence[str] = (), *, quick: bool = False,
           seeds: int | str | None = None, workers: int = 1, out: str | Path | None = None,
           storage: str | None = None, console: Console | None = None) -> StudyResult:
    """Run (or resume) one ablation spec (a shipped name such as ``"norm"``, or a file) and
    return its report (written to ``out``, default ``reports/<study>``)."""
    return ablate_specs([spec], overrides, quick=quick, seeds=seeds, workers=workers, out=out,
                        storage=storage, console=console)[0]


def tune(spec: str | Path = "search", overrides: Sequence[str] = (), *, quick: bool = False,
         trials: int | None = None, folds: int | None = None, timeout: float | None = None,
         workers: int = 1, out: str | Path | None = None, storage: str | None = None,
         study: str | None = None, console: Console | None = None) -> SearchResult:
    """The cross-validated Optuna search of ``spec``, then a refit of the best config and its
    one test, as ``cnnlab tune``; the report is ``result.out / "search.md"``."""
    configure()
    from cnnlab.studies.engine.workers import warm_workers
    from cnnlab.studies.searches.spec import load_search_spec, with_overrides

    loaded = with_overrides(load_search_spec(spec_path(spec)), trials, folds, tuple(overrides))
    if workers > 1:
        warm_workers("cnnlab.studies.searches.run")
    from cnnlab.studies.engine.storage import default_url
    from cnnlab.studies.searches.run import search_study_name
    from cnnlab.studies.searches.run import tune as search

    name = safe_name(study or search_study_name(loaded, quick))
    folder = study_folder(name, out)
    return search(loaded, quick, folder, storage or default_url(folder), name, workers, timeout,
                  console or Console())


def stored_results(name: str, *, out: str | Path | None = None, storage: str | None = None
                   ) -> Results:
    """An ablation's results as its storage holds them (default ``reports/<name>``), read only."""
    configure()
    from cnnlab.studies.ablations.results import collect
    from cnnlab.studies.ablations.store import AblationStore

    study = safe_name(name)
    return collect(AblationStore.stored(study, study_folder(study, out), storage))


def report(name: str, *, out: str | Path | None = None, storage: str | None = None) -> StudyResult:
    """Rebuild an ablation's report from its storage (default ``reports/<name>``), as
    ``cnnlab report``; nothing is trained."""
    from cnnlab.studies.ablations.report import write_report

    folder = study_folder(safe_name(name), out)
    results = stored_results(name, out=folder, storage=storage)
    check_study_folder(folder)  # before anything is written
    return StudyResult.of(write_report(results, folder), folder)


def plan(spec: str | Path, *, quick: bool = False, pilot: str | Path | None = None,
         out: str | Path | None = None, storage: str | None = None,
         plans: Sequence[tuple[int, int, int]] = (), effect: float | None = None,
         sims: int = 2000, seed: int = 0) -> list[str]:
    """What ``cnnlab plan`` prints: each seed plan's power for the spec, simulated from its
    pilot (``pilot``: a results.csv; default: the pilot study in ``out``/``storage``, else the
    shipped one)."""
    from cnnlab.studies.ablations.planning import Pilot, plan_lines
    from cnnlab.studies.ablations.results import collect
    from cnnlab.studies.ablations.rows import csv_trials
    from cnnlab.studies.ablations.spec import PILOT_SEEDS, load_spec
    from cnnlab.studies.ablations.store import AblationStore, study_name
    from cnnlab.studies.statistics.sequential import Plan

    loaded = load_spec(spec_path(spec))
    name = study_name(loaded.as_pilot(PILOT_SEEDS), quick)
    source = pilot or (None if out or storage else pilots().get(name))
    if source is not None:
        found = Pilot(str(source), loaded, csv_trials(Path(source)))
    else:
        results = collect(AblationStore.stored(name, study_folder(name, out), storage))
        found = Pilot(results.study, loaded, results.trials)
    return list(plan_lines(found, [Plan(*p) for p in plans] or [loaded.plan], effect, sims, seed))
