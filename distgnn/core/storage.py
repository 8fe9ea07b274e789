"""Run directories and exports on shared or object storage (``s3://``, ``gs://``, ``hdfs://`` or a
path), through pyarrow's filesystem layer, the same one Ray Train uses for its checkpoints.

distgnn computes in a local folder and publishes whole folders: :func:`upload` copies a finished
run directory or export to its URI, :func:`download` brings one back (into a temporary folder) for
export or recommend. Object stores have no rename, so a folder cannot be published atomically
there: its marker file is copied last, and a folder without one counts as incomplete.
S3-compatible servers are reached with the usual ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY`` variables, which pyarrow (and Ray) read.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from distgnn.core.errors import DataError
from distgnn.core.files import MARKER


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` of a URI; a bad URI or unreachable store is a DataError."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError, TypeError) as err:  # pyarrow reports unknown schemes and bad URIs so
        raise DataError(f"{uri}: not a reachable storage URI ({str(err).splitlines()[0]})") from None


def upload(local: Path, uri: str) -> str:
    """Copy the folder ``local`` to ``uri`` (files of the same name are replaced; others there, such
    as Ray Train's checkpoints, are kept), the marker file last."""
    fs, root = filesystem(uri)
    try:
        fs.create_dir(root, recursive=True)
        for path in sorted(p for p in Path(local).rglob("*") if p.is_file() and p.name != MARKER):
            target = f"{root}/{path.relative_to(local).as_posix()}"
            fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(str(path), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        if (Path(local) / MARKER).is_file():
            pafs.copy_files(
                str(Path(local) / MARKER),
                f"{root}/{MARKER}",
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=fs,
            )
    except OSError as err:
        raise DataError(f"{uri}: cannot write ({str(err).splitlines()[0]})") from None
    return uri


def download(uri: str, *, skip: tuple[str, ...] = ()) -> Path:
    """A local copy of the folder at ``uri`` in a new temporary folder (top-level entries named in
    ``skip`` are left out, e.g. a run's Ray checkpoints). Refuses a folder without its marker."""
    fs, root = filesystem(uri)
    try:
        if fs.get_file_info(f"{root}/{MARKER}").type != pafs.FileType.File:
            raise DataError(f"{uri}: not a complete distgnn folder (no {MARKER}, which is uploaded last)")
        local = Path(tempfile.mkdtemp(prefix="distgnn-"))
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
            relative = info.path[len(root.rstrip("/")) + 1 :]
            if info.type != pafs.FileType.File or relative.split("/", 1)[0] in skip:
                continue
            (local / relative).parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(
                info.path, str(local / relative), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
            )
    except OSError as err:
        raise DataError(f"{uri}: cannot read ({str(err).splitlines()[0]})") from None
    return local
