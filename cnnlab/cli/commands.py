"""What each ``cnnlab`` command does: one call into ``cnnlab.api``, and what it prints.

Each body imports its machinery (torch, Lightning, Optuna) when it runs, after its arguments
and config are checked: ``cnnlab --help`` and a bad key answer without loading any of them.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from cnnlab import api
from cnnlab.config import ExperimentConfig, load_config, to_yaml
from cnnlab.cpus import free_cpus
from cnnlab.errors import CnnlabError
from cnnlab.outputs.files import write_output

if TYPE_CHECKING:  # the results model loads numpy and Optuna: only the commands that need it do
    from cnnlab.studies.ablations.results import Results

OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")  # key=value, as opposed to a spec file's path


def _config(args: argparse.Namespace) -> ExperimentConfig:
    return load_config(args.config, args.overrides)


LOG_WIDTH = 200  # off a terminal (a log file): lines and tables are not folded at 80 columns


def _console() -> Console:
    """Rich's console for a command's output: the terminal's width, or ``LOG_WIDTH`` off one."""
    console = Console()
    return console if console.is_terminal else Console(width=LOG_WIDTH, soft_wrap=True)


def _workers(console: Console, workers: int | str) -> int:
    """``auto`` as a count, said at the start: a busy machine gets fewer workers than cores."""
    if workers != "auto":
        return int(workers)
    count = free_cpus()
    _say(console, f"workers: {count} (auto: one per core other processes leave free; "
                  "--workers N to choose)")
    return count


def _say(console: Console, line: str) -> None:
    console.print(line, markup=False, highlight=False)


def print_table(console: Console, title: str, rows: list[list[str]]) -> None:
    """A header row and its rows; the first column whole, the others fold if they must."""
    table = Table(title=title)
    for i, column in enumerate(rows[0]):
        table.add_column(column, no_wrap=i == 0, overflow="fold")
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)


def cmd_fit(args: argparse.Namespace) -> None:
    if args.print_config:
        print(to_yaml(api.resolved(_config(args))), end="")
        return
    result = api.fit(args.overrides, out=args.out, config=args.config, overwrite=args.overwrite)
    if api.is_rank_zero():
        print_table(_console(), f"cnnlab fit → {result.out}", [["metric", "value"], *(
            [k, f"{v:.4f}" if isinstance(v, float) else str(v)] for k, v in result.metrics.items())])


def cmd_summary(args: argparse.Namespace) -> None:
    rows, shape, classes = api.summary(_config(args), args.input_shape, args.num_classes)
    table = Table(title=f"ConvNet on {'×'.join(map(str, shape))} input, {classes} classes")
    for column in ("layer", "type", "output", "params", "mult-adds"):
        table.add_column(column, justify="left" if column in ("layer", "type") else "right")
    for row in rows:
        table.add_row(row.name, row.kind, "×".join(map(str, row.shape)), f"{row.params:,}",
                      f"{row.macs:,}")
    table.add_row("total", "", "", f"{sum(r.params for r in rows):,}",
                  f"{sum(r.macs for r in rows):,}", style="bold")
    Console(width=120).print(table)


def cmd_augment_preview(args: argparse.Namespace) -> None:
    api.augment_preview(_config(args), args.out, args.samples, args.variants)
    print(f"wrote {args.out}: {args.samples} training samples (left column) and "
          f"{args.variants} augmented variants each")


def cmd_lr_find(args: argparse.Namespace) -> None:
    found = api.lr_find(_config(args), args.out, args.min_lr, args.max_lr, args.num_training)
    print(f"suggested learning rate {found.suggestion:.4g} ({found.points} points); plot: {args.out}")


def cmd_export(args: argparse.Namespace) -> None:
    print(api.export(args.run, args.out, args.fuse_bn)[1])


def cmd_predict(args: argparse.Namespace) -> None:
    found = api.predict(args.model, args.inputs)
    if args.out is not None:
        write_output(args.out, found.csv_bytes(), None)  # never replaces a file
        print(f"wrote {args.out}: {len(found.rows)} predictions")
    else:
        print_table(_console(), f"{args.model}: {len(found.rows)} predictions", [found.columns, *found.rows])
    if found.warning:
        print(f"warning: {found.warning}", file=sys.stderr)
    if found.resized:
        shape = "×".join(map(str, found.input_shape[1:]))
        print(f"note: {found.resized} of {len(found.rows)} inputs were resized to the model's "
              f"{shape} pixels", file=sys.stderr)


def show_results(console: Console, results: Results, out: Path) -> None:
    """The study's arms, confirmatory checks and verdict, as the report gives them."""
    for line in api.console_lines(results):
        _say(console, line)
    _say(console, f"report: {out}/report.md")
    if results.running:
        console.print(f"note: {len(results.running)} trials of {results.study} were still "
                      "running or queued (another worker?): the report is incomplete; rerun to "
                      "update it")


