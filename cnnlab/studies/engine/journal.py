"""Optuna journal files that survive kills and full disks.

Optuna appends one JSON record per line. A kill or a full disk during an append leaves a torn last
line; Optuna skips it when reading but appends the next record right after it, which corrupts
that record and every later read. ``check_journal`` finds such damage on open: it keeps every
complete record, drops the torn tail (under Optuna's own journal lock, so a live writer is never
cut), says what it dropped, and refuses files that are not journals before anything is appended.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.storages.journal import BaseJournalBackend, JournalFileSymlinkLock

from cnnlab.errors import CnnlabError

RECORD_START = b'{"op_code":'


@dataclass(frozen=True)
class Damage:
    """What a journal's last records lost: the records kept and the bytes dropped."""

    kept: int
    dropped_bytes: int
    rescued: int  # complete records found behind a torn one (a file an older cnnlab appended to)

    def line(self, path: Path) -> str:
        rescued = f", rescued {self.rescued} record(s) written after it" if self.rescued else ""
        return (f"{path}: dropped a torn record ({self.dropped_bytes} bytes) left by an interrupted "
                f"write; kept {self.kept} complete records{rescued}")


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) and isinstance(value.get("op_code"), int) else None


def parse(path: Path, data: bytes) -> tuple[list[dict[str, Any]], Damage | None]:
    """The complete records of a journal's bytes and the damage found; raises for a file that is
    not an Optuna journal (its first line is no journal record, or damage beyond torn records)."""
    lines = data.split(b"\n")
    tail = lines.pop()  # bytes after the last newline: a torn record, or b""
    records: list[dict[str, Any]] = []
    dropped, rescued = len(tail), 0
    for number, line in enumerate(lines, start=1):
        record = _record(line)
        if record is None and line.startswith(b'{"'):  # a torn record, a complete one after it
            start = line.rfind(RECORD_START)
            record = _record(line[start:]) if start > 0 else None
            if record is not None:
                dropped, rescued = dropped + start, rescued + 1
        if record is None:
            what = "is not an Optuna journal" if not records else f"line {number} is corrupt"
            raise CnnlabError(f"--storage {path}: {what}; allowed: a journal file written by "
                              "cnnlab (or Optuna), or a new file name")
        records.append(record)
    if tail and not records and _record(tail) is None and not tail.startswith(RECORD_START[:2]):
        raise CnnlabError(f"--storage {path}: is not an Optuna journal; allowed: a journal file "
                          "written by cnnlab (or Optuna), or a new file name")
    damage = Damage(len(records), dropped, rescued) if dropped else None
    return records, damage


def _encode(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)


def repair(path: Path) -> Damage | None:
    """Drop torn records from ``path`` in place (under the journal lock); None if it was whole."""
    if not path.is_file():
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        records, damage = parse(path, data)
        if damage is None:
            return None
        if damage.rescued:  # damage inside the file: write the records anew
            tmp = path.with_name(f".{path.name}.repair")
            tmp.write_bytes(_encode(records))
            os.replace(tmp, path)
        else:  # only a torn tail: cut it off
            with open(path, "r+b") as f:
                f.truncate(len(data) - damage.dropped_bytes)
                os.fsync(f.fileno())
        return damage
    finally:
        lock.release()


class ReadOnlyJournal(BaseJournalBackend):
    """A journal's complete records, read once; appending is refused (reports never write)."""

    def __init__(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise CnnlabError(f"--storage {path}: cannot read ({err.strerror}); allowed: the "
                              "journal of an earlier cnnlab ablate or tune") from None
        self.records, self.damage = parse(path, data)

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        yield from self.records[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        raise CnnlabError("the storage is open read-only; allowed: cnnlab ablate or tune to change it")
