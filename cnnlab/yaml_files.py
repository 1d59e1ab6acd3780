"""YAML as cnnlab reads it: bounded files through OmegaConf's loader (its number rules, each
key once, alias expansion capped), and sections' shapes checked against a schema before a
merge."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import UnsupportedValueType

from cnnlab.errors import CnnlabError

MAX_BYTES = 1 << 20  # a config or spec file; the shipped ones are about 2 KB
MAX_VALUES = 10_000  # OmegaConf's cap on the nodes a file's aliases expand to ("billion laughs")


def _parse(text: str) -> Any:
    """The file's data as OmegaConf reads it: its loader (``1e-3`` a float, each key once,
    alias expansion capped), then plain dicts and lists. A scalar file is returned as is,
    for the caller to refuse by its type."""
    try:
        return OmegaConf.to_container(OmegaConf.create(text))
    except (AssertionError, UnsupportedValueType):  # not a mapping or list: a scalar at the top
        return yaml.safe_load(text)


def load_yaml(path: Path, what: str) -> Any:
    """A YAML file's data, bounded (size, expansion, depth); unreadable, special, oversized,
    binary or invalid files are one ``CnnlabError``."""
    try:
        if not path.is_file():  # /dev/zero, a FIFO, a folder: never read
            raise CnnlabError(f"{what} {path}: is not a regular file; allowed: a YAML file"
                              if path.exists() else f"{what} {path}: cannot read (No such file "
                              "or directory); allowed: a YAML file")
        if path.stat().st_size > MAX_BYTES:
            raise CnnlabError(f"{what} {path}: is {path.stat().st_size:,} bytes; allowed: a YAML "
                              f"file of at most {MAX_BYTES:,} bytes")
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise CnnlabError(f"{what} {path}: cannot read ({err.strerror}); allowed: a YAML file") from None
    except UnicodeDecodeError:
        raise CnnlabError(f"{what} {path}: is not UTF-8 text; allowed: a YAML file") from None
    try:
        data = _parse(text)
    except RecursionError:
        raise CnnlabError(f"{what} {path}: nested too deeply; allowed: a config mapping a few "
                          "levels deep") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = str(getattr(err, "problem", None) or "")
        if "nesting depth" in problem:
            raise CnnlabError(f"{what} {path}: nested too deeply; allowed: a config mapping a "
                              "few levels deep") from None
        if "expansion exceeds" in problem:
            raise CnnlabError(f"{what} {path}: expands to more than {MAX_VALUES:,} values (YAML "
                              "aliases?); allowed: a plain config mapping") from None
        found = re.match(r"found duplicate key (.*)", problem)
        detail = f" (duplicate key {found.group(1)!r})" if found else ""
        raise CnnlabError(f"{what} {path}: invalid YAML{where}{detail}; allowed: a YAML mapping "
                          "with each key once") from None
    return data


def check_shape(layer: dict[Any, Any], schema: DictConfig, prefix: str) -> None:
    """A YAML mapping against an OmegaConf ``schema``: sections must be mappings and list keys
    lists; say so before OmegaConf's merge would (unknown keys are left to the merge)."""
    for key, value in layer.items():
        full = f"{prefix}{key}"
        if not isinstance(key, str) or key not in schema.keys():
            continue  # merge names unknown keys with the allowed ones
        node = schema._get_node(key)
        if isinstance(node, DictConfig):
            if not isinstance(value, dict):
                raise CnnlabError(f"{full}: got {value!r}; allowed: a mapping with keys "
                                  f"{', '.join(map(str, node.keys()))}")
            check_shape(value, node, f"{full}.")
        elif isinstance(node, ListConfig) and not isinstance(value, list):
            hint = f" (write [{value}] for a list)" if isinstance(value, str) and "," in value else ""
            raise CnnlabError(f"{full}: got {value!r}{hint}; allowed: a list, e.g. "
                              f"{full}=[16,32]")
