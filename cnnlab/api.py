"""cnnlab from Python (a notebook): every command as a function, and the one wiring point.

They are the code the ``cnnlab`` commands run (the CLI parses, calls one of these, prints), and
they take what the commands take: overrides as ``key=value`` strings, specs and presets by name
or path. Bad input raises ``CnnlabError`` (never ``SystemExit``). Like the command bodies, each
function imports its machinery (torch, Lightning, Optuna) when called, so ``import cnnlab`` and
``cnnlab --help`` stay light.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, TypeAdapter, ValidationError
from rich.console import Console

from cnnlab.config import ExperimentConfig, load_config
from cnnlab.errors import CnnlabError
from cnnlab.outputs.files import JOURNAL, check_run_out, check_study_folder, recorded_storage, study_folder
from cnnlab.process import scoped
from cnnlab.shipped import pilots, spec_path
from cnnlab.studies.specs import safe_name

if TYPE_CHECKING:
    from cnnlab.models.summary import LayerRow
    from cnnlab.predict import Predictions
    from cnnlab.studies.ablations.results import Results
    from cnnlab.studies.searches.report import SearchResult
    from cnnlab.tracking.sync import Outcome
    from cnnlab.training.lr_find import LRFind
    from cnnlab.training.run import RunResult


STRICT = ConfigDict(strict=True, arbitrary_types_allowed=True)


def _check_of(hint: Any) -> Callable[[Any], object]:
    """What checks a value against ``hint``, strictly: ``"2"`` is no ``int``, a string no list
    of strings (pydantic); a class of cnnlab's (a config) by ``isinstance``."""
    if isinstance(hint, type) and hint not in (str, int, float, bool, Path):
        def instance(value: Any) -> object:
            if not isinstance(value, hint):
                raise TypeError(hint.__name__)
            return value
        return instance
    return TypeAdapter(hint, config=STRICT).validate_python


def checked(func: Callable[..., Any]) -> Callable[..., Any]:
    """The function with its arguments checked against its annotations first (pydantic,
    strict): a wrong type is one ``CnnlabError`` naming the argument and what it takes, not a
    ``TypeError`` deep inside, nor one error per character of a string given for a list."""
    signature = inspect.signature(func)
    hints = {name: eval(p.annotation, func.__globals__)  # noqa: S307  its own annotations
             for name, p in signature.parameters.items()}
    checks = {name: _check_of(hint) for name, hint in hints.items()}

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:
            raise CnnlabError(f"cnnlab.{func.__name__}: {err}; allowed: {signature}") from None
        for name, value in bound.arguments.items():
            try:
                checks[name](value)
            except (ValidationError, TypeError):
                annotation = signature.parameters[name].annotation
                raise CnnlabError(f"cnnlab.{func.__name__}: {name}: got {value!r:.80}; allowed: "
                                  f"{annotation}") from None
        return func(*args, **kwargs)

    return call


@checked
def fit(overrides: Sequence[str] = (), *, out: str | Path | None = None,
        config: Sequence[str | Path] = (), overwrite: bool = False) -> RunResult:
    """Train and test one model into ``out`` (default ``runs/fit-<time>``), as ``cnnlab fit``:
    ``config`` files or preset names merged over the defaults, then ``overrides``."""
    cfg = load_config(list(config), list(overrides))
    folder = Path(out) if out is not None else Path("runs") / time.strftime("fit-%Y%m%d-%H%M%S")
    check_run_out(folder, overwrite)  # fail now, not after training
    from cnnlab.training.run import run

    with scoped():
        return run(cfg, folder, overwrite=overwrite)


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
        return cls(results.study, out, results.verdict, results.arm_records(),
                   results.check_records(), results)


@checked
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
    with scoped(), ThreadPoolExecutor(max_workers=1) as writer:
        written = []
        reports = ablate(jobs, quick, workers, console or Console(),
                         finish=lambda write: written.append(writer.submit(write)),
                         on_report=lambda job, results: on_report(StudyResult.of(results, job.out)))
        for future in written:
            future.result()  # a failed write (a full disk) fails the call
    return [StudyResult.of(r, job.out) for r, job in zip(reports, jobs, strict=True)]


