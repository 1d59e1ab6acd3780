"""The ``cnnlab`` command: fit, summary, lr-find, augment-preview, export, ablate, tune, report.

Each command imports its machinery (torch, Lightning, Optuna) when it runs, after its arguments
and config are checked: ``cnnlab --help`` and a bad key answer without loading torch.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from cnnlab.config import ExperimentConfig, load_config, to_yaml
from cnnlab.cpus import WORKERS_ENV, free_cpus
from cnnlab.errors import CnnlabError
from cnnlab.files import check_output, check_run_out, check_study_folder, write_output
from cnnlab.studies.search_spec import load_search_spec, with_overrides
from cnnlab.studies.spec import load_spec, safe_name
from cnnlab.studies.storage import default_url, load_study, open_storage

if TYPE_CHECKING:  # the report module loads numpy and Optuna: only the commands that need it do
    from cnnlab.studies.report import Report


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CnnlabError(f"{self.prog}: {message} (see {self.prog} --help)")


def _config(args: argparse.Namespace) -> ExperimentConfig:
    return load_config(args.config, args.overrides)


def cmd_fit(args: argparse.Namespace) -> None:
    cfg = _config(args)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return
    out = args.out or Path("runs") / time.strftime("fit-%Y%m%d-%H%M%S")
    check_run_out(out, args.overwrite)  # fail now, not after training
    from cnnlab.training.distributed import is_rank_zero
    from cnnlab.training.run import run

    result = run(cfg, out, overwrite=args.overwrite)
    if not is_rank_zero():
        return
    table = Table(title=f"cnnlab fit → {out}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


def _shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise CnnlabError(f"--input-shape: got {text!r}; allowed: three positive integers C,H,W")
    return shape


def cmd_summary(args: argparse.Namespace) -> None:
    cfg = _config(args)
    from cnnlab.models.convnet import ConvNet
    from cnnlab.models.summary import summarize
    from cnnlab.training.build import build

    if args.input_shape:
        shape, num_classes = _shape(args.input_shape), args.num_classes
        model = ConvNet(cfg.model, shape, num_classes)
    else:  # the network the fit would train, on the configured data
        data, model = build(cfg)
        shape, num_classes = data.input_shape, data.num_classes
    rows = summarize(model, shape)
    table = Table(title=f"ConvNet on {'×'.join(map(str, shape))} input, {num_classes} classes")
    for column in ("layer", "type", "output", "params", "mult-adds"):
        table.add_column(column, justify="left" if column in ("layer", "type") else "right")
    for row in rows:
        table.add_row(row.name, row.kind, "×".join(map(str, row.shape)), f"{row.params:,}",
                      f"{row.macs:,}")
    table.add_row("total", "", "", f"{sum(r.params for r in rows):,}",
                  f"{sum(r.macs for r in rows):,}", style="bold")
    Console(width=120).print(table)


def cmd_augment_preview(args: argparse.Namespace) -> None:
    from cnnlab.data.augment import preview
    from cnnlab.data.datamodule import DataModule
    from cnnlab.images import is_cnnlab_png, png_bytes

    cfg = _config(args)
    if args.out.suffix.lower() != ".png":
        raise CnnlabError(f"--out {args.out}: allowed: a file name ending in .png")
    check_output(args.out, is_cnnlab_png)
    data = DataModule(cfg.data, cfg.seed)
    if data.augment is None:
        raise CnnlabError("data.augment: every op is off; allowed: enable some, e.g. "
                          "data.augment.hflip=true data.augment.rotate=15")
    grid = preview(data.train[0][: args.samples], data.augment, data.mean, data.std,
                   args.variants, cfg.seed)
    write_output(args.out, png_bytes(grid), is_cnnlab_png)
    print(f"wrote {args.out}: {args.samples} training samples (left column) and "
          f"{args.variants} augmented variants each")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a positive integer")
    return value


WORKERS_HELP = (f"worker processes on this machine, one torch thread each (default: ${WORKERS_ENV}, "
                "else auto = one per core that other processes leave free)")


def _workers(text: str) -> int:
    if text == "auto":
        return free_cpus()
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a positive integer or auto")


def _seeds(text: str) -> int | str:
    if text == "auto" or (text.isdigit() and int(text) > 0):
        return text if text == "auto" else int(text)
    raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a positive integer or auto")


def cmd_ablate(args: argparse.Namespace) -> None:
    specs = [load_spec(path) for path in args.specs]  # all validated before any work
    from cnnlab.studies.ablation import ablate, study_name
    from cnnlab.studies.report import table_rows

    if args.seeds:
        specs = [spec.with_seeds(args.seeds) for spec in specs]
    console = Console()
    for spec in specs:
        name = study_name(spec, args.quick)
        root = args.out or Path("reports")
        out = root / name if args.out is None or len(specs) > 1 else args.out
        report = ablate(spec, args.quick, out, args.storage or default_url(out), args.workers,
                        console)
        _print_table(console, f"{name} → {out}/report.md", table_rows(report))
        _verdict(console, report)
        _incomplete(console, report.study, report.running)


def cmd_sync(args: argparse.Namespace) -> None:
    from cnnlab.tracking import check_reachable, is_synced, offline_runs, sync_run

    roots = []
    for target in args.targets or ["reports", "runs"]:
        path = Path(target)
        if not path.is_dir() and (Path("reports") / target).is_dir():
            path = Path("reports") / target
        if not path.is_dir():
            if args.targets:
                raise CnnlabError(f"sync: {target}: no such folder or study under reports/; "
                                  "allowed: a study name (reports/NAME) or a folder of runs")
            continue
        roots.append(path)
    runs = offline_runs(roots)
    todo = [r for r in runs if not is_synced(r)]
    if args.dry_run:
        for run in runs:
            print(f"{run}{'  (synced)' if is_synced(run) else ''}")
        print(f"{len(todo)} offline W&B runs to sync, {len(runs) - len(todo)} already synced")
        return
    if not todo:
        print(f"nothing to sync ({len(runs)} runs, all synced)")
        return
    url = check_reachable()
    failed = []
    for run in todo:
        why = sync_run(run, args.timeout)
        if why is not None:
            failed.append(f"{run}: {why}")
    print(f"synced {len(todo) - len(failed)} of {len(todo)} offline runs to {url}")
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    if failed:
        raise SystemExit(1)


def _verdict(console: Console, report: Report) -> None:
    if report.verdict is not None:
        console.print(f"hypothesis: {report.verdict.claim} → {report.verdict.verdict}")


def _incomplete(console: Console, study: str, running: list[str]) -> None:
    if running:
        console.print(f"note: {len(running)} trials of {study} were still running or "
                      "queued (another worker?): the report is incomplete; rerun to update it")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a positive number of seconds")
    return value


def cmd_tune(args: argparse.Namespace) -> None:
    spec = with_overrides(load_search_spec(args.spec), args.trials, args.folds)
    from cnnlab.studies.search import tune

    name = safe_name(args.study or (f"{spec.name}-quick" if args.quick else spec.name))
    out = args.out or Path("reports") / name
    console = Console()
    result = tune(spec, args.quick, out, args.storage or default_url(out), name, args.workers,
                  args.timeout, console)
    _print_table(console, f"{name} → {out}/search.md", [
        ["best trial", "CV accuracy", "CV std", "test accuracy", "parameters"],
        [str(result.best_trial), f"{result.cv_mean:.4f}", f"{result.cv_std:.4f}",
         f"{result.test_acc:.4f}",
         " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                  for k, v in result.params.items())],
    ])


def cmd_report(args: argparse.Namespace) -> None:
    from cnnlab.studies.report import table_rows, write_report

    name = safe_name(args.name)
    out = args.out or Path("reports") / name
    url = args.storage or default_url(out)
    if "://" not in url and not Path(url).is_file():
        raise CnnlabError(f"--storage {url}: no study storage there; allowed: the --out or "
                          "--storage of an earlier cnnlab ablate")
    study = load_study(open_storage(url, readonly=True), name)
    if "factors" not in study.user_attrs.get("spec", {}):
        raise CnnlabError(f"study {name!r} is not an ablation (a cnnlab tune search?); allowed: "
                          "an ablation's name; a search's report is its --out/search.md, rewritten "
                          "by rerunning cnnlab tune")
    check_study_folder(out)  # before anything is written
    report = write_report(study, out)
    console = Console()
    _print_table(console, f"{name} → {out}/report.md", table_rows(report))
    _verdict(console, report)
    _incomplete(console, report.study, report.running)


def _print_table(console: Console, title: str, rows: list[list[str]]) -> None:
    table = Table(title=title)
    for i, column in enumerate(rows[0]):  # whole arm names; the numbers fold if they must
        table.add_column(column, no_wrap=i == 0, overflow="fold")
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)


def cmd_lr_find(args: argparse.Namespace) -> None:
    from cnnlab.images import is_cnnlab_png
    from cnnlab.training.lr_find import find_lr

    cfg = _config(args)
    if args.out.suffix.lower() != ".png":
        raise CnnlabError(f"--out {args.out}: allowed: a file name ending in .png")
    check_output(args.out, is_cnnlab_png)
    if not 0 < args.min_lr < args.max_lr:
        raise CnnlabError(f"--min-lr {args.min_lr:g} --max-lr {args.max_lr:g}: allowed: "
                          "0 < min < max")
    found = find_lr(cfg, args.out.parent, args.min_lr, args.max_lr, args.num_training)
    write_output(args.out, found.plot_png, is_cnnlab_png)
    from cnnlab.tracking import small_run

    small_run(cfg, args.out.parent, "lr-find", {"lr_suggestion": found.suggestion,
                                                "points": found.points}, {"lr_find": args.out})
    print(f"suggested learning rate {found.suggestion:.4g} ({found.points} points); plot: {args.out}")


def cmd_export(args: argparse.Namespace) -> None:
    from cnnlab.export import export

    out = args.out or args.run / ("model_fused.pt" if args.fuse_bn else "model.pt")
    report = export(args.run, out, args.fuse_bn)
    line = f"wrote {out}"
    if args.fuse_bn:
        line += (f": batch norm folded into the convs; max |fused − original| on the validation "
                 f"set {report['max_abs_diff']:.2e}; inference {report['speedup']:.2f}× faster "
                 "(batch 256)")
    print(line)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="extra YAML config merged over configs/default.yaml (repeatable)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. model.norm=layer optim.lr=0.01")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cnnlab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    fit = commands.add_parser("fit", help="train and test one model")
    _common(fit)
    fit.add_argument("--out", type=Path, help="run directory (default runs/fit-<time>)")
    fit.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    fit.add_argument("--print-config", action="store_true", help="print the resolved config")
    fit.set_defaults(func=cmd_fit)

    summary = commands.add_parser("summary", help="per-layer shapes, parameters and mult-adds")
    _common(summary)
    summary.add_argument("--input-shape", metavar="C,H,W",
                         help="input shape (default: the configured dataset's)")
    summary.add_argument("--num-classes", type=_positive, default=10, help="with --input-shape")
    summary.set_defaults(func=cmd_summary)

    ablate = commands.add_parser("ablate", help="run (or resume) ablation specs and report them")
    ablate.add_argument("specs", nargs="+", type=Path, metavar="SPEC",
                        help="ablation spec(s), e.g. experiments/norm.yaml")
    ablate.add_argument("--quick", action="store_true",
                        help="the spec's quick preset (its own study, <name>-quick)")
    ablate.add_argument("--seeds", type=_seeds, metavar="N|auto",
                        help="seeds per arm (default: the spec's), or auto: add 2 seeds per "
                        "round to the arms of undecided comparisons, up to 10")
    ablate.add_argument("--storage", help="Optuna storage URL (default DIR/study.journal)")
    ablate.add_argument("--workers", type=_workers, default=os.environ.get(WORKERS_ENV, "auto"),
                        metavar="N|auto", help=WORKERS_HELP)
    ablate.add_argument("--out", type=Path, help="report directory (default reports/<study>)")
    ablate.set_defaults(func=cmd_ablate)

    tune = commands.add_parser("tune", help="cross-validated Optuna search, then refit and test")
    tune.add_argument("spec", type=Path, metavar="SPEC", help="search spec, e.g. "
                      "experiments/search.yaml")
    tune.add_argument("--trials", type=_positive, help="finished trials the study should hold "
                      "(default: the spec's; rerun with more to add trials)")
    tune.add_argument("--timeout", type=_seconds, help="start no new trial after S seconds")
    tune.add_argument("--folds", type=_positive, help="k of k-fold CV (default: the spec's)")
    tune.add_argument("--storage", help="Optuna storage URL (default DIR/study.journal)")
    tune.add_argument("--workers", type=_workers, default=os.environ.get(WORKERS_ENV, "auto"),
                      metavar="N|auto", help=WORKERS_HELP)
    tune.add_argument("--study", help="study name (default: the spec's name)")
    tune.add_argument("--quick", action="store_true", help="the spec's quick preset")
    tune.add_argument("--out", type=Path, help="report directory (default reports/<study>)")
    tune.set_defaults(func=cmd_tune)

    report = commands.add_parser("report", help="rebuild an ablation report from its storage")
    report.add_argument("name", help="the study name, e.g. norm or norm-quick")
    report.add_argument("--storage", help="Optuna storage URL (default DIR/study.journal)")
    report.add_argument("--out", type=Path, help="report directory (default reports/NAME)")
    report.set_defaults(func=cmd_report)

    sync = commands.add_parser("sync", help="upload the offline W&B runs of studies and runs "
                               "(wandb sync over each)")
    sync.add_argument("targets", nargs="*", metavar="STUDY|DIR",
                      help="a study (reports/NAME) or a folder (default: reports and runs)")
    sync.add_argument("--dry-run", action="store_true", help="list the runs; upload nothing")
    sync.add_argument("--timeout", type=_seconds, default=300.0,
                      help="seconds one run may take to upload (default 300)")
    sync.set_defaults(func=cmd_sync)

    lr = commands.add_parser("lr-find", help="LR range test: loss vs learning rate, a suggestion")
    _common(lr)
    lr.add_argument("--out", type=Path, default=Path("lr_find.png"), help="the plot (PNG)")
    lr.add_argument("--min-lr", type=float, default=1e-6)
    lr.add_argument("--max-lr", type=float, default=1.0)
    lr.add_argument("--num-training", type=_positive, default=100, help="steps to try")
    lr.set_defaults(func=cmd_lr_find)

    exp = commands.add_parser("export", help="save a run's best model, optionally BN-fused")
    exp.add_argument("run", type=Path, metavar="RUN_DIR", help="the --out of a cnnlab fit")
    exp.add_argument("--fuse-bn", action="store_true",
                     help="fold batch norm into the preceding convs (checked, timed)")
    exp.add_argument("--out", type=Path, help="file to write (default RUN_DIR/model[_fused].pt)")
    exp.set_defaults(func=cmd_export)

    aug = commands.add_parser("augment-preview",
                              help="a PNG grid of training samples and augmented variants")
    _common(aug)
    aug.add_argument("--out", type=Path, required=True, help="the PNG file to write")
    aug.add_argument("--samples", type=_positive, default=8, help="rows: training samples")
    aug.add_argument("--variants", type=_positive, default=7, help="augmented columns per sample")
    aug.set_defaults(func=cmd_augment_preview)
    return parser


STORAGE_ERRORS = {
    errno.ENOSPC: "free some space (or another --out / --storage)",
    errno.EDQUOT: "free some of your quota (or another --out / --storage)",
    errno.EROFS: "a writable --out / --storage",
    errno.EACCES: "a folder you may write to (--out / --storage)",
    errno.EPERM: "a folder you may write to (--out / --storage)",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: user errors print one line on stderr and return 2."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra and hasattr(args, "overrides") and all("=" in e and e[:1] != "-" for e in extra):
            args.overrides += extra  # key=value after an option: still an override
        elif extra:
            raise CnnlabError(f"cnnlab: unrecognized arguments: {' '.join(extra)} (overrides are "
                              "key=value, e.g. trainer.max_epochs=2; see cnnlab --help)")
        func: Callable[[argparse.Namespace], None] = args.func
        func(args)
    except CnnlabError as err:
        print(f"cnnlab: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in STORAGE_ERRORS:
            raise
        print(f"cnnlab: error: {err.filename or 'writing'}: {err.strerror}; allowed: "
              f"{STORAGE_ERRORS[err.errno]}, then rerun the same command (finished work is kept)",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
