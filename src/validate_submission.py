"""Validate a submission file against the test set of the data.

    python src/validate_submission.py submissions/stack_lgbm_cv0.8123.csv [--format challengedata]

Exit 0 and one line when valid; exit 2 with the first fault on one line otherwise.
"""
from __future__ import annotations

import argparse

from rakuten.cli import add_common_args, one_line_errors, paths_from_args, setup_logging


def main(argv=None) -> int:
    """Entry point: parse the arguments, validate the submission file against the data's test set and
    print one line; returns the exit status (2 with the first fault)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("path", help="submission file to check")
    p.add_argument("--format", choices=["challengedata", "sigir"], default=None,
                   help="expected format (default: that of the data)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    with one_line_errors():
        # heavy: pandas and scikit-learn load only after the arguments are checked
        from rakuten.data.prepared import load_dataset
        from rakuten.reporting.submission import validate_submission

        ds = load_dataset(paths_from_args(args))
        res = validate_submission(args.path, ds, args.format)
        print(f"valid {res['format']} submission: {res['rows']} rows ({res['path']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
