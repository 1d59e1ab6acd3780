"""A report as its reader reads it: each sentence and figure says what it means (a check mark
beside "failed", an interval that excludes 0 beside "undecided", a censored bound printed as a
measurement, two metrics on one axis, empty columns were all misread)."""

from pathlib import Path

import numpy as np
from PIL import Image

SPEC = """
name: reading
overrides: [trainer.max_epochs=2, "model.channels=[8]", "model.hidden_units=[16]",
            data.batch_size=128, optim.name=sgd, trainer.target_acc=0.999]
factors:
  model.norm: [batch, none]
  optim.lr: [0.05, 3.0]
seeds: 3
metric: test_acc
metrics: [epochs_to_target, bn_train_eval_gap]
baseline: {model.norm: batch, optim.lr: 0.05}
hypothesis:
  claim: a huge learning rate fails more often, and trains to lower accuracy.
  expect:
    - {arm: {model.norm: none, optim.lr: 3.0}, metric: failed, is: higher}
    - {arm: {model.norm: none, optim.lr: 3.0}, metric: weight_l2, is: higher}
"""


def _panels(png: Path) -> int:
    """How many axes a figure draws, from its pixels: each axes' frame is two long unbroken
    dark horizontal lines (its top and bottom spines; text rows have gaps between letters)."""
    with Image.open(png) as img:
        dark = np.asarray(img.convert("L")) < 200  # an antialiased spine spans two grey rows
    padded = np.pad(dark.astype(np.int8), ((0, 0), (1, 1)))
    edges = np.diff(padded, axis=1)
    longest = np.array([max((np.flatnonzero(row == -1) - np.flatnonzero(row == 1)).tolist(),
                            default=0) for row in edges])
    spine = longest > 0.4 * dark.shape[1]
    return int((spine[1:] & ~spine[:-1]).sum() + spine[0]) // 2


def test_the_report_and_console_say_which_test_decides_and_what_each_number_is(
        cli, tmp_path: Path) -> None:
    spec, out = tmp_path / "reading.yaml", tmp_path / "out"
    spec.write_text(SPEC)
    status, stdout, err = cli("ablate", spec, "--out", out, "--workers", "1")
    assert status == 0, err
    report = (out / "report.md").read_text()
    confirm = [line for line in stdout.splitlines() if line.startswith(("  ✓", "  ✗", "  ?", "  ↑",
                                                                         "  ↓", "  ≈"))]
    assert len(confirm) == 2, stdout
    assert all("(CI at 1 − α, not Holm-adjusted)" in line for line in confirm)
    assert all(("≤ α" in line) != ("> α" in line) for line in confirm)
    assert any("failure rate: model.norm=none, optim.lr=3.0 higher than" in line for line in confirm)
    assert "✓ failed" not in stdout and "✓ failure rate" not in stdout.replace("  ✓ failure", "")
    # the arms' p names its test; arm lines are not ticked beside their failures
    assert "(paired test)" in stdout or "(two-part test)" in stdout
    assert "• model.norm=none, optim.lr=3.0:" in stdout
    # report text: the family's size in words, the rule of the metrics expected, seed numbers
    assert "The family is these 2 comparisons" in report
    assert "equivalent within" not in report.split("## Looks")[0]  # no expectation on test_acc
    assert "seeds 0–2 (3 per arm)" in report
    assert "not Holm-adjusted: the Holm p decides" in report
    assert "plan allows" not in report  # one look, as planned: the column would repeat α
    # a censored metric that no seed reached says so, not "(every seed equal)"
    mechanisms = report[report.index("## Mechanisms"):]
    assert "never reached (every seed; > 2 epochs)" in mechanisms
    assert "every seed equal" not in mechanisms.split("\n\n")[1].split("epochs_to_target")[0]
    # the forest: one panel per metric; the mechanisms: one per metric, none empty, said so
    assert _panels(out / "forest.png") == 2
    assert _panels(out / "mechanisms.png") == 2
    # the learning curves keep an arm whose every seed failed (dashed, in the legend)
    with Image.open(out / "curves.png") as img:
        assert img.size[0] > 800
