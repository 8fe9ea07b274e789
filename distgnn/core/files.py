"""Output folders and files that never destroy what they should not, and never look finished when
they are not.

- Every output folder carries a marker (``.distgnn.json``) naming its kind: ``graph``, ``export``,
  ``run``, ``parts`` or ``tune``. An existing folder is replaced only when it carries the marker of
  the same kind; an empty folder may be used; any other folder is refused, unless ``overwrite`` is
  given for a folder distgnn did not write at all. A distgnn folder of another kind is never
  replaced (``export --output runs/x`` must not delete a run).
- Folders are written under a temporary sibling name, every file and folder is fsynced, and only
  then renamed into place (the parent is fsynced too), so a crash or power loss never leaves a
  complete-looking folder with truncated files. Every failure path removes the temporary folder.
- Single files (:func:`write_bytes_atomic`, :func:`write_json_atomic`) follow the same rule.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distgnn.core.errors import DataError
from distgnn.core.version import VERSION

MARKER = ".distgnn.json"
KINDS = ("graph", "export", "run", "parts", "tune", "log")  # log: the synthetic generator's Parquet log
# Folders written before markers existed are recognised by the file only that kind writes.
# Parts first: a parts folder also holds a meta.json.
_LEGACY_SIGNATURES = {
    "parts": "node_part.npy",
    "graph": "meta.json",
    "export": "manifest.json",
    "run": "environment.json",
}
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def checksums(folder: Path, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file below ``folder`` (relative path -> hex digest); the marker is skipped."""
    return {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip and p.name != MARKER
    }


def check_plain_name(name: str, what: str) -> str:
    """A name used as one path component (a run name): letters, digits, ``._-``, not starting with
    a dot, so that ``../../x`` or ``/etc/x`` can never escape the folder it is joined to."""
    if not _PLAIN_NAME.fullmatch(name) or name in (".", ".."):
        raise DataError(
            f"{what}: expected a plain name (letters, digits, '.', '_', '-'; not starting with "
            f"'.' or '-'; at most 128 characters), got {name!r}"
        )
    return name


def inside(folder: Path, name: str, listed_in: str) -> Path:
    """``folder / name`` for a relative file name read from ``folder / listed_in`` (a manifest);
    refuses names that leave the folder (``../x``, absolute paths, symlinks pointing out)."""
    if not isinstance(name, str) or not name:
        raise DataError(f"{folder / listed_in}: expected a file name, got {name!r}")
    if Path(name).is_absolute() or not (folder / name).resolve().is_relative_to(folder.resolve()):
        raise DataError(f"{folder / listed_in}: file name {name!r} points outside {folder}")
    return folder / name


# ---------------------------------------------------------------------------------------------------
# Markers


def folder_kind(folder: Path) -> str | None:
    """The kind of distgnn output ``folder`` holds (from its marker, or a pre-marker signature
    file), or None when distgnn did not write it."""
    marker = folder / MARKER
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            return None
        return kind if kind in KINDS else None
    for kind, signature in _LEGACY_SIGNATURES.items():
        if (folder / signature).is_file():
            return kind
    return None


def write_marker(folder: Path, kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    (folder / MARKER).write_text(json.dumps({"kind": kind, "distgnn_version": VERSION}) + "\n")


def check_replaceable(final: Path, kind: str, *, overwrite: bool = False) -> None:
    """Raise DataError unless ``final`` may be (re)written as an output of ``kind``: it does not
    exist, is an empty folder, holds a distgnn ``kind`` output, or (with ``overwrite``) is a folder
    distgnn did not write. Never the current folder or one of its parents."""
    if not final.exists():
        if final.parent.exists() and not final.parent.is_dir():
            raise DataError(f"{final}: its parent {final.parent} is a file, not a folder")
        return
    resolved, cwd = final.resolve(), Path.cwd().resolve()
    if cwd == resolved or resolved in cwd.parents:
        raise DataError(
            f"{final}: is the current folder or one of its parents; refusing to replace it "
            f"with a {kind} (name a new folder)"
        )
    if not final.is_dir():
        raise DataError(f"{final}: exists and is a file; expected a folder to write the {kind} to")
    found = folder_kind(final)
    if found == kind or not any(final.iterdir()):
        return
    if found is not None:
        raise DataError(f"{final}: holds a distgnn {found}, not a {kind}; refusing to replace it (name another folder)")
    if not overwrite:
        raise DataError(
            f"{final}: exists, is not empty and was not written by distgnn; refusing to "
            f"replace it with a {kind} (name another folder, or pass --overwrite)"
        )


# ---------------------------------------------------------------------------------------------------
# Durable writes


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder below ``folder`` (bottom-up) and ``folder`` itself: the data is
    on disk before the rename that publishes it."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` to a temporary sibling, fsync, rename over ``path``, fsync the folder. The
    temporary file is removed on any failure, so ``path`` is always either old or whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(obj: Any, path: Path) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


# A writer's temporary folders carry host and PID, so a later writer can tell a dead writer's leftovers
# (SIGKILL or power loss skips every cleanup) from a live writer's folder, even on shared storage.
_HOST = socket.gethostname()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_siblings(final: Path) -> None:
    """Remove the temporary folders next to ``final`` left by dead writers on this host. A writer
    killed between its two renames leaves ``final`` missing and the previous version under its
    ``.old-`` name: that one is put back first."""
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(tmp|old)-{re.escape(_HOST)}-(\d+)")
    for path in sorted(final.parent.iterdir()):
        match = pattern.fullmatch(path.name)
        if match is None or _process_alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not final.exists():
            path.rename(final)
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def atomic_folder(final: str | Path, *, kind: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``final``, on error it is removed
    and whatever was at ``final`` before stays untouched. ``final`` must be replaceable as ``kind``
    (:func:`check_replaceable`); the new folder gets ``kind``'s marker. Leftovers of writers that
    died without cleaning up (SIGKILL) are removed first."""
    final = Path(final)
    check_replaceable(final, kind, overwrite=overwrite)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{final}: cannot create its parent folder ({err.strerror})") from None
    remove_stale_siblings(final)
    tmp = final.with_name(f".{final.name}.tmp-{_HOST}-{os.getpid()}")
    old = final.with_name(f".{final.name}.old-{_HOST}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
    except OSError as err:
        raise DataError(f"{final.parent}: cannot write here ({err.strerror})") from None
    try:
        yield tmp
        write_marker(tmp, kind)
        fsync_tree(tmp)
        if final.exists():
            final.rename(old)
        try:
            tmp.rename(final)
        except BaseException:
            if old.exists() and not final.exists():
                old.rename(final)  # put the previous version back
            raise
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
