"""Write a validated submission from an experiment's bagged test predictions.

    python src/submit.py --exp stack_lgbm
    python src/submit.py --exp fusion_hier_avg_avg --format sigir --bias

Writes submissions/<exp>[_bias]_cv<OOF macro-F1>.csv (ChallengeData) or .tsv (SIGIR); refuses to
overwrite an existing file unless --force.
"""
from __future__ import annotations

import argparse

from rakuten.cli import add_common_args, one_line_errors, paths_from_args, setup_logging


def main(argv=None) -> int:
    """Entry point: parse the arguments, write and validate the submission of ``--exp`` (``--bias``: with
    its per-class logit biases); returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--exp", required=True, help="experiment name under oof/")
    p.add_argument("--format", choices=["challengedata", "sigir"], default=None,
                   help="submission format (default: that of the data)")
    p.add_argument("--bias", action="store_true",
                   help="add per-class logit biases fitted on the OOF (fitted now if biases.json is absent)")
    p.add_argument("--force", action="store_true", help="overwrite an existing submission file of that name")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    with one_line_errors():
        # heavy: pandas (stages) loads only after the arguments are checked
        from rakuten.stages import make_submission

        path = make_submission(paths_from_args(args), args.exp, args.format, bias=args.bias, force=args.force)
        print(f"wrote and validated {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
