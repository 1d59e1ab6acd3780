"""YAML as cnnlab reads it: safe, with the number rules OmegaConf uses, each key once, and
its sections' shapes checked against a schema before a merge."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig

from cnnlab.errors import CnnlabError


class _YamlLoader(yaml.SafeLoader):
    """YAML as OmegaConf reads it (``1e-3`` is a float, not a string); duplicate keys refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(k, deep=True) for k, _ in node.value]
        for key in keys:
            if keys.count(key) > 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


MAX_BYTES = 1 << 20  # a config or spec file; the shipped ones are about 2 KB
MAX_VALUES, MAX_DEPTH = 10_000, 50  # as the data expands (an alias repeats what it names)


def _check_bounds(data: Any, what: str, path: Path) -> None:
    """A "billion laughs" file is a few hundred bytes whose aliases expand to billions of
    values: count them as they expand, and stop at the bounds, without recursion."""
    seen, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES or depth > MAX_DEPTH:
            raise CnnlabError(f"{what} {path}: expands to more than {MAX_VALUES:,} values or "
                              f"{MAX_DEPTH} levels (YAML aliases?); allowed: a plain config "
                              "mapping")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in (*node.keys(), *node.values()))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


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
        data = yaml.load(text, Loader=_YamlLoader)  # noqa: S506 (a SafeLoader)
    except RecursionError:
        raise CnnlabError(f"{what} {path}: nested too deeply; allowed: a config mapping at most "
                          f"{MAX_DEPTH} levels deep") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None)
        detail = f" ({problem})" if problem and "duplicate" in problem else ""
        raise CnnlabError(f"{what} {path}: invalid YAML{where}{detail}; allowed: a YAML mapping "
                          "with each key once") from None
    _check_bounds(data, what, path)
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
