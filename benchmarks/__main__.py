"""`python -m benchmarks`: every ratio benchmark, one table; `--gpu`: the GPU benchmark.
Each module's wall time goes to stderr as it ends (``make bench`` should stay within minutes)."""

import multiprocessing.util
import os
import sys
import tempfile
import time
from collections.abc import Callable

from benchmarks import (
    bench_ablation,
    bench_augment,
    bench_fast,
    bench_fit,
    bench_fuse,
    bench_gpu,
    bench_install,
    bench_load,
    bench_search,
)
from benchmarks.common import Ratio, print_ratios
from cnnlab.process import configure


def _timed(name: str, bench: Callable[[], list[Ratio]]) -> list[Ratio]:
    start = time.perf_counter()
    ratios = bench()
    print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return ratios


def main() -> None:
    """The benchmarks, each study and run folder in one temporary folder removed at the end
    (one ``make bench`` used to leave 33 ``cnnlab-bench-*`` folders, 645 MB, behind)."""
    configure()
    multiprocessing.util.get_temp_dir()  # multiprocessing's own folder: outside, removed by it
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-") as scratch:
        tempfile.tempdir = os.environ["TMPDIR"] = scratch  # mkdtemp here and in every worker
        if sys.argv[1:2] == ["--gpu"]:
            bench_gpu.main(sys.argv[2:])
            return
        start = time.perf_counter()
        ratios = [ratio for module in (bench_fit, bench_augment, bench_ablation, bench_search,
                                       bench_fuse, bench_fast, bench_load, bench_install)
                  for ratio in _timed(module.__name__, module.bench)]
        print_ratios(ratios)
        print(f"make bench: {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
