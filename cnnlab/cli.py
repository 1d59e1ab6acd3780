"""The ``cnnlab`` command.

  fit              train and test one model (runs/fit-<time>/ unless --out)
  summary          per-layer output shapes, parameters and multiply-adds
  lr-find          the LR range test: loss vs learning rate and a suggestion (runs/lr-find/)
  augment-preview  training samples and augmented variants as a PNG (runs/augment-preview/)
  export           a run's model as one self-contained file, optionally BN-fused
  predict          classify images, folders of images or .npz arrays with a model
  ablate           run (or resume) ablation specs; report with intervals and tests (reports/)
  tune             cross-validated Optuna search, then refit and test (reports/)
  plan             size a spec's seed plan from a pilot: power and family-wise error
  report           rebuild an ablation's report from its storage
  sync             upload offline W&B runs

Each command imports its machinery (torch, Lightning, Optuna) when it runs, after its arguments
and config are checked: ``cnnlab --help`` and a bad key answer without loading torch.
"""

from __future__ import annotations

import argparse
import csv
import errno
import gc
import io
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from cnnlab.config import ExperimentConfig, load_config, to_yaml
from cnnlab.cpus import WORKERS_ENV, free_cpus
from cnnlab.errors import CnnlabError
from cnnlab.files import check_output, check_run_out, check_study_folder, write_output
from cnnlab.studies.search_spec import load_search_spec, with_overrides
from cnnlab.studies.spec import load_spec, safe_name
from cnnlab.studies.storage import default_url, load_study, open_storage
from cnnlab.studies.workers import warm_workers

if TYPE_CHECKING:  # the results module loads numpy and Optuna: only the commands that need it do
    import optuna

    from cnnlab.studies.results import Results


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CnnlabError(f"{self.prog}: {message} (see {self.prog} --help)")


def _config(args: argparse.Namespace) -> ExperimentConfig:
    return load_config(args.config, args.overrides)


def cmd_fit(args: argparse.Namespace) -> None:
    cfg = _config(args)
    if args.print_config:
        from cnnlab.training.fast import resolved

        print(to_yaml(resolved(cfg)[0]), end="")
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


OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")  # key=value, as opposed to a spec file's path


def cmd_ablate(args: argparse.Namespace) -> None:
    extra = tuple(a for a in args.specs if OVERRIDE.match(a))
    paths = [Path(a) for a in args.specs if not OVERRIDE.match(a)]
    if not paths:
        raise CnnlabError("ablate: no spec file given; allowed: one or more specs, e.g. "
                          "experiments/norm.yaml, then key=value overrides for every trial")
    specs = [load_spec(path).with_extra(extra) for path in paths]  # validated before any work
    if args.workers > 1:
        warm_workers("cnnlab.studies.ablation")
    from cnnlab.studies.ablation import Job, ablate, study_name

    if args.seeds:
        specs = [spec.with_seeds(args.seeds) for spec in specs]
    root = args.out or Path("reports")
    jobs = []
    for spec in specs:
        out = root / study_name(spec, args.quick) if args.out is None or len(specs) > 1 else root
        jobs.append(Job(spec, out, args.storage or default_url(out)))
    console = Console()

    def show(job: Job, results: Results) -> None:
        _show_results(console, results, job.out)

    # each spec's report files and W&B summary are written while the workers go on
    with ThreadPoolExecutor(max_workers=1) as writer:
        written = []
        ablate(jobs, args.quick, args.workers, console,
               finish=lambda write: written.append(writer.submit(write)), on_report=show)
        for future in written:
            future.result()  # a failed write (a full disk) fails the command


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


def _show_results(console: Console, results: Results, out: Path) -> None:
    """The study's arms, confirmatory checks and verdict, as the report gives them."""
    from cnnlab.studies.report import console_lines

    for line in console_lines(results):
        console.print(line, markup=False, highlight=False)
    console.print(f"report: {out}/report.md", markup=False, highlight=False)
    if results.running:
        console.print(f"note: {len(results.running)} trials of {results.study} were still "
                      "running or queued (another worker?): the report is incomplete; rerun to "
                      "update it")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: a positive number of seconds")
    return value


def cmd_tune(args: argparse.Namespace) -> None:
    spec = with_overrides(load_search_spec(args.spec), args.trials, args.folds,
                          tuple(args.overrides))
    if args.workers > 1:
        warm_workers("cnnlab.studies.search")
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


