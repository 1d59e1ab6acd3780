"""Bad input: one line naming the problem and what is allowed, exit status 2, nothing written."""

from pathlib import Path

import pytest

CASES = {
    "unknown key": (["model.foo=1"], "unknown key 'model.foo'; allowed: channels, kernel_size"),
    "unknown section": (["foo.bar=1"], "unknown key 'foo'"),
    "wrong type": (["model.kernel_size=abc"], "model.kernel_size: Value 'abc'"),
    "wrong list item type": (["model.channels=[a]"], "model.channels[0]"),
    "unparsable value": (["model.channels=[1,"], "override 'model.channels=[1,': cannot parse"),
    "override without =": (["model.norm"], "expected key=value"),
    "unknown norm": (["model.norm=batchy"],
                     "model.norm: unknown value 'batchy'; allowed: batch, layer, instance, group, none"),
    "unknown pool": (["model.pool=min"], "model.pool: unknown value 'min'; allowed: max, avg, none"),
    "unknown reg": (["reg.kind=l3"], "reg.kind: unknown value 'l3'; allowed: none, l1, l2, elastic"),
    "unknown optimizer": (["optim.name=lion"], "optim.name: unknown value 'lion'; allowed: sgd"),
    "unknown scheduler": (["optim.scheduler=step"], "optim.scheduler: unknown value 'step'"),
    "unknown dataset": (["data.name=imagenet"], "data.name: unknown value 'imagenet'; allowed: digits"),
    "unknown init": (["model.init=orthogonal"], "model.init: unknown value 'orthogonal'"),
    "unknown wandb mode": (["wandb.mode=sometimes"], "wandb.mode: unknown value 'sometimes'"),
    "zero lr": (["optim.lr=0"], "optim.lr: got 0; allowed: a positive number"),
    "lr neither number nor auto": (["optim.lr=fast"], "optim.lr: got 'fast'; allowed: a positive "
                                   "number, or auto"),
    "negative lr": (["optim.lr=-0.1"], "optim.lr: got -0.1; allowed: a positive number"),
    "dropout of one": (["model.dropout=1.0"], "model.dropout: got 1.0; allowed: a probability in [0, 1)"),
    "negative spatial dropout": (["model.spatial_dropout=-0.1"], "model.spatial_dropout: got -0.1"),
    "zero batch size": (["data.batch_size=0"], "data.batch_size: got 0; allowed: a positive integer"),
    "negative kernel": (["model.kernel_size=-3"], "model.kernel_size: got -3"),
    "no conv blocks": (["model.channels=[]"], "model.channels: got []; allowed: a non-empty list"),
    "zero hidden units": (["model.hidden_units=[0]"], "model.hidden_units: got [0]"),
    "groups not a divisor": (["model.norm=group", "model.groups=3"],
                             "model.groups: got 3; allowed: a divisor of every entry"),
    "val fraction of one": (["data.val_fraction=1.0"],
                            "data.val_fraction: got 1.0; allowed: a fraction in (0, 1)"),
    "unknown augment policy": (["data.augment.policy=some"],
                               "data.augment.policy: unknown value 'some'; allowed: all, k_of_n"),
    "augment k above enabled ops": (["data.augment.policy=k_of_n", "data.augment.k=3",
                                     "data.augment.hflip=true", "data.augment.rotate=10"],
                                    "data.augment.k: got 3; allowed: 1..2"),
    "rotation beyond 180": (["data.augment.rotate=200"], "data.augment.rotate: got 200.0"),
    "negative crop padding": (["data.augment.crop_padding=-1"], "data.augment.crop_padding: got -1"),
    "nesterov without momentum": (["optim.name=sgd", "optim.nesterov=true", "optim.momentum=0"],
                                  "optim.nesterov: got True; allowed: true only with"),
    "l1 ratio above one": (["reg.l1_ratio=2"], "reg.l1_ratio: got 2.0; allowed: a number in [0, 1]"),
    "conv too big for the input": (["model.kernel_size=11", "model.pool=none"],
                                   "model: block 1 conv output would be 0×0 (input 8×8, kernel 11"),
    "too many pools": (["model.channels=[8,8,8,8]"],
                       "model: block 4 pool output would be 0×0 (input 1×1"),
    "instance norm on 1×1": (["model.channels=[8,8,8,8]", "model.norm=instance",
                              "model.pool_kernel=1"],
                             "model.norm: instance norm needs more than one spatial element"),
}


def _check(status: int, out: str, err: str, expected: str) -> None:
    assert status == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cnnlab: error: ")
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("case", CASES)
def test_bad_override(cli, tmp_path: Path, case: str) -> None:
    overrides, expected = CASES[case]
    out = tmp_path / "run"
    _check(*cli("fit", "--out", out, *overrides), expected)
    assert not out.exists()


FILES = {
    "missing config file": (None, "--config {path}: cannot read (No such file or directory)"),
    "invalid YAML": ("model: [1, 2\n", "--config {path}: invalid YAML at line"),
    "config is a list": ("- 1\n- 2\n", "--config {path}: top level is list"),
    "unknown key in file": ("model:\n  colour: red\n", "unknown key 'model.colour'"),
}


@pytest.mark.parametrize("case", FILES)
def test_bad_config_file(cli, tmp_path: Path, case: str) -> None:
    text, expected = FILES[case]
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    out = tmp_path / "run"
    _check(*cli("fit", "--out", out, "--config", path), expected.format(path=path))
    assert not out.exists()


USAGE = {
    "unknown flag": (["fit", "--bogus"], "unrecognized arguments: --bogus"),
    "unknown command": (["train"], "invalid choice: 'train'"),
    "no command": ([], "the following arguments are required: command"),
    "short input shape": (["summary", "--input-shape", "3,32"],
                          "--input-shape: got '3,32'; allowed: three positive integers C,H,W"),
    "out is a file": (["fit", "--out", "{file}"], "--out {file}: is a file; allowed: a directory"),
}


@pytest.mark.parametrize("case", USAGE)
def test_bad_usage(cli, tmp_path: Path, case: str) -> None:
    args, expected = USAGE[case]
    file = tmp_path / "file.txt"
    file.write_text("keep")
    _check(*cli(*(a.format(file=file) for a in args)), expected.format(file=file))
    assert file.read_text() == "keep"


def test_the_console_script_exits_2_without_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "cnnlab.cli", "fit", "model.norm=bogus"],
                          capture_output=True, text=True, cwd=tmp_path)
    _check(proc.returncode, proc.stdout, proc.stderr, "model.norm: unknown value 'bogus'")
    assert list(tmp_path.iterdir()) == []
