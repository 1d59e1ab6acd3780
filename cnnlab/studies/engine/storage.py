"""Optuna storages by URL: a journal file (the default), sqlite:///…, postgresql://…

Results live in the storage, so a study resumes after a crash and several processes (or
machines, with PostgreSQL) can share it.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages.journal import JournalFileBackend
from optuna.study import StudyDirection
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError, ProgrammingError

from cnnlab.errors import CnnlabError, did_you_mean
from cnnlab.outputs.files import check_study_folder, claim_study_folder, write_owned
from cnnlab.studies.engine.journal import ReadOnlyJournal, repair

SCHEMES = ("journal file path", "sqlite:///PATH", "postgresql://USER@HOST/DB")
OPTUNA_TABLES = {"studies", "trials", "version_info"}
JOURNAL = "study.journal"
LOCK_SUFFIX = ".lock"  # Optuna's journal lock: a symbolic link <journal>.lock → the journal


WAIT_ENV = "CNNLAB_STORAGE_WAIT_S"


def storage_wait() -> float:
    """Seconds a database lock is waited out before the command stops with one line
    (``$CNNLAB_STORAGE_WAIT_S``, default 60): SQLite's own 5 s made a 20 s lock a traceback."""
    text = os.environ.get(WAIT_ENV, "60")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        raise CnnlabError(f"{WAIT_ENV}: got {text!r}; allowed: seconds, a number in (0, 86400]")
    return value


def default_url(out: Path) -> str:
    return str(out / JOURNAL)


def open_storage(url: str, readonly: bool = False) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``; a bad URL, a file that is not a journal, a database that
    is not Optuna's or an unreachable server is one clear error, before anything is written.
    ``readonly`` (reports) never creates or changes a file, a table or a record. Optuna's INFO
    line per trial and study goes quiet from here on: a study prints its own progress."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if "://" not in url:
        return _journal(Path(url), readonly)
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql"):
        raise CnnlabError(f"--storage {url}: unknown scheme {scheme!r}; allowed: {', '.join(SCHEMES)}")
    kwargs: dict[str, Any] = {}
    if scheme == "postgresql":  # a connection a server restart dropped is replaced, not used
        options = {"options": "-c default_transaction_read_only=on"} if readonly else {}
        kwargs = {"connect_args": {"connect_timeout": 5, **options}, "pool_pre_ping": True}
    target = url
    if scheme == "sqlite":
        path = Path(url.split(":///", 1)[-1])
        if readonly and not path.is_file():
            raise CnnlabError(f"--storage {url}: no such database file; allowed: the --storage "
                              "of an earlier cnnlab ablate or tune")
        if readonly:  # SQLite itself refuses every write
            target = f"sqlite:///file:{path}?mode=ro&uri=true"
        kwargs = {"connect_args": {"timeout": storage_wait()}}  # waits out another's lock
    try:
        _check_tables(url, target, kwargs, readonly)
        return _rdb_storage(target, kwargs, readonly)
    except CnnlabError:
        raise
    except ImportError as err:
        raise CnnlabError(f"--storage {url}: database driver missing ({err}); allowed: install "
                          "the postgres extra: pip install -e '.[postgres]'") from None
    except Exception as err:  # sqlalchemy raises many kinds; all mean "cannot use this URL"
        reason = str(err).strip().splitlines()[0][:200]
        raise CnnlabError(f"--storage {url}: cannot open ({reason}); allowed: a reachable "
                          "database URL or a journal file path") from None


def open_study_storage(out: Path, url: str) -> optuna.storages.BaseStorage:
    """The storage of a study reporting into ``out``: the folder and the URL are checked before
    either is created, and ``out`` records that cnnlab made it (and its default journal)."""
    check_study_folder(out)
    if url != default_url(out):
        storage = open_storage(url)
        claim_study_folder(out)
        return storage
    claim_study_folder(out)
    write_owned(out, JOURNAL, None)
    return open_storage(url)


def _journal(path: Path, readonly: bool) -> optuna.storages.JournalStorage:
    if path.is_dir():
        raise CnnlabError(f"--storage {path}: is a directory; allowed: {', '.join(SCHEMES)}")
    if readonly:
        backend = ReadOnlyJournal(path)
        if backend.damage:
            print(f"cnnlab: note: {backend.damage.line(path)} (not repaired: reading only)",
                  file=sys.stderr)
        return optuna.storages.JournalStorage(backend)
    if path.exists():
        damage = repair(path)
        if damage:
            print(f"cnnlab: warning: {damage.line(path)}", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_dangling_lock(path)
    # Optuna's lock is a symbolic link to the journal, named beside it: with a relative path its
    # target would resolve against the link's folder, never exist, and every waiter would spin
    return optuna.storages.JournalStorage(JournalFileBackend(str(path.absolute())))


def _clear_dangling_lock(path: Path) -> None:
    """A journal lock left by a process killed while it held it, pointing nowhere (cnnlab
    before this fix made relative ones): no live writer holds a lock whose target is missing."""
    lock = Path(f"{path}{LOCK_SUFFIX}")
    if lock.is_symlink() and not lock.exists():
        lock.unlink(missing_ok=True)


def _check_tables(url: str, target: str, kwargs: dict[str, Any], readonly: bool) -> None:
    """Refuse a database that holds tables of something else (or, to read, no study at all)."""
    engine = sqlalchemy.create_engine(target, **kwargs)
    try:
        tables = set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    if tables and not tables & OPTUNA_TABLES:  # partial: other workers are creating the schema
        raise CnnlabError(f"--storage {url}: holds tables that are not an Optuna storage "
                          f"({', '.join(sorted(tables)[:3])}); allowed: an empty database, or one "
                          "made by cnnlab (or Optuna)")
    if readonly and not tables:
        raise CnnlabError(f"--storage {url}: holds no study; allowed: the --storage of an "
                          "earlier cnnlab ablate or tune")


def _rdb_storage(url: str, engine_kwargs: dict[str, Any], readonly: bool,
                 attempts: int = 5) -> optuna.storages.RDBStorage:
    """Processes (or machines) opening an empty database at once all create Optuna's tables, and
    the losers see duplicate-key errors; by then the schema exists, so they try again. A
    PostgreSQL storage reconnects patiently (``_patient``) after its server restarts."""
    for attempt in range(1, attempts + 1):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                 skip_table_creation=readonly)
            break
        except (IntegrityError, ProgrammingError):
            if attempt == attempts:
                raise
            time.sleep(random.uniform(0.1, 0.5) * attempt)
    if url.startswith("postgresql"):
        event.listen(storage.engine, "do_connect", _patient(storage_wait()))
    return storage


