"""What cnnlab ships beside its code: the default config, the presets and the specs.

They are package data (``cnnlab.configs``, ``cnnlab.experiments``: in a checkout, the top-level
``configs/`` and ``experiments/`` folders), read with importlib.resources so that an installed
wheel finds them from any folder. A user names a shipped one by its name (``cnnlab ablate norm``,
``--config cifar10_fast``); a path to a file of the same name wins, as a user's own file should.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from cnnlab.errors import CnnlabError, did_you_mean


def _folder(package: str) -> Path:
    folder = files(package)
    if not isinstance(folder, Path):  # a zipped install: cnnlab reads its specs as files
        raise CnnlabError(f"{package}: installed inside an archive; allowed: an unpacked install "
                          "(pip install)")
    return folder


DEFAULT_CONFIG = _folder("cnnlab.configs") / "default.yaml"


def _shipped(package: str, sub: str = "") -> dict[str, Path]:
    folder = _folder(package) / sub
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def presets() -> dict[str, Path]:
    """The shipped config presets by name (``cifar10_fast``)."""
    return _shipped("cnnlab.configs", "presets")


def specs() -> dict[str, Path]:
    """The shipped ablation specs and the search spec, by name (``norm``, ``search``)."""
    return _shipped("cnnlab.experiments")


def pilots() -> dict[str, Path]:
    """The shipped pilots by study name (``norm-pilot-quick``): the results.csv of each spec's
    pilot, from which ``cnnlab plan`` recomputes the figures the spec quotes."""
    folder = _folder("cnnlab.experiments") / "pilots"
    return {p.stem: p for p in sorted(folder.glob("*.csv"))}


def ablation_names() -> list[str]:
    """The shipped ablation specs (``make ablation`` runs them all)."""
    return [name for name in specs() if name != "search"]


def _resolve(arg: str | Path, table: dict[str, Path], what: str) -> Path:
    path = Path(arg)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path  # a path: its own errors (missing, not a file) come from the reader
    if str(arg) in table:
        return table[str(arg)]
    raise CnnlabError(f"{what} {arg!r}: no such file, nor a shipped one of that name; allowed: a "
                      f"YAML file or one of {', '.join(table)}{did_you_mean(str(arg), table)}")


def spec_path(arg: str | Path) -> Path:
    """A spec file: ``arg`` as a path, else the shipped spec named ``arg``."""
    return _resolve(arg, specs(), "spec")


def config_path(arg: str | Path) -> Path:
    """A ``--config`` file: ``arg`` as a path, else the shipped preset named ``arg``."""
    return _resolve(arg, presets(), "--config")
