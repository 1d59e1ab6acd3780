"""What a study's W&B summary run shows, as plain data: reports build it without loading W&B or
Lightning, and ``tracking.study_run`` writes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StudySummary:
    """What a study's summary run shows: numeric tables, charts, numbers, files to download."""

    study: str
    notes: str
    config: dict[str, Any]
    tables: dict[str, list[dict[str, Any]]]  # name → rows (column → number, text or bool)
    summary: dict[str, Any]
    files: list[Path]
    bar: tuple[str, str, str] | None = None  # (table, x column, y column)
    # (table, x, y, the column whose values get a line each, or None for one line)
    lines: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    step: int = 0  # this write's step: a rerun's tables come after the earlier ones
