"""The ``cnnlab`` command: parse, run one command, and turn what stops it into one line and an
exit status (1: a study left incomplete, its trials named; 2: bad input or a full disk; 75:
the study's database stopped answering; 129/130/143: a closed terminal, Ctrl-C or SIGTERM;
all but 2 resumable by the same command)."""

from __future__ import annotations

import argparse
import gc
import io
import signal
import sys
from collections.abc import Callable, Sequence

from cnnlab.cli.commands import OVERRIDE
from cnnlab.cli.parser import build_parser
from cnnlab.errors import CnnlabError
from cnnlab.process import (
    STOPPED,
    STORAGE_ERRORS,
    TEMPFAIL,
    configure,
    outage,
    outage_line,
    stop_on_signals,
)


def _dotted_options(argv: list[str]) -> None:
    """``--trainer.max_epochs 2`` (Lightning CLI / jsonargparse habit): one line on the cnnlab way."""
    for i, arg in enumerate(argv):
        key, sep, value = arg[2:].partition("=")
        if arg.startswith("--") and "." in key:
            if not sep:
                value = argv[i + 1] if i + 1 < len(argv) else "VALUE"
            raise CnnlabError(f"{arg}: cnnlab takes config overrides as key=value; allowed: "
                              f"{key}={value}")


def _parse(argv: list[str]) -> argparse.Namespace:
    """The arguments; key=value overrides may also come after an option."""
    _dotted_options(argv)
    args, extra = build_parser().parse_known_args(argv)
    listed = next((name for name in ("overrides", "specs") if hasattr(args, name)), None)
    if extra and listed and all(OVERRIDE.match(e) for e in extra):
        setattr(args, listed, getattr(args, listed) + extra)
    elif extra:
        raise CnnlabError(f"cnnlab: unrecognized arguments: {' '.join(extra)} (overrides are "
                          "key=value, e.g. trainer.max_epochs=2; see cnnlab --help)")
    return args


LONGEST = 2000  # characters of an error line: a listing of 100,000 classes made one of 689 KB


def _readable(line: str) -> str:
    """An error's one line, cut to ``LONGEST`` characters (keeping its end: what is allowed)."""
    if len(line) <= LONGEST:
        return line
    return f"{line[:LONGEST // 2]} … ({len(line) - LONGEST:,} characters left out) … {line[-LONGEST // 2:]}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: user errors print one line on stderr and return 2; SIGINT, SIGTERM and
    SIGHUP stop the command with one line and 130 / 143 / 129 (128 + the signal), resumable."""
    configure()
    for stream in (sys.stdout, sys.stderr):  # an ASCII terminal gets "?" for "→", not a crash
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="replace")
    try:
        with stop_on_signals():
            args = _parse(list(sys.argv[1:] if argv is None else argv))
            func: Callable[[argparse.Namespace], int | None] = args.func
            status = func(args) or 0
    except (KeyboardInterrupt, SystemExit) as err:
        if isinstance(err, SystemExit) and not STOPPED:
            raise
        signum = STOPPED[0] if STOPPED else signal.SIGINT
        print(f"cnnlab: stopped by {signal.Signals(signum).name}; finished work is kept: rerun "
              "the same command to resume", file=sys.stderr)
        return 128 + signum
    except CnnlabError as err:
        print(f"cnnlab: error: {_readable(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in STORAGE_ERRORS:
            raise
        print(f"cnnlab: error: {err.filename or 'writing'}: {err.strerror}; allowed: "
              f"{STORAGE_ERRORS[err.errno]}, then rerun the same command (finished work is kept)",
              file=sys.stderr)
        return 2
    except Exception as err:
        why = outage(err)
        if why is None:
            raise
        print(outage_line(why), file=sys.stderr)
        return TEMPFAIL
    return status


def console_main() -> None:
    """The ``cnnlab`` command: ``main``, then an exit that does not collect the garbage of
    every module loaded (``gc.freeze``; 1.3 s with torch and Lightning loaded, and nothing in
    it left to write: files are closed, W&B runs finished, atexit handlers still run)."""
    status = main()
    gc.freeze()
    sys.exit(status)
