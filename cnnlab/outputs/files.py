"""What cnnlab does to the folders and files users name (``--out``, ``--storage``): runs built in
a staging folder beside ``--out`` and renamed into place at the end, so an interrupted or failed
run never touches a finished one; study folders claimed once; single output files replaced only
when cnnlab wrote them. Every deletion goes through ``ownership``'s proof.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from cnnlab.errors import Refused
from cnnlab.outputs.ownership import (
    APPEND_ONLY,
    MANIFEST,
    PENDING,
    Manifest,
    digest,
    files_under,
    foreign_files,
    is_ours,
    owner_alive,
    owner_id,
    remove_owned,
    umask,
    write_atomic,
)
from cnnlab.process import uninterrupted

NAME_MAX, PATH_MAX = 255, 4096  # bytes: Linux's longest file name and path
NAME_ROOM, PATH_ROOM = 32, 512  # what cnnlab adds: .NAME.cnnlab-partial.new-XXXXXXXX, trials/…


def refuse_special(out: Path, option: str = "--out") -> None:
    """``/``, the home directory and files are never an output folder, nor a name too long
    for what cnnlab puts beside and inside it (found before any work, not after the fit)."""
    name, whole = len(os.fsencode(out.name)), len(os.fsencode(out.absolute()))
    if name + NAME_ROOM > NAME_MAX or whole + PATH_ROOM > PATH_MAX:
        raise Refused(f"{option} {str(out)[:80]}{'…' if len(str(out)) > 80 else ''}: too long "
                      f"({name} bytes in its name, {whole} in its path); allowed: at most "
                      f"{NAME_MAX - NAME_ROOM} bytes in the name and {PATH_MAX - PATH_ROOM} in "
                      "the path (cnnlab adds its own names beside and inside it)")
    resolved = out.expanduser().resolve()
    special = {Path(resolved.anchor): "the root", Path.home().resolve(): "your home"}
    if resolved in special:
        raise Refused(f"{option} {out}: is {special[resolved]} directory; allowed: a new "
                      "folder, e.g. runs/NAME")
    if out.exists() and not out.is_dir():
        raise Refused(f"{option} {out}: is a file; allowed: a directory")


def _listing(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def refuse_link(out: Path, option: str = "--out") -> None:
    """cnnlab owns a folder only as itself: a link to a run (``runs/latest``) is refused, so an
    overwrite can never empty the link's target."""
    if out.is_symlink():
        raise Refused(f"{option} {out}: is a symbolic link (to {os.readlink(out)}); allowed: "
                      "a real folder (give the link's target if you mean it)")


def refuse_links(folder: Path, path: Path) -> None:
    """``path`` and each folder between it and ``folder`` (one cnnlab owns) are real: a link
    there would take cnnlab's writes, and its deletions, somewhere else."""
    current = folder
    for part in path.relative_to(folder).parts:
        current = current / part
        if current.is_symlink():
            raise Refused(f"{current}: is a symbolic link (to {os.readlink(current)}) inside "
                          "a folder cnnlab owns; allowed: a real file or folder (move the "
                          "link away)")


def check_run_out(out: Path, overwrite: bool) -> None:
    """``out`` may receive a run: new, empty, or (with ``overwrite``) an unchanged cnnlab run."""
    refuse_special(out)
    refuse_link(out)
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:  # `--out .`: its staging went inside
        raise Refused(f"--out {out}: is the current directory or one above it; allowed: a new "
                      "folder, e.g. runs/NAME (a run is put in place of its folder at the end, "
                      "which would leave your shell in a deleted one)")
    if not out.exists() or not any(out.iterdir()):
        return
    manifest = Manifest.read(out)
    if manifest is None or manifest.kind != "run":
        raise Refused(f"--out {out}: holds files cnnlab did not write "
                      f"({_listing(sorted(files_under(out))) or MANIFEST}); allowed: a new or empty "
                      "directory, or the folder of an earlier cnnlab fit")
    if not overwrite:
        raise Refused(f"--out {out}: already holds a finished run; allowed: a new directory, "
                      "or --overwrite")
    foreign = foreign_files(out, manifest)
    if foreign:
        raise Refused(f"--out {out}: --overwrite would lose files cnnlab did not write or that "
                      f"changed since ({_listing(foreign)}); allowed: move them out first")


def staging_path(out: Path) -> Path:
    """Where a run into ``out`` is built (the same for every process of a distributed run)."""
    return out.parent / f".{out.name}.cnnlab-partial"