def _stored_ablation(name: str, out: Path, storage: str | None) -> optuna.Study:
    """An ablation's study, opened read-only from ``storage`` (default ``out``'s journal)."""
    url = storage or default_url(out)
    if "://" not in url and not Path(url).is_file():
        raise CnnlabError(f"--storage {url}: no study storage there; allowed: the --out or "
                          "--storage of an earlier cnnlab ablate")
    study = load_study(open_storage(url, readonly=True), name)
    if "factors" not in study.user_attrs.get("spec", {}):
        raise CnnlabError(f"study {name!r} is not an ablation (a cnnlab tune search?); allowed: "
                          "an ablation's name; a search's report is its --out/search.md, rewritten "
                          "by rerunning cnnlab tune")
    return study


def cmd_report(args: argparse.Namespace) -> None:
    from cnnlab.studies.report import write_report
    from cnnlab.studies.results import collect

    name = safe_name(args.name)
    out = args.out or Path("reports") / name
    study = _stored_ablation(name, out, args.storage)
    check_study_folder(out)  # before anything is written
    _show_results(Console(), write_report(collect(study), out), out)


def _plan(text: str) -> tuple[int, int, int]:
    try:
        first, most, step = (int(part) for part in text.split(":"))
    except ValueError:
        first = most = step = 0
    if not 1 <= first <= most or step < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: FIRST:MOST:STEP seeds, "
                                         "positive integers with FIRST ≤ MOST, e.g. 3:8:2")
    return first, most, step


def cmd_plan(args: argparse.Namespace) -> None:
    from cnnlab.studies.planning import seeds_for, simulate_plan
    from cnnlab.studies.results import collect
    from cnnlab.studies.sequential import Plan

    spec = load_spec(args.spec)
    name = f"{spec.name}-quick" if args.quick else spec.name
    out = args.out or Path("reports") / name
    results = collect(_stored_ablation(name, out, args.storage))
    if not results.checks:
        raise CnnlabError(f"study {name!r} has no finished trials to plan from; allowed: a "
                          "pilot run of the spec (cnnlab ablate SPEC --seeds 3)")
    console = Console()
    say = lambda line: console.print(line, markup=False, highlight=False)  # noqa: E731
    say(f"{name}: pilot of {results.arms[0].seeds}+ seeds; seeds for 80% power in one look at "
        f"α 0.05 / {len(results.checks)} (the family)")
    for i, (e, m, needed) in enumerate(seeds_for(results, args.effect)):
        size = f"|Δ| {args.effect:g}" if args.effect else "the pilot's Δ"
        need = ("failure rates: see the simulation" if m.rates
                else f"{needed or 'more than 200'} seeds for {size}")
        say(f"  {i + 1}. {e.text() if e.direction else f'{e.arm} vs {e.than}'}: Δ "
            f"{m.delta:+.4g}, sd {m.sd:.3g}, failure rate {m.fail_arm:.2f} vs "
            f"{m.fail_reference:.2f}; {need}")
    say(f"seed plans, {args.sims} simulated studies each (seed {args.seed}), decided by the "
        "report's code:")
    for plan in [Plan(*p) for p in args.plan] or [spec.plan]:
        d = simulate_plan(results, plan, args.sims, args.seed)
        say(f"  {plan.first}:{plan.most}:{plan.step}: P(as expected) "
            + " ".join(f"{i + 1}:{x:.2f}" for i, x in enumerate(d.expected))
            + f"; P(supported) {d.supported:.2f}; P(decided) {d.decided:.2f}; FWER under the "
            f"null {d.fwer:.3f} ± {d.fwer_se:.3f}; {d.mean_seeds:.1f} seeds per arm on average")


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

    folder = args.run if args.run.is_dir() else args.run.parent
    folder = folder.parent if folder.name == "checkpoints" else folder  # a run's .ckpt: the run
    out = args.out or folder / ("model_fused.pt" if args.fuse_bn else "model.pt")
    report = export(args.run, out, args.fuse_bn)
    line = f"wrote {out} (weights, input normalisation, class names, input shape, config)"
    if report["fused_bn"]:
        line += (f": batch norm folded into the convs; max |fused − original| on the validation "
                 f"set {report['max_abs_diff']:.2e}; inference speed {report['speedup']:.2f}× the unfused "
                 "model's (batch 256)")
    elif args.fuse_bn:
        line += (f": no batch norm in this model (model.norm={report['norm']}), nothing to fold; "
                 "exported unfused")
    print(line)


