"""Shared helpers for ratio benchmarks: interleaved repeats and a results table."""

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class Ratio:
    """A measured ratio against its target (higher is better unless ``lower_is_better``)."""

    name: str
    value: float
    target: float
    detail: str
    lower_is_better: bool = False

    @property
    def met(self) -> bool:
        return self.value <= self.target if self.lower_is_better else self.value >= self.target


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per function, running them interleaved so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


def print_ratios(ratios: list[Ratio]) -> None:
    table = Table(title="cnnlab benchmarks (ratios measured side by side in one process)")
    for column in ("benchmark", "ratio", "target", "met", "detail"):
        table.add_column(column, justify="right" if column in ("ratio", "target") else "left")
    for r in ratios:
        sign = "≤" if r.lower_is_better else "≥"
        table.add_row(r.name, f"{r.value:.2f}", f"{sign} {r.target:.2f}",
                      "yes" if r.met else "NO", r.detail)
    Console(width=160).print(table)
