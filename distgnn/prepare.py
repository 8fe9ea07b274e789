"""python -m distgnn.prepare: interaction logs -> a graph directory (:mod:`distgnn.data.prepare`)."""

from __future__ import annotations

import sys

from distgnn.core.cli import configure_logging, run_command, user_path
from distgnn.core.config import PrepareConfig, config_from_args, make_parser, replace_nested
from distgnn.data.prepare import prepare


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(
        PrepareConfig,
        prog="python -m distgnn.prepare",
        description="Turn interaction logs into a graph directory for python -m distgnn.train. "
        "With no --input, writes the built-in synthetic dataset.",
    )
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> None:
        cfg = config_from_args(PrepareConfig, args)
        inputs = ("input", "val_input", "test_input", "user_features", "item_features")
        paths = {key: user_path(getattr(cfg, key), f"config key '{key}'") for key in inputs}
        prepare(replace_nested(cfg, **paths, output=user_path(cfg.output, "config key 'output'", output=True)))

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
