"""An offline W&B run file (``run-<id>.wandb``) read back into its protobuf records: what the
run holds locally, so ``cnnlab sync`` can check that the server has all of it.

The file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of
chunks, each with a 7-byte header (crc32, length, type: full / first / middle / last). W&B's
Go core writes it; its Python package no longer ships a reader.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Any]:
    """Every whole record of the run file (a torn last chunk, from a killed run, is left out)."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # block trailer too small for a chunk header
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos: pos + HEADER])
        chunk = data[pos + HEADER: pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()  # type: ignore[attr-defined]  # generated protobuf
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def logged_artifacts(path: Path) -> dict[str, tuple[str, int]]:
    """The artifacts the run logged: digest → (name, number of files)."""
    return {r.artifact.digest: (r.artifact.name, len(r.artifact.manifest.contents))
            for r in read_records(path) if r.WhichOneof("record_type") == "artifact"}