def begin_run(out: Path, overwrite: bool, takeover: bool = False) -> Path:
    """Check ``out``, clear a dead process's leftover staging folder, and create a fresh one.

    ``takeover``: the caller holds this run exclusively (a study trial the storage gave to this
    worker), so a staging folder of any other process, on any host, is a lost attempt: cleared.
    """
    _restore(out)
    check_run_out(out, overwrite)
    staging = staging_path(out)
    if staging.is_dir() and not staging.is_symlink() and not any(staging.iterdir()):
        staging.rmdir()  # empty: an older cnnlab killed between making it and its manifest
    if staging.exists() or staging.is_symlink():
        manifest = Manifest.read(staging) if staging.is_dir() and not staging.is_symlink() else None
        if manifest is None or manifest.kind != "partial":
            raise Refused(f"--out {out}: {staging} exists and cnnlab did not make it; allowed: "
                          "move it away")
        if not takeover and owner_alive(manifest.owner) and manifest.owner != owner_id():
            raise Refused(f"--out {out}: another cnnlab process ({manifest.owner}) is writing "
                          "this run; allowed: wait for it, or another --out")
        _remove_partial(staging)
    _make_staging(staging)
    return staging


NEW = ".new-"  # a staging folder being made: <staging>.new-XXXX, renamed once its manifest is in


def _make_staging(staging: Path) -> None:
    """The staging folder appears on disk with its manifest already in it (made under a
    temporary name, then renamed), so a kill at any instant leaves nothing a rerun cannot prove
    is cnnlab's; what an earlier kill left half-made is cleared first."""
    staging.parent.mkdir(parents=True, exist_ok=True)
    for left in staging.parent.glob(f"{glob.escape(staging.name)}{NEW}*"):
        _clear_half_made(left)
    made = Path(tempfile.mkdtemp(dir=staging.parent, prefix=f"{staging.name}{NEW}"))
    os.chmod(made, 0o777 & ~umask())  # mkdtemp's 0700 would hide the run from colleagues
    Manifest("partial", owner_id()).write(made)
    os.rename(made, staging)


def _clear_half_made(left: Path) -> None:
    """A staging folder a kill left before its rename, removed when it is a real folder holding
    nothing but its manifest (or the manifest's temporary file) and its maker is gone: each of
    those files is unlinked by name, then the folder removed only if that emptied it."""
    if left.is_symlink() or not left.is_dir():
        return
    entries = list(left.iterdir())
    if not all(not p.is_dir() and (p.name == MANIFEST or (p.name.startswith(f".{MANIFEST}.")
                                                          and p.name.endswith(".tmp")))
               for p in entries):
        return
    owner = (Manifest.read(left) or Manifest("partial")).owner
    if owner != owner_id() and owner_alive(owner):
        return
    for entry in entries:
        entry.unlink()
    left.rmdir()


def _remove_partial(staging: Path) -> None:
    """A staging folder holds only what a cnnlab run wrote into it: every file is cnnlab's. A
    file written while it is cleared (a W&B service finishing its logs) keeps the folder, and
    its manifest with it, so the rerun still knows the folder as cnnlab's and clears it."""
    manifest = Manifest("partial", files={rel: digest(staging / rel) for rel in files_under(staging)})
    left = remove_owned(staging, manifest)
    if left:  # a file appeared while we looked: keep it and say so
        Manifest("partial", owner_id()).write(staging)
        raise Refused(f"{staging}: could not be cleared ({_listing(left)}); allowed: rerun "
                      "(it is cleared then), or move it away")


def abort_run(staging: Path) -> None:
    """Remove the staging folder of a run that failed (the old run, if any, is untouched)."""
    manifest = Manifest.read(staging)
    if manifest is not None and manifest.kind == "partial":
        _remove_partial(staging)
    elif manifest is not None:  # a committed run's (ours, or one an overwrite displaced)
        remove_owned(staging, manifest)


RENAME_EXCHANGE, AT_FDCWD = 2, -100  # Linux renameat2: swap two names in one step


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically: at every instant each name holds one of them. False where
    the system cannot (not Linux, an old libc, a file system without the flag)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def aside_path(out: Path) -> Path:
    """Where the two-rename fallback puts the old run of ``out`` for a moment."""
    return out.parent / f".{out.name}.cnnlab-old"


def _aside(out: Path) -> Path:
    """``aside_path``, free (``_restore`` cleared what cnnlab left there; anything else is the
    user's)."""
    aside = aside_path(out)
    if aside.is_symlink() or (aside.exists() and (not aside.is_dir() or any(aside.iterdir()))):
        raise Refused(f"--out {out}: {aside} exists and cnnlab did not make it; allowed: "
                      "move it away")
    return aside


