"""An offline W&B run file's records (``cnnlab.tracking.records``) as the tests read them: once
written whole, and as config, summary and history."""

import json
import time
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

from cnnlab.tracking.records import read_records


def _items(update: Any) -> dict[str, Any]:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in update}


def finished_records(path: Path, timeout: float = 60.0) -> list[pb.Record]:
    """The file's records once W&B's service has written the run's exit record.

    ``wandb.finish()`` returns before the service flushes its buffered writer; a process that
    exits tears the service down (and so flushes), but an in-process test keeps it alive.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout:.0f} s"
        time.sleep(0.2)


def run_contents(path: Path) -> dict[str, Any]:
    """The run's config, summary (last value per key), history rows and run record fields."""
    out: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "run": None}
    for record in finished_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            out["config"].update(_items(record.run.config.update))
        elif kind == "config":
            out["config"].update(_items(record.config.update))
        elif kind == "summary":
            out["summary"].update(_items(record.summary.update))
        elif kind == "history":
            out["history"].append(_items(record.history.item))
    return out
