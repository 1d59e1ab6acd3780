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
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError, ProgrammingError

from cnnlab.errors import CnnlabError
from cnnlab.outputs.files import JOURNAL, check_study_folder, claim_study_folder, write_owned
from cnnlab.process import outage
from cnnlab.studies.engine.journal import ReadOnlyJournal, repair

SCHEMES = ("journal file path", "sqlite:///PATH", "postgresql://USER@HOST/DB")
OPTUNA_TABLES = {"studies", "trials", "version_info"}
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
    ``readonly`` (reports) never creates or changes a file, a table or a record."""
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
        if outage(err) == "database is locked":  # held past the wait: a temporary failure (75)
            raise
        reason = str(err).strip().splitlines()[0][:200]
        raise CnnlabError(f"--storage {url}: cannot open ({reason}); allowed: a reachable "
                          "database URL or a journal file path") from None


def storage_id(url: str) -> str:
    """What names a storage wherever it is opened from: a journal's or SQLite file's absolute
    path, a database URL without its password."""
    if "://" not in url:
        return str(Path(url).absolute())
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return url
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        parsed = parsed.set(database=str(Path(parsed.database).absolute()))
    return parsed.render_as_string(hide_password=True)


def open_study_storage(out: Path, url: str) -> optuna.storages.BaseStorage:
    """The storage of a study reporting into ``out``: the folder and the URL are checked before
    either is created, and ``out`` records that cnnlab made it for this storage (and its
    default journal)."""
    owner = storage_id(url)
    check_study_folder(out, owner)
    if url != default_url(out):
        storage = open_storage(url)
        claim_study_folder(out, owner)
        return storage
    claim_study_folder(out, JOURNAL)  # its own journal, by name: the folder may be moved
    write_owned(out, JOURNAL, None)
    return open_storage(url)


def _journal(path: Path, readonly: bool) -> optuna.storages.JournalStorage:
    if path.is_dir():
        raise CnnlabError(f"--storage {path}: is a directory; allowed: {', '.join(SCHEMES)}")
    if path.is_symlink() and not readonly:  # appends and repairs would land in its target
        raise CnnlabError(f"--storage {path}: is a symbolic link (to {os.readlink(path)}); "
                          "allowed: the journal's real path")
    if path.exists() and not path.is_file():  # a FIFO or a device would hang or eat the study
        raise CnnlabError(f"--storage {path}: is not a regular file; allowed: a journal file "
                          f"path, or {', '.join(SCHEMES[1:])}")
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
    ``wait`` seconds before the error stands. (``tenacity`` would add a dependency for this
    one loop inside SQLAlchemy's connect hook.)"""
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



ARTIFACT_BYTES = 50 * 2**20  # a default journal this small joins the study's W&B artifact



def with_journal(out: Path, files: list[Path]) -> list[Path]:
    """``files`` plus the study's default journal under ``out`` when it exists and is small."""
    journal = out / "study.journal"
    small = journal.is_file() and journal.stat().st_size <= ARTIFACT_BYTES
    return [*files, journal] if small else files
