"""Layer arithmetic: the course's conv example, pooling, and the summary command."""

import pytest

from cnnlab.config import load_config
from cnnlab.errors import CnnlabError
from cnnlab.models.convnet import ConvNet, conv_out, feature_shape, pool_out
from cnnlab.models.summary import summarize

COURSE = ["model.channels=[10]", "model.kernel_size=5", "model.stride=1", "model.padding=2",
          "model.pool=none", "model.hidden_units=[]", "model.norm=none"]


def test_course_conv_example() -> None:
    cfg = load_config(overrides=COURSE)
    rows = summarize(ConvNet(cfg.model, (3, 32, 32), 10), (3, 32, 32))
    conv = rows[0]
    assert conv.kind == "Conv2d"
    assert conv.shape == (10, 32, 32)
    assert conv.params == 760
    assert conv.macs == 768_000


def test_pool_has_no_parameters_and_course_output_size() -> None:
    cfg = load_config(overrides=[*COURSE, "model.pool=max", "model.pool_kernel=3",
                                 "model.pool_stride=2"])
    rows = summarize(ConvNet(cfg.model, (3, 32, 32), 10), (3, 32, 32))
    pool = next(r for r in rows if r.kind == "MaxPool2d")
    assert pool.params == 0 and pool.macs == 0
    assert pool.shape == (10, (32 - 3) // 2 + 1, (32 - 3) // 2 + 1) == (10, 15, 15)


def test_linear_macs_and_totals_match_parameter_count() -> None:
    cfg = load_config(overrides=["model.hidden_units=[64]"])
    model = ConvNet(cfg.model, (1, 8, 8), 10)
    rows = summarize(model, (1, 8, 8))
    assert sum(r.params for r in rows) == sum(p.numel() for p in model.parameters())
    fc = [r for r in rows if r.kind == "Linear"]
    assert [r.macs for r in fc] == [64 * 2 * 2 * 64, 64 * 10]


@pytest.mark.parametrize(("size", "k", "s", "p", "expected"),
                         [(32, 5, 1, 2, 32), (32, 3, 2, 1, 16), (7, 3, 1, 0, 5), (8, 8, 1, 0, 1)])
def test_conv_out(size: int, k: int, s: int, p: int, expected: int) -> None:
    assert conv_out(size, k, s, p) == expected


def test_pool_out() -> None:
    assert pool_out(32, 2, 2) == 16
    assert pool_out(5, 3, 2) == 2


def test_impossible_architecture_names_the_layer() -> None:
    cfg = load_config(overrides=["model.channels=[8,8,8,8]"])
    with pytest.raises(CnnlabError, match=r"block 4 pool output would be 0×0 \(input 1×1, kernel 2"):
        feature_shape(cfg.model, (1, 8, 8))
    cfg = load_config(overrides=["model.kernel_size=11", "model.pool=none"])
    with pytest.raises(CnnlabError, match=r"block 1 conv output would be 0×0 \(input 8×8, kernel 11"):
        feature_shape(cfg.model, (1, 8, 8))


def test_summary_cli_course_example(cli) -> None:
    status, out, _ = cli("summary", "--input-shape", "3,32,32", *COURSE)
    assert status == 0
    conv_line = next(line for line in out.splitlines() if "Conv2d" in line)
    assert "10×32×32" in conv_line and "760" in conv_line and "768,000" in conv_line


def test_summary_cli_defaults_to_dataset_shape(cli) -> None:
    status, out, _ = cli("summary")
    assert status == 0
    assert "1×8×8 input, 10 classes" in out