def _patient(wait: float) -> Callable[..., Any]:
    """A ``do_connect`` hook: a new connection to a server that does not answer (a restart, a
    network blip; ``pool_pre_ping`` finds the old ones dead) is retried with backoff for
    ``wait`` seconds before the error stands."""
    def connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
        deadline, pause = time.monotonic() + wait, 0.25
        while True:
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError:
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(2 * pause, 5.0)

    return connect


def study_for(storage: optuna.storages.BaseStorage, name: str, direction: str,
              attrs: dict[str, Any], mutable: tuple[str, ...] = (), added: tuple[str, ...] = (),
              grow_only: tuple[str, ...] = ()) -> optuna.Study:
    """Create the study (or load it) and check it was made from the same ``attrs`` (the spec).

    Keys in ``mutable`` (what the report reads, how many seeds) may change between runs: the
    stored spec takes the new values. Older studies lack some of them, which is no difference.
    Keys in ``added`` are checked once stored; a study made before them gets them. Counts in
    ``grow_only`` (seeds per arm) may rise but never fall: a smaller one says so and changes
    nothing (``--seeds 5`` used to rewrite a 6-seed study's spec to 5).
    """
    try:  # load first: a journal records even a refused create, and a refusal writes nothing
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        study = optuna.create_study(storage=storage, study_name=name,
                                    direction=StudyDirection[direction.upper()],
                                    load_if_exists=True)
    stored = study.user_attrs.get("spec")
    for key in grow_only:
        had = stored.get(key) if stored is not None else None
        if isinstance(had, int) and had > attrs.get(key, 0):
            print(f"cnnlab: note: study {name!r} has {had} {key} per arm; {attrs[key]} changes "
                  f"nothing ({key} are only added; more with --{key} N > {had})", file=sys.stderr)
            attrs = {**attrs, key: had}
    skip = set(mutable) | {k for k in added if stored is not None and k not in stored}
    fixed = {k: v for k, v in attrs.items() if k not in skip}
    if stored is not None and {k: v for k, v in stored.items() if k not in skip} != fixed:
        same_spec = all(stored.get(k) == v for k, v in fixed.items() if k not in added)
        why = ("its arms' configs resolve differently now (a configs: file or the defaults "
               "changed since)" if same_spec else "a different spec")
        raise CnnlabError(f"study {name!r} in this storage was made from {why}; allowed: the "
                          "same spec and settings to resume it, or another --out / --storage")
    if stored != attrs:
        study.set_user_attr("spec", attrs)
    return study


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise CnnlabError(f"study {name!r} is not in this storage; allowed: "
                          f"{', '.join(names) or 'none yet — run cnnlab ablate first'}") from None


WANDB_STEP = "wandb_step"  # study attribute: the step of the summary run's latest tables
ARTIFACT_BYTES = 50 * 2**20  # a default journal this small joins the study's W&B artifact


def stored_ablation(name: str, out: Path, storage: str | None) -> optuna.Study:
    """An ablation's study, opened read-only from ``storage`` (default ``out``'s journal)."""
    url = storage or default_url(out)
    if "://" not in url and not Path(url).is_file():
        studies = [p.parent.name for p in out.parent.glob(f"*/{JOURNAL}")]  # beside out
        hint = did_you_mean(f"{out.name}-quick" if f"{out.name}-quick" in studies else out.name, studies)
        raise CnnlabError(f"--storage {url}: no study storage there{hint}; allowed: the --out "
                          "or --storage of an earlier cnnlab ablate")
    study = load_study(open_storage(url, readonly=True), name)
    if "factors" not in study.user_attrs.get("spec", {}):
        raise CnnlabError(f"study {name!r} is not an ablation (a cnnlab tune search?); allowed: "
                          "an ablation's name; a search's report is its --out/search.md, rewritten "
                          "by rerunning cnnlab tune")
    return study


def summary_step(study: optuna.Study) -> int:
    """The next step of the study's one W&B summary run: each rerun logs after the last, so
    after ``wandb sync`` the dashboard shows the newest tables (offline runs cannot ask)."""
    step = study.user_attrs.get(WANDB_STEP, -1) + 1
    study.set_user_attr(WANDB_STEP, step)
    return step


def with_journal(out: Path, files: list[Path]) -> list[Path]:
    """``files`` plus the study's default journal under ``out`` when it exists and is small."""
    journal = out / "study.journal"
    small = journal.is_file() and journal.stat().st_size <= ARTIFACT_BYTES
    return [*files, journal] if small else files