def cmd_ablate(args: argparse.Namespace) -> int:
    specs = [a for a in args.specs if not OVERRIDE.match(a)]
    if not specs:
        raise CnnlabError("ablate: no spec given; allowed: one or more specs, e.g. norm (shipped) "
                          "or experiments/norm.yaml, then key=value overrides for every trial")
    console = _console()
    studies = api.ablate_specs(specs, [a for a in args.specs if OVERRIDE.match(a)],
                               quick=args.quick, seeds=args.seeds,
                               workers=_workers(console, args.workers), out=args.out,
                               storage=args.storage, console=console, pilot=args.pilot,
                               on_report=lambda study: show_results(console, study.results,
                                                                    study.out))
    return incomplete_status([(s.study, len(s.results.trials) + len(s.results.running)
                               + len(s.results.failed), s.results.running + s.results.failed)
                              for s in studies])


def incomplete_status(studies: list[tuple[str, int, list[str]]]) -> int:
    """1, with a line per study naming its unfinished work, when a study holds queued work
    that did not run to a result (its report leaves it out); else 0. A command never ends
    with status 0 on a study it left incomplete: a scheduler would take it for done."""
    for name, total, missing in studies:
        if missing:
            shown = "; ".join(missing[:3]) + (f"; … {len(missing) - 3} more"
                                               if len(missing) > 3 else "")
            print(f"cnnlab: {name}: {len(missing)} of {total} trials did "
                  f"not finish ({shown}); the report leaves them out: rerun the same command "
                  "to run them (finished trials are kept)", file=sys.stderr)
    return 1 if any(missing for _, _, missing in studies) else 0


def cmd_tune(args: argparse.Namespace) -> int:
    console = _console()
    result = api.tune(args.spec, args.overrides, quick=args.quick, trials=args.trials,
                      folds=args.folds, timeout=args.timeout,
                      workers=_workers(console, args.workers), out=args.out,
                      storage=args.storage, study=args.study, console=console)
    print_table(console, f"{result.study} → {result.out}/search.md", [
        ["best trial", "CV accuracy", "CV std", "test accuracy", "parameters"],
        [str(result.best_trial), f"{result.cv_mean:.4f}", f"{result.cv_std:.4f}",
         f"{result.test_acc:.4f}",
         " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                  for k, v in result.params.items())],
    ])
    if result.unstarted:  # what --timeout left: the user's budget, said, not a failure
        print(f"cnnlab: note: {result.study}: {result.unstarted} of {result.trials} trials not "
              f"started within --timeout {args.timeout:g} s; rerun the same command to run "
              "them", file=sys.stderr)
    return incomplete_status([(result.study, result.trials, result.unfinished)])


def cmd_report(args: argparse.Namespace) -> None:
    if len(args.names) > 1 and (not args.summary or args.out):
        raise CnnlabError("report: several names need --summary and their default folders "
                          "(reports/NAME); allowed: one NAME (with --out), or --summary NAME…")
    if args.summary:
        print(api.summary_table(args.names, out=args.out, storage=args.storage))
        return
    study = api.report(args.names[0], out=args.out, storage=args.storage)
    show_results(_console(), study.results, study.out)


def cmd_plan(args: argparse.Namespace) -> None:
    console = _console()
    for line in api.plan(args.spec, quick=args.quick, pilot=args.pilot, out=args.out,
                         storage=args.storage, plans=args.plan, effect=args.effect,
                         sims=args.sims, seed=args.seed):
        _say(console, line)


def cmd_sync(args: argparse.Namespace) -> int:
    """0: every run arrived whole (or nothing to do); 1: some did not (listed; a rerun retries)."""
    if args.dry_run:
        listed = api.offline_runs(args.targets)
        for run, synced in listed:
            print(f"{run}{'  (synced)' if synced else ''}")
        todo = sum(not synced for _, synced in listed)
        print(f"{todo} offline W&B runs to sync, {len(listed) - todo} already synced")
        return 0
    runs, outcome = api.sync(args.targets, args.timeout,
                             progress=lambda line: print(line, flush=True))
    if not outcome.synced and not outcome.failed:
        print(f"nothing to sync: all {len(runs)} offline W&B runs are synced")
        return 0
    print(f"synced {len(outcome.synced)} of {len(outcome.synced) + len(outcome.failed)} offline "
          f"runs to {outcome.url} (W&B's logs: {outcome.logs})")
    for run, why in outcome.failed.items():
        print(f"failed: {run}: {why}", file=sys.stderr)
    if outcome.failed:
        print(f"cnnlab: {len(outcome.failed)} runs did not arrive whole; rerun cnnlab sync to "
              "retry them", file=sys.stderr)
    return 1 if outcome.failed else 0
