"""Atomic output folders and checksums: every stage writes to a temporary folder and renames it into
place only when complete, so a crash never leaves a folder that looks finished."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def checksums(folder: Path, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file below ``folder`` (relative path -> hex digest)."""
    return {str(p.relative_to(folder)): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


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
def atomic_folder(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``final``, on error it is removed
    and whatever was at ``final`` before stays untouched. Leftovers of writers that died without
    cleaning up (SIGKILL) are removed first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(final)
    tmp = final.with_name(f".{final.name}.tmp-{_HOST}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{_HOST}-{os.getpid()}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
