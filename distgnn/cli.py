"""What every command shares: readable logging, and user errors as one line with exit status 2."""
from __future__ import annotations

import logging
import sys
from typing import Callable

from distgnn.errors import ConfigError, DataError


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    # faiss logs which CPU build it loads, failed attempts included: noise for a user
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def run_command(body: Callable[[], int | None]) -> int:
    """Run a command's body; a DataError or ConfigError becomes ``error: ...`` on stderr, exit 2."""
    try:
        return body() or 0
    except (DataError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