@checked
def ablate(spec: str | Path, overrides: Sequence[str] = (), *, quick: bool = False,
           seeds: int | str | None = None, workers: int = 1, out: str | Path | None = None,
           storage: str | None = None, console: Console | None = None) -> StudyResult:
    """Run (or resume) one ablation spec (a shipped name such as ``"norm"``, or a file) and
    return its report (written to ``out``, default ``reports/<study>``)."""
    return ablate_specs([spec], overrides, quick=quick, seeds=seeds, workers=workers, out=out,
                        storage=storage, console=console)[0]


@checked
def tune(spec: str | Path = "search", overrides: Sequence[str] = (), *, quick: bool = False,
         trials: int | None = None, folds: int | None = None, timeout: float | None = None,
         workers: int = 1, out: str | Path | None = None, storage: str | None = None,
         study: str | None = None, console: Console | None = None) -> SearchResult:
    """The cross-validated Optuna search of ``spec``, then a refit of the best config and its
    one test, as ``cnnlab tune``; the report is ``result.out / "search.md"``."""
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
    with scoped():
        return search(loaded, quick, folder, storage or default_url(folder), name, workers,
                      timeout, console or Console())


def stored_results(name: str, *, out: str | Path | None = None, storage: str | None = None
                   ) -> Results:
    """An ablation's results as its storage holds them (``study_storage`` of ``out``, default
    ``reports/<name>``), read only."""
    from cnnlab.studies.ablations.results import collect
    from cnnlab.studies.ablations.store import AblationStore

    study = safe_name(name)
    folder = study_folder(study, out)
    with scoped():
        return collect(AblationStore.stored(study, folder, study_storage(folder, storage)))


def study_storage(folder: Path, storage: str | None) -> str:
    """Where a study folder's study is read from: ``storage``, else the storage the folder
    records, else its own journal."""
    from cnnlab.studies.engine.storage import default_url

    return storage or recorded_storage(folder) or default_url(folder)


@checked
def report(name: str, *, out: str | Path | None = None, storage: str | None = None) -> StudyResult:
    """Rebuild an ablation's report from its storage (default: the one its folder, ``out`` or
    ``reports/<name>``, records), as ``cnnlab report``; nothing is trained."""
    from cnnlab.studies.ablations.report import write_report
    from cnnlab.studies.engine.storage import storage_id

    folder = study_folder(safe_name(name), out)
    url = study_storage(folder, storage)
    results = stored_results(name, out=folder, storage=url)
    if not results.trials:  # stopped before its first trial finished
        raise CnnlabError(f"study {results.study!r} has no finished trial to report; allowed: "
                          "run its cnnlab ablate (again) first")
    check_study_folder(folder, storage_id(url))  # before writing
    with scoped():
        return StudyResult.of(write_report(results, folder), folder)


@checked
def plan(spec: str | Path, *, quick: bool = False, pilot: str | Path | None = None,
         out: str | Path | None = None, storage: str | None = None,
         plans: Sequence[tuple[int, int, int]] = (), effect: float | None = None,
         sims: int = 2000, seed: int = 0) -> list[str]:
    """What ``cnnlab plan`` prints: each seed plan's power for the spec, simulated from its
    pilot (``pilot``: a results.csv; default: the pilot study in ``out``/``storage``, else the
    shipped one)."""
    from cnnlab.studies.ablations.planning import Pilot, plan_lines
    from cnnlab.studies.ablations.rows import csv_trials
    from cnnlab.studies.ablations.spec import PILOT_SEED, PILOT_SEEDS, load_spec
    from cnnlab.studies.ablations.store import study_name
    from cnnlab.studies.statistics.sequential import Plan

    loaded = load_spec(spec_path(spec))
    name = study_name(loaded.as_pilot(PILOT_SEEDS), quick)
    source = pilot or (None if out or storage else pilots().get(name))
    folder = study_folder(name, out)
    if source is None and storage is None and not (folder / JOURNAL).is_file():
        shipped = ", ".join(sorted(pilots())) or "none"
        quick_flag = " --quick" if quick else ""
        raise CnnlabError(
            f"plan {spec}: no pilot for {name} (none shipped, no pilot study in {folder}); "
            f"allowed: run the pilot first — cnnlab ablate {spec}{quick_flag} --pilot (seeds "
            f"from {PILOT_SEED}, never the confirmation's) — then cnnlab plan {spec}"
            f"{quick_flag}; or --pilot CSV; shipped pilots: {shipped}")
    if source is not None:
        found = Pilot(str(source), loaded, csv_trials(Path(source)))
    else:
        results = stored_results(name, out=folder, storage=storage)
        found = Pilot(results.study, loaded, results.trials)
    return list(plan_lines(found, [Plan(*p) for p in plans] or [loaded.plan], effect, sims, seed))