def cmd_predict(args: argparse.Namespace) -> None:
    from cnnlab.data.sources import read_inputs
    from cnnlab.export import load

    model = load(args.model)
    names, pixels, resized = read_inputs(args.inputs, model.input_shape)
    index, confidence = model.predict(pixels)
    rows = [[name, model.classes[i], f"{p:.4f}"]
            for name, i, p in zip(names, index.tolist(), confidence.tolist(), strict=True)]
    if args.out is not None:
        buffer = io.StringIO()
        csv.writer(buffer).writerows([["input", "class", "probability"], *rows])
        write_output(args.out, buffer.getvalue().encode(), lambda path: False)  # never replaces
        print(f"wrote {args.out}: {len(rows)} predictions")
    else:
        _print_table(Console(), f"{args.model}: {len(rows)} predictions",
                     [["input", "class", "probability"], *rows])
    if resized:
        shape = "×".join(map(str, model.input_shape[1:]))
        print(f"note: {resized} of {len(rows)} inputs were resized to the model's {shape} pixels",
              file=sys.stderr)


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
    fit.add_argument("--print-config", action="store_true",
                     help="print the config as the run will record it ('auto' resolved on this "
                     "machine) and exit")
    fit.set_defaults(func=cmd_fit)

    summary = commands.add_parser("summary", help="per-layer shapes, parameters and mult-adds")
    _common(summary)
    summary.add_argument("--input-shape", metavar="C,H,W",
                         help="input shape (default: the configured dataset's)")
    summary.add_argument("--num-classes", type=_positive, default=10,
                         help="with --input-shape (default: %(default)s)")
    summary.set_defaults(func=cmd_summary)

    ablate = commands.add_parser("ablate", help="run (or resume) ablation specs and report them")
    ablate.add_argument("specs", nargs="+", metavar="SPEC|key=value",
                        help="ablation spec(s), e.g. experiments/norm.yaml; key=value overrides "
                        "apply to every trial, after the quick preset (part of the study: a "
                        "rerun with other overrides is refused)")
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
    tune.add_argument("overrides", nargs="*", metavar="key=value",
                      help="overrides for every trial and the refit, after the quick preset "
                      "(part of the study: a rerun with other overrides is refused)")
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

    plan = commands.add_parser("plan", help="size a spec's seed plan from a pilot study of it: "
                               "seeds needed, power and family-wise error by simulation")
    plan.add_argument("spec", type=Path, metavar="SPEC", help="the ablation spec")
    plan.add_argument("--quick", action="store_true", help="the pilot is the quick preset's")
    plan.add_argument("--plan", type=_plan, action="append", default=[], metavar="F:M:S",
                      help="a seed plan to simulate: first look, most seeds, step "
                      "(repeatable; default: the spec's)")
    plan.add_argument("--effect", type=float, help="the |Δ| to size for (default: the pilot's)")
    plan.add_argument("--sims", type=_positive, default=2000,
                      help="simulated studies per plan (default: %(default)s)")
    plan.add_argument("--seed", type=int, default=0, help="the simulation's seed")
    plan.add_argument("--storage", help="Optuna storage URL (default DIR/study.journal)")
    plan.add_argument("--out", type=Path, help="the pilot's folder (default reports/<study>)")
    plan.set_defaults(func=cmd_plan)

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
    lr.add_argument("--out", type=Path, default=Path("runs/lr-find/lr_find.png"),
                    help="the plot (PNG); its W&B run goes beside it (default: %(default)s)")
    lr.add_argument("--min-lr", type=float, default=1e-6,
                    help="the first learning rate tried (default: %(default)g)")
    lr.add_argument("--max-lr", type=float, default=1.0,
                    help="the last learning rate tried (default: %(default)g)")
    lr.add_argument("--num-training", type=_positive, default=100,
                    help="training steps, one learning rate each (default: %(default)s)")
    lr.set_defaults(func=cmd_lr_find)

    exp = commands.add_parser("export", help="a run's best model as one self-contained file "
                              "(normalisation, class names inside), optionally BN-fused")
    exp.add_argument("run", type=Path, metavar="RUN", help="the --out of a cnnlab fit, or a "
                     ".ckpt it wrote")
    exp.add_argument("--fuse-bn", action="store_true",
                     help="fold batch norm into the preceding convs (checked, timed)")
    exp.add_argument("--out", type=Path, help="file to write (default: beside the run, "
                     "model.pt or model_fused.pt)")
    exp.set_defaults(func=cmd_export)

    pred = commands.add_parser("predict", help="classify image files, folders of images or .npz "
                               "arrays with a run's model or an export")
    pred.add_argument("model", type=Path, metavar="RUN_OR_EXPORT",
                      help="a cnnlab fit's --out, a .ckpt it wrote, or a cnnlab export")
    pred.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                      help="image files, folders of images, or .npz files with an array x")
    pred.add_argument("--out", type=Path, help="write a CSV (input, class, probability) instead "
                      "of printing a table; never replaces an existing file")
    pred.set_defaults(func=cmd_predict)

    aug = commands.add_parser("augment-preview",
                              help="a PNG grid of training samples and augmented variants")
    _common(aug)
    aug.add_argument("--out", type=Path, default=Path("runs/augment-preview/preview.png"),
                     help="the PNG file to write (default: %(default)s)")
    aug.add_argument("--samples", type=_positive, default=8,
                     help="rows: training samples (default: %(default)s)")
    aug.add_argument("--variants", type=_positive, default=7,
                     help="augmented columns per sample (default: %(default)s)")
    aug.set_defaults(func=cmd_augment_preview)
    return parser


