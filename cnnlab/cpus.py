"""How many CPU cores this process may use now: the default torch threads and study workers.

Under load, torch's default (one OpenMP thread per core) collapses: with one core kept busy by
another process, the digits fit went from 1.9 s to 8.4 s, while one thread stayed at 1.9 s. So
cnnlab counts the cores other processes keep busy and uses the rest.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

WORKERS_ENV = "CNNLAB_WORKERS"  # the default of --workers (a number, or auto)


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


SAMPLES, SAMPLE_S = 5, 0.01  # runnable-task counts to take the median of, and their spacing


def busy_cpus() -> int:
    """Cores other processes keep busy now: the median of a few counts of runnable tasks, less
    this one. (The load average lags by minutes: right after a study it would still count the
    study's own finished workers.) Without /proc: the 1-minute load average."""
    counts = []
    try:
        for _ in range(SAMPLES):
            tasks = Path("/proc/loadavg").read_text().split()[3]
            counts.append(int(tasks.split("/")[0]) - 1)
            time.sleep(SAMPLE_S)
    except (OSError, ValueError, IndexError):
        return int(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return int(statistics.median(counts))


def free_cpus() -> int:
    """The cores free for this process now (at least one)."""
    return max(1, usable_cpus() - busy_cpus())
