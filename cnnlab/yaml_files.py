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


def load_yaml(path: Path, what: str) -> Any:
    """A YAML file's data; unreadable, binary or invalid files are one ``CnnlabError``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise CnnlabError(f"{what} {path}: cannot read ({err.strerror}); allowed: a YAML file") from None
    except UnicodeDecodeError:
        raise CnnlabError(f"{what} {path}: is not UTF-8 text; allowed: a YAML file") from None
    try:
        return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None)
        detail = f" ({problem})" if problem and "duplicate" in problem else ""
        raise CnnlabError(f"{what} {path}: invalid YAML{where}{detail}; allowed: a YAML mapping "
                          "with each key once") from None


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
