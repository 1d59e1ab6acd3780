"""Optuna storages by URL: a journal file (the default), sqlite:///…, postgresql://…

Results live in the storage, so a study resumes after a crash and several processes (or
machines, with PostgreSQL) can share it.
"""

from __future__ import annotations

import os
import random
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from cnnlab.errors import CnnlabError

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SCHEMES = ("journal file path", "sqlite:///PATH", "postgresql://USER@HOST/DB")


def default_url(out: Path) -> str:
    return str(out / "study.journal")


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``; a bad URL or an unreachable database is one clear error."""
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        path = Path(url)
        if path.is_dir():
            raise CnnlabError(f"--storage {url}: is a directory; allowed: {', '.join(SCHEMES)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql"):
        raise CnnlabError(f"--storage {url}: unknown scheme {scheme!r}; allowed: {', '.join(SCHEMES)}")
    kwargs: dict[str, Any] = {}
    if scheme == "postgresql":
        kwargs = {"connect_args": {"connect_timeout": 5}}
    try:
        return _rdb_storage(url, kwargs)
    except ImportError as err:
        raise CnnlabError(f"--storage {url}: database driver missing ({err}); allowed: install "
                          "the postgres extra: pip install -e '.[postgres]'") from None
    except Exception as err:  # sqlalchemy raises many kinds; all mean "cannot use this URL"
        reason = str(err).strip().splitlines()[0][:200]
        raise CnnlabError(f"--storage {url}: cannot open ({reason}); allowed: a reachable "
                          "database URL or a journal file path") from None


def _rdb_storage(url: str, engine_kwargs: dict[str, Any], attempts: int = 5) -> optuna.storages.RDBStorage:
    """Processes (or machines) opening an empty database at once all create Optuna's tables, and
    the losers see duplicate-key errors; by then the schema exists, so they try again."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(1, attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except (IntegrityError, ProgrammingError):
            time.sleep(random.uniform(0.1, 0.5) * attempt)
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def study_for(storage: optuna.storages.BaseStorage, name: str, direction: str,
              attrs: dict[str, Any]) -> optuna.Study:
    """Create the study (or load it) and check it was made from the same ``attrs`` (the spec)."""
    study = optuna.create_study(storage=storage, study_name=name, direction=direction,
                                load_if_exists=True)
    stored = study.user_attrs.get("spec")
    if stored is None:
        study.set_user_attr("spec", attrs)
    elif stored != attrs:
        raise CnnlabError(f"study {name!r} in this storage was made from a different spec; "
                          "allowed: the same spec to resume it, or another --out / --storage")
    return study


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise CnnlabError(f"study {name!r} is not in this storage; allowed: "
                          f"{', '.join(names) or 'none yet — run cnnlab ablate first'}") from None


def worker_id() -> str:
    """host:pid of this process, stored on the trials it runs (see ``is_dead_local_worker``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def is_dead_local_worker(worker: str | None) -> bool:
    """True for a worker id of this host whose process is gone (a crashed or killed worker)."""
    if not worker:
        return True
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False
