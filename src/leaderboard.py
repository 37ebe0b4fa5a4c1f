"""Score every finished experiment in oof/ from its artifacts and write the leaderboard.

    python src/leaderboard.py [--workdir DIR]

Writes submissions/leaderboard.md, leaderboard.json, leaderboard.png (ours beside published figures,
which are marked as measured on other data), and per_class_<best>.csv + confusion_<best>.png.
"""
from __future__ import annotations

import argparse

from rakuten.cli import add_common_args, one_line_errors, paths_from_args, setup_logging


def main(argv=None) -> int:
    """Entry point: parse the arguments, score every finished experiment and write the leaderboard files;
    returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    with one_line_errors():
        # heavy: pandas (stages) loads only after the arguments are checked
        from rakuten.stages import leaderboard

        leaderboard(paths_from_args(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
