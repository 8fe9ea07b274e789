"""What every command shares: readable logging, and user errors as one line with exit status 2."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from distgnn.core.errors import ConfigError, DataError
from distgnn.core.storage import is_uri


class StderrHandler(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is when each record comes, not as it was when
    the handler was made (test runners and embedding tools swap the stream)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


def configure_logging(*, verbose: bool = False) -> None:
    """distgnn's own lines at INFO on stderr; other libraries' (Ray's per-report lines, its
    internal notices) only from WARNING, or at INFO too with ``verbose``."""
    fmt = "%(asctime)s %(levelname)s %(message)s"
    if verbose:
        logging.basicConfig(level=logging.INFO, format=fmt, datefmt="%H:%M:%S")
    ours = logging.getLogger("distgnn")
    ours.setLevel(logging.INFO)
    if not verbose and not ours.handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
        ours.addHandler(handler)
    # faiss logs which CPU build it loads, failed attempts included: noise for a user
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def run_command(body: Callable[[], int | None]) -> int:
    """Run a command's body; a DataError or ConfigError becomes ``error: ...`` on stderr, exit 2."""
    try:
        return body() or 0
    except (DataError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


# Under `ray job submit --working-dir`, a job runs inside Ray's temporary copy of the code; a relative
# output path would land there and vanish with the Ray session.
RAY_WORKING_DIR_MARK = "runtime_resources/working_dir_files"
BASE_DIR_ENV = "DISTGNN_BASE_DIR"


def user_path(path: str, what: str, *, output: bool = False) -> str:
    """A path the user gave: relative paths are resolved against ``$DISTGNN_BASE_DIR`` when set
    (``launch/submit.sh`` sets it to the submitter's project folder), else left relative to the
    current folder. A relative *output* path inside Ray's working-dir copy without that variable is refused:
    the run would be lost. URIs (``s3://...``) are returned unchanged."""
    if not path or is_uri(path) or Path(path).is_absolute():
        return path
    base = os.environ.get(BASE_DIR_ENV)
    if base:
        return str(Path(base) / path)
    if output and RAY_WORKING_DIR_MARK in str(Path.cwd()):
        raise ConfigError(
            f"{what} {path!r}: a relative path here would land in Ray's temporary copy of the "
            f"working dir and vanish; give an absolute path or shared storage, set {BASE_DIR_ENV}, "
            "or submit with launch/submit.sh"
        )
    return path
