"""`python -m benchmarks`: every ratio benchmark, one table; `--gpu`: the GPU benchmark."""

import sys

from benchmarks import (
    bench_ablation,
    bench_augment,
    bench_fast,
    bench_fit,
    bench_fuse,
    bench_gpu,
    bench_load,
    bench_search,
)
from benchmarks.common import print_ratios


def main() -> None:
    if sys.argv[1:2] == ["--gpu"]:
        bench_gpu.main(sys.argv[2:])
        return
    print_ratios([*bench_fit.bench(), *bench_augment.bench(), *bench_ablation.bench(),
                  *bench_search.bench(), *bench_fuse.bench(), *bench_fast.bench(),
                  *bench_load.bench()])


if __name__ == "__main__":
    main()