def _dotted_options(argv: list[str]) -> None:
    """``--trainer.max_epochs 2`` (Lightning CLI / jsonargparse habit): one line on the cnnlab way."""
    for i, arg in enumerate(argv):
        key, sep, value = arg[2:].partition("=")
        if arg.startswith("--") and "." in key:
            if not sep:
                value = argv[i + 1] if i + 1 < len(argv) else "VALUE"
            raise CnnlabError(f"{arg}: cnnlab takes config overrides as key=value; allowed: "
                              f"{key}={value}")


STORAGE_ERRORS = {
    errno.ENOSPC: "free some space (or another --out / --storage)",
    errno.EDQUOT: "free some of your quota (or another --out / --storage)",
    errno.EROFS: "a writable --out / --storage",
    errno.EACCES: "a folder you may write to (--out / --storage)",
    errno.EPERM: "a folder you may write to (--out / --storage)",
}


class Stopped(KeyboardInterrupt):
    """SIGTERM (``timeout``, ``kill``, SLURM's preemption or time limit) or SIGINT, raised
    where the command is, so it unwinds like Ctrl-C: staged runs are removed, trials failed
    (a rerun redoes them). Lightning turns it into ``sys.exit(1)`` inside a fit, so the signal
    is remembered in ``STOPPED`` for ``main`` to report."""


STOPPED: list[int] = []  # the signals received, in order


def _stop(signum: int, frame: object) -> None:
    STOPPED.append(signum)
    raise Stopped(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: user errors print one line on stderr and return 2; SIGINT and SIGTERM
    stop the command with one line and 130 / 143 (128 + the signal), resumable."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        STOPPED.clear()
        previous = {signum: signal.signal(signum, _stop)
                    for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        _dotted_options(argv)
        args, extra = build_parser().parse_known_args(argv)
        listed = next((name for name in ("overrides", "specs") if hasattr(args, name)), None)
        if extra and listed and all(OVERRIDE.match(e) for e in extra):
            setattr(args, listed, getattr(args, listed) + extra)  # key=value after an option
        elif extra:
            raise CnnlabError(f"cnnlab: unrecognized arguments: {' '.join(extra)} (overrides are "
                              "key=value, e.g. trainer.max_epochs=2; see cnnlab --help)")
        func: Callable[[argparse.Namespace], None] = args.func
        func(args)
    except (KeyboardInterrupt, SystemExit) as err:
        if isinstance(err, SystemExit) and not STOPPED:
            raise
        signum = STOPPED[0] if STOPPED else signal.SIGINT
        print(f"cnnlab: stopped by {signal.Signals(signum).name}; finished work is kept: rerun "
              "the same command to resume", file=sys.stderr)
        return 128 + signum
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
    finally:
        for signum, handler in previous.items():  # in-process callers (tests) get theirs back
            signal.signal(signum, handler)
    return 0


def console_main() -> None:
    """The ``cnnlab`` command: ``main``, then an exit that does not collect the garbage of
    every module loaded (``gc.freeze``; 1.3 s with torch and Lightning loaded, and nothing in
    it left to write: files are closed, W&B runs finished, atexit handlers still run)."""
    status = main()
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    console_main()