@checked
def summary(cfg: ExperimentConfig, input_shape: tuple[int, int, int] | None = None,
            num_classes: int = 10) -> tuple[list[LayerRow], tuple[int, int, int], int]:
    """``cnnlab summary``: each layer's output shape, parameters and multiply-adds, the input
    shape and the class count (the configured dataset's unless given)."""
    from cnnlab.training.build import summary_of

    return summary_of(cfg, input_shape, num_classes)


@checked
def augment_preview(cfg: ExperimentConfig, out: str | Path, samples: int = 8,
                    variants: int = 8) -> Path:
    """``cnnlab augment-preview``: training samples beside augmented variants, as one PNG."""
    from cnnlab.data.preview import write_preview

    with scoped():
        write_preview(cfg, Path(out), samples, variants)
    return Path(out)


@checked
def lr_find(cfg: ExperimentConfig, out: str | Path, min_lr: float = 1e-6, max_lr: float = 1.0,
            num_training: int = 100) -> LRFind:
    """``cnnlab lr-find``: Lightning's learning-rate finder, its loss plot written to ``out``."""
    from cnnlab.training.lr_find import write_lr_find

    with scoped():
        return write_lr_find(cfg, Path(out), min_lr, max_lr, num_training)


@checked
def export(run: str | Path, out: str | Path | None = None, fuse_bn: bool = False
           ) -> tuple[Path, str]:
    """``cnnlab export``: a self-contained model file of a run or checkpoint (batch norm folded
    with ``fuse_bn``); returns where it went and the line describing it."""
    from cnnlab.export import default_out, describe
    from cnnlab.export import export as write_export

    target = Path(out) if out is not None else default_out(Path(run), fuse_bn)
    with scoped():
        return target, describe(target, write_export(Path(run), target, fuse_bn), fuse_bn)


@checked
def predict(model: str | Path, inputs: Sequence[str | Path]) -> Predictions:
    """``cnnlab predict``: the class of each input (image files, folders, .npz) as rows."""
    from cnnlab.predict import predict as run_predict

    with scoped():
        return run_predict(Path(model), [Path(i) for i in inputs])


def offline_runs(targets: Sequence[str]) -> list[tuple[Path, bool]]:
    """``cnnlab sync --dry-run``: the offline W&B runs under ``targets`` (folders or study
    names), each with whether it is synced already."""
    from cnnlab.tracking.sync import is_synced, sync_roots
    from cnnlab.tracking.sync import offline_runs as found

    return [(run, is_synced(run)) for run in found(sync_roots(list(targets)))]


@checked
def sync(targets: Sequence[str], timeout: float, progress: Callable[[str], None] = print
         ) -> tuple[list[Path], Outcome]:
    """``cnnlab sync``: the offline W&B runs under ``targets``, uploaded by one ``wandb sync``,
    each run's arrival read back from its log."""
    from cnnlab.tracking.sync import offline_runs as found
    from cnnlab.tracking.sync import sync as run_sync
    from cnnlab.tracking.sync import sync_roots

    runs = found(sync_roots(list(targets)))
    return runs, run_sync(runs, timeout, progress=progress)


def resolved(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with ``auto`` resolved for this machine (precision, channels-last) and
    ``threads: 0`` for the model's work on its data, as the run's config.yaml records it:
    ``cnnlab fit --print-config``."""
    from cnnlab.training.build import resolved_run

    return resolved_run(cfg, {})[0]


def is_rank_zero() -> bool:
    """This process writes and prints (one of several DDP processes may not)."""
    from cnnlab.training.distributed import is_rank_zero as rank_zero

    return rank_zero()


def console_lines(results: Results) -> list[str]:
    """What a terminal shows of a study: its arms, confirmatory checks and verdict."""
    from cnnlab.studies.ablations.report import console_lines as lines

    return list(lines(results))


def summary_table(names: Sequence[str], *, out: str | Path | None = None,
                  storage: str | None = None) -> str:
    """``cnnlab report --summary``: the verdicts of the named studies (each in ``out``, default
    ``reports/<name>``) as one markdown table."""
    from cnnlab.studies.ablations.report import SUMMARY_HEADER, markdown_table, summary_row

    rows = [summary_row(stored_results(name, out=out, storage=storage)) for name in names]
    return markdown_table([SUMMARY_HEADER, *rows])