def _swap(staging: Path, out: Path) -> Path:
    """Put the run in ``staging`` at ``out``; returns where the old run went. Where the system
    cannot swap in one step, two renames, the first undone if the second fails (a SIGKILL
    between them is repaired by the next run into ``out``: ``_restore``)."""
    if _exchange(staging, out):
        return staging
    aside = _aside(out)
    os.rename(out, aside)
    try:
        os.rename(staging, out)
    except OSError:  # the second rename failed: the old run goes back at once
        os.rename(aside, out)
        raise
    return aside


def _restore(out: Path) -> None:
    """Repair what an interrupted replacement of ``out`` left. The old run aside: back under
    its name when a kill landed between the two renames, else (the new run is in place)
    removed as its manifest lists it. A committed run in the staging folder (never swapped in,
    or the old one swapped out): removed as its manifest lists it. Files of the user's stay."""
    aside = aside_path(out)
    old = Manifest.read(aside) if aside.is_dir() and not aside.is_symlink() else None
    if old is not None and old.kind == "run" and not out.exists() and not out.is_symlink():
        os.rename(aside, out)
    elif old is not None:
        _remove_left(out, aside, old)
    elif aside.is_dir() and not aside.is_symlink():
        with contextlib.suppress(OSError):  # emptied by the user after that line: holds nothing
            aside.rmdir()
    staging = staging_path(out)
    left = Manifest.read(staging) if staging.is_dir() and not staging.is_symlink() else None
    if left is not None and left.kind == "run" and (left.owner == owner_id()
                                                    or not owner_alive(left.owner)):
        _remove_left(out, staging, left)


def _remove_left(out: Path, folder: Path, manifest: Manifest) -> None:
    """Remove what ``manifest`` lists in ``folder``, a leftover beside ``out``; refuse (and
    keep) what else is there."""
    if remove_owned(folder, manifest):
        raise Refused(f"--out {out}: {folder} holds files cnnlab did not write; allowed: "
                      "move it away")


def commit_run(staging: Path, out: Path) -> None:
    """Record every file of the finished run and put it in place of ``out`` (an empty folder or an
    unchanged earlier run, whose files are then deleted): ``out`` holds the old run or the new
    one at every instant, and no signal stops the command half way."""
    files = {rel: APPEND_ONLY if rel.endswith(".log") else digest(staging / rel)
             for rel in files_under(staging)}  # W&B's logs may still grow after its run finished
    Manifest("run", owner_id(), files).write(staging)
    if out.exists() or out.is_symlink():  # again: the user may have changed it meanwhile
        check_run_out(out, overwrite=True)  # (made it a file or a link, added files)
    if not (out.exists() and any(out.iterdir())):
        os.rename(staging, out)  # replaces an empty folder
        return
    old = Manifest.read(out)
    assert old is not None  # check_run_out proved it
    with uninterrupted():
        remove_owned(_swap(staging, out), old)


REPORTS = Path("reports")  # where a study reports unless told otherwise
JOURNAL = "study.journal"  # a study's default storage, in its folder


def study_folder(name: str, out: str | Path | None = None) -> Path:
    """A study's folder: ``out``, else ``reports/<name>``."""
    return Path(out) if out is not None else REPORTS / name


def held_storage(out: Path, manifest: Manifest) -> str:
    """The storage whose study the study folder ``out`` reports: its manifest's (a journal
    inside the folder is recorded by its name, so a copied or moved folder keeps its own), or
    (a folder of cnnlab ≤ 0.6, which recorded none) its own journal's, if it lists one."""
    journals = [rel for rel in manifest.files if rel.endswith(".journal")]
    return _located(out, manifest.storage or (journals[0] if journals else ""))


def recorded_storage(out: Path) -> str:
    """The storage the study folder ``out`` records ('' where it records none), to read its
    study from without ``--storage``; a database URL recorded without its password is
    refused, naming it."""
    manifest = Manifest.read(out) if out.is_dir() and not out.is_symlink() else None
    held = held_storage(out, manifest) if manifest is not None and manifest.kind == "study" else ""
    if ":***@" in held:
        raise Refused(f"--out {out}: reports the study in {held}, recorded without its password; "
                      "allowed: --storage with that URL and its password")
    return held


def _located(out: Path, storage: str) -> str:
    """A storage id with a journal named inside ``out`` made absolute."""
    inside = storage and "://" not in storage and not Path(storage).is_absolute()
    return str((out / storage).absolute()) if inside else storage


