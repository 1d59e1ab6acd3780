"""The proof that cnnlab wrote a file.

Every folder cnnlab makes (a run, a study's report folder) holds a manifest, ``.cnnlab.json``,
naming its kind and the SHA-256 of each file cnnlab put there. cnnlab deletes or replaces a file
only when the manifest lists it with the hash it still has; anything else in the folder is the
user's and stays. Files get the user's umask (not ``mkstemp``'s 0600), so colleagues on a shared
machine can read results.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnnlab.process import pid_alive

MANIFEST = ".cnnlab.json"
KINDS = ("run", "study", "partial")  # partial: a run still being built by ``owner``
APPEND_ONLY = "append-only"  # a file cnnlab appends to (a study journal): listed without a hash
APPENDED = (".log", ".journal")  # the only files cnnlab appends to: W&B logs, study journals


def umask() -> int:
    """The process's umask, read where Linux shows it (setting one to learn the old would
    change it for every thread meanwhile); elsewhere set and set back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temporary(path: Path) -> re.Pattern[str]:
    """The names of ``write_atomic``'s temporary files for ``path``: .NAME.HOST:PID.XXXX.tmp."""
    return re.compile(rf"\.{re.escape(path.name)}\.(?P<owner>[^/]*:\d+)\.[A-Za-z0-9_]+\.tmp")


def _clear_temporaries(path: Path) -> None:
    """Remove what a killed process's ``write_atomic`` left beside ``path`` (an 8 MB export
    stayed for good): its name carries the writer, and a writer of this host that is gone no
    longer needs it."""
    pattern = _temporary(path)
    with contextlib.suppress(OSError):
        for left in path.parent.iterdir():
            match = pattern.fullmatch(left.name)
            if match and not left.is_symlink() and left.is_file() and not owner_alive(
                    match["owner"]):
                left.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` (named after this process) and rename
    it into place; temporary files of dead writers of ``path`` are removed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{owner_id()}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def owner_id() -> str:
    """host:pid of this process, recorded on what it is building (folders, trials)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str | None) -> bool:
    """False for an owner of this host whose process is gone; other hosts count as alive."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    return host != socket.gethostname() or not pid.isdigit() or pid_alive(int(pid))


@dataclass
class Manifest:
    """What cnnlab wrote in one folder: relative path → SHA-256 (or ``APPEND_ONLY``)."""

    kind: str
    owner: str = ""
    files: dict[str, str] = field(default_factory=dict)
    storage: str = ""  # a study folder: the one storage whose study it reports (``storage_id``)

    @classmethod
    def read(cls, folder: Path) -> Manifest | None:
        """The folder's manifest, or None when cnnlab did not make the folder.

        A manifest is data on disk, so it may be forged: it counts only for a real folder (not
        one reached through a link), when every file it lists lies inside that folder without
        a link on the way, and lists as append-only nothing but logs and journals."""
        path = folder / MANIFEST
        if folder.is_symlink() or path.is_symlink() or (
                path.exists() and not path.is_file()):  # a FIFO would wait for good
            return None
        try:
            raw = json.loads((folder / MANIFEST).read_text())
            manifest = cls(raw["kind"], raw.get("owner", ""), dict(raw.get("files", {})),
                           str(raw.get("storage", "")))
            files_ok = all(isinstance(rel, str) and isinstance(digest, str)
                           and _contained(folder, rel)
                           and (digest != APPEND_ONLY or rel.endswith(APPENDED))
                           for rel, digest in manifest.files.items())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return manifest if manifest.kind in KINDS and files_ok else None

    def write(self, folder: Path) -> None:
        write_atomic(folder / MANIFEST, json.dumps(asdict(self), indent=1, sort_keys=True) + "\n")


PENDING = "|"  # separates a file's old and new digest while cnnlab replaces it


def _contained(folder: Path, rel: str) -> bool:
    """``rel`` is a relative path inside ``folder`` whose folders on the way are real folders:
    no absolute path, no '..', no symbolic link to follow out of it."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        return False
    here = folder
    for part in parts[:-1]:
        here = here / part
        if here.is_symlink():
            return False
    return True


def digest(path: Path) -> str:
    """A file's SHA-256 (a link: its target, never followed)."""
    if path.is_symlink():
        return "symlink:" + os.readlink(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def files_under(folder: Path) -> Iterator[str]:
    """Every file (and symlink) under ``folder`` but the manifest, as a relative path."""
    for root, dirs, names in os.walk(folder):
        base = Path(root).relative_to(folder)
        for name in names + [d for d in dirs if (Path(root) / d).is_symlink()]:
            rel = (base / name).as_posix()
            if rel != MANIFEST:
                yield rel


def is_ours(folder: Path, manifest: Manifest, rel: str) -> bool:
    """Listed, and unchanged since (``old|new``: a write was under way, either content is ours)."""
    listed = manifest.files.get(rel)
    return listed is not None and (listed == APPEND_ONLY
                                   or digest(folder / rel) in listed.split(PENDING))


def foreign_files(folder: Path, manifest: Manifest) -> list[str]:
    """Files under ``folder`` that the manifest does not list, or that changed since."""
    return sorted(rel for rel in files_under(folder) if not is_ours(folder, manifest, rel))


def remove_owned(folder: Path, manifest: Manifest) -> list[str]:
    """Delete the files cnnlab wrote (unchanged since), then the folders left empty; returns what
    stays (the user's files)."""
    for rel in manifest.files:
        path = folder / rel
        if (path.exists() or path.is_symlink()) and is_ours(folder, manifest, rel):
            path.unlink()
    (folder / MANIFEST).unlink(missing_ok=True)
    for root, _, _ in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
        with contextlib.suppress(OSError):  # not empty: the user's files are in it
            os.rmdir(root)
    return sorted(files_under(folder)) if folder.exists() else []
