"""The one error type for bad user input: the CLI prints its message and exits with status 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CnnlabError(Exception):
    """Bad input (config, file, data, URL): the message names what is wrong and what is allowed."""


class Refused(CnnlabError):
    """What no retry mends until the user acts (a file or link of theirs where cnnlab would
    write, data replaced under a study): a study stops on it rather than failing trial after
    trial or mixing the results."""


def did_you_mean(word: str, allowed: Iterable[str]) -> str:
    """`` (did you mean X?)`` for a near miss of one of ``allowed`` (a typo), else ``""``."""
    near = difflib.get_close_matches(word, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean {near[0]}?)" if near else ""


def count(where: str, value: object, least: int, most: int, why: str = "") -> int:
    """``value`` as an integer in [``least``, ``most``], else one line naming ``where``; every
    count a user gives has a ceiling (``why``: what it guards), so nothing starts that could
    not finish (a million seeds queued for minutes before the first trial)."""
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        reason = f" ({why})" if why else ""
        raise CnnlabError(f"{where}: got {value!r}; allowed: an integer from {least:,} to "
                          f"{most:,}{reason}")
    return value
