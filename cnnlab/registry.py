"""String → constructor tables with errors that list the allowed names."""

from collections.abc import Mapping
from typing import TypeVar

from cnnlab.errors import CnnlabError

T = TypeVar("T")


def lookup(table: Mapping[str, T], key: str, name: str) -> T:
    """Return ``table[name]``; an unknown name raises an error naming ``key`` and the choices."""
    try:
        return table[name]
    except KeyError:
        raise CnnlabError(
            f"{key}: unknown value {name!r}; allowed: {', '.join(table)}"
        ) from None
