"""What ablation and search specs share: reading a spec file, names safe on disk, values as
overrides, and the one-process rule for a study's trials."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import yaml

from cnnlab.config import ExperimentConfig
from cnnlab.errors import CnnlabError
from cnnlab.yaml_files import load_yaml


def read_spec(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """A spec file's top-level mapping; unreadable files, bad YAML and unknown keys are errors."""
    raw = load_yaml(path, "spec")
    if not isinstance(raw, dict):
        raise CnnlabError(f"spec {path}: top level is {type(raw).__name__}; allowed: a mapping "
                          f"with keys {', '.join(keys)}")
    unknown = sorted(set(map(str, raw)) - set(keys))
    if unknown:
        raise CnnlabError(f"spec {path}: unknown key {unknown[0]!r}; allowed: {', '.join(keys)}")
    return raw


MAX_NAME = 80  # characters of a name on disk (file systems stop at 255 bytes)


def safe_name(text: str) -> str:
    """A file-system-safe version of a study, arm or run name (no separators, no '..'). A name
    that is too long, or that loses letters outside ASCII, ends in a hash of the original:
    two such names never share a folder (all-Greek names all became ``_``)."""
    name = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).replace("..", "_").strip("._") or "_"
    if len(name) > MAX_NAME or not text.isascii():
        name = f"{name[:MAX_NAME - 9]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return name


def yaml_scalar(value: Any) -> str:
    """A value as it reads in a key=value override."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def study_name(name: str, quick: bool) -> str:
    """A spec's study: its name, ``-quick`` for the quick preset (its own study)."""
    return f"{name}-quick" if quick else name


def one_process(cfg: ExperimentConfig) -> None:
    """A study's trial is one process; parallelism comes from workers, not from DDP per trial."""
    for key, value in (("trainer.devices", cfg.trainer.devices),
                       ("trainer.num_nodes", cfg.trainer.num_nodes)):
        if value != 1:
            raise CnnlabError(f"{key}: got {value}; allowed: 1 in a study (run several trials at "
                              "once with --workers, or with workers on more machines sharing one "
                              "PostgreSQL --storage)")