def check_study_folder(out: Path, storage: str = "") -> bool:
    """``out`` may hold a study's report: new, empty, or made by cnnlab for a study of
    ``storage`` (a ``storage_id``; empty: any); returns whether cnnlab made it already. A
    folder reports one storage's study: two storages' trials in one ``trials/`` replaced each
    other's folders, and their reports and W&B summary runs one another."""
    refuse_special(out)
    refuse_link(out)
    manifest = Manifest.read(out) if out.is_dir() else None
    if manifest is not None and manifest.kind == "study":
        changed = [rel for rel in manifest.files if (out / rel).exists()
                   and not is_ours(out, manifest, rel)]
        if changed:  # say so now, not after the trials ran
            raise Refused(f"--out {out}: {_listing(sorted(changed))} changed since cnnlab wrote "
                          "it; allowed: move it away (cnnlab rewrites it), or another --out")
        held, storage = held_storage(out, manifest), _located(out, storage)
        if storage and held and held != storage:
            raise Refused(f"--out {out}: reports the study of another storage ({held}); "
                          f"allowed: another --out for this storage ({storage}), or that "
                          "storage's --storage")
        return True
    if out.exists() and any(out.iterdir()):
        raise Refused(f"--out {out}: holds files cnnlab did not write "
                      f"({_listing(sorted(files_under(out))) or MANIFEST}); allowed: a new or empty "
                      "directory, or the report folder of an earlier study")
    return False


def claim_study_folder(out: Path, storage: str = "") -> None:
    """Make ``out`` the study folder of ``storage`` (empty: of whichever storage claims it
    first; checked by ``check_study_folder``)."""
    if not check_study_folder(out, storage):
        out.mkdir(parents=True, exist_ok=True)
        Manifest("study", storage=storage).write(out)
        return
    with _locked(out):
        manifest = Manifest.read(out)
        if manifest is not None and storage and not manifest.storage:  # cnnlab ≤ 0.6
            manifest.storage = storage
            manifest.write(out)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Exclusive use of ``folder``'s manifest: ``flock`` on the folder itself (``filelock``
    needs a lock file, one more file cnnlab would leave in the user's folder)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_owned(folder: Path, rel: str, data: str | bytes | None) -> None:
    """Write ``folder/rel`` (``None``: mark an append-only file as cnnlab's) and list it in the
    folder's manifest; refuse to replace a file cnnlab did not write or that changed since."""
    path = folder / rel
    refuse_links(folder, path)
    with _locked(folder):
        manifest = Manifest.read(folder)
        if manifest is None:
            raise Refused(f"{folder}: not a folder cnnlab made; allowed: a new --out")
        if (path.exists() or path.is_symlink()) and not is_ours(folder, manifest, rel):
            raise Refused(f"{path}: cnnlab did not write this file (or it changed since); "
                          "allowed: move it away, or another --out")
        if data is None:
            manifest.files[rel] = APPEND_ONLY
        else:  # listed before it lands: a kill between the two leaves either content ours
            new = hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()
            old = manifest.files.get(rel)
            manifest.files[rel] = new if old in (None, APPEND_ONLY, new) else f"{old}{PENDING}{new}"
            manifest.write(folder)
            write_atomic(path, data)
            manifest.files[rel] = new
        manifest.write(folder)


def check_output(path: Path, ours: Callable[[Path], bool] | None, option: str = "--out") -> None:
    """One named output file may be written: new, or replacing a file ``ours`` proves cnnlab
    wrote as this kind of output (a PNG's text chunk, an export's format mark), never a link.
    Inside a cnnlab folder the same holds: ``predict --out RUN/metrics.json`` does not replace
    the run's metrics. ``ours`` None: this output never replaces a file."""
    refuse_special(path.parent, option)
    if path.is_dir():
        raise Refused(f"{option} {path}: is a directory; allowed: a file name")
    if ours is None and (path.exists() or path.is_symlink()):
        raise Refused(f"{option} {path}: exists, and this output never replaces a file; "
                      "allowed: a new file name, or move it away")
    if path.is_symlink() or (path.exists() and ours is not None and not ours(path)):
        raise Refused(f"{option} {path}: exists and cnnlab did not write it as this kind "
                      "of output; allowed: a new file name, or move it away")


def write_output(path: Path, data: bytes, ours: Callable[[Path], bool] | None,
                 option: str = "--out") -> None:
    """Write one named output file (checked by ``check_output``); in a cnnlab folder it joins the
    folder's manifest, so that folder's owner checks still pass."""
    check_output(path, ours, option)
    if Manifest.read(path.parent) is not None:
        write_owned(path.parent, path.name, data)
    else:
        write_atomic(path, data)
