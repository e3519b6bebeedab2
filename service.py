"""Compatibility entry point of the original design: serve one model folder.

    python service.py --model_directory models/efficientnet_lite0 --env dev

is the same as ``inference-engine serve --model-repository models --model efficientnet_lite0``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inference_engine.cli import main


def translate(argv: list[str]) -> list[str]:
    """Map this script's flags onto ``inference-engine serve``."""
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("--model_directory", type=Path, required=True, help="one model folder")
    parser.add_argument("--env", choices=["dev", "prod", "test"], default=None)
    args, rest = parser.parse_known_args(argv)
    folder = args.model_directory.resolve()
    command = ["serve", "--model-repository", str(folder.parent), "--model", folder.name, *rest]
    if args.env:
        command += ["--env", args.env]
    return command


if __name__ == "__main__":
    sys.exit(main(translate(sys.argv[1:])))
