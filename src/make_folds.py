"""Write the frozen stratified K-fold file every later stage reads.

    python src/make_folds.py [--k 5] [--seed 42] [--data-dir DIR] [--workdir DIR] [--force]
"""
from __future__ import annotations

import argparse

from rakuten.cli import add_common_args, one_line_errors, paths_from_args, setup_logging
from rakuten.data.prepared import describe, load_dataset
from rakuten.stages import folds_stage


def main(argv=None) -> int:
    """Entry point: parse the arguments, load the data, write the stratified fold file (unchanged when
    identical) and print its fold sizes; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--seed", type=int, default=42, help="shuffle seed of the stratified split (default 42)")
    p.add_argument("--force", action="store_true", help="replace an existing, different split of the same name")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    with one_line_errors():
        paths = paths_from_args(args)
        ds = load_dataset(paths)
        print(describe(ds))
        path, wrote, df = folds_stage(paths, ds, args.k, args.seed, force=args.force)
        print(f"{'wrote' if wrote else 'unchanged'} {path} ({len(df)} rows, {args.k} folds, "
              f"{df.groupby('fold').size().min()}-{df.groupby('fold').size().max()} rows per fold)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
