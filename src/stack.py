"""Stack experiments' class probabilities with LightGBM, K-fold on the same folds.

    python src/stack.py --config configs/stack/stack_lgbm.yaml
    python src/stack.py --config stack_lgbm lgbm.num_leaves=15 stack.meta_features=false

Writes oof/<name>/fold<k>.npz, test_fold<k>.npz (logits = log-probabilities) and meta.json (kind
"stack"). Folds already done with the same config, upstream artifacts and fold file are skipped.
"""
from __future__ import annotations

import argparse
import time

from rakuten.cli import (add_common_args, one_line_errors, parse_fold_arg, paths_from_args, print_fold_results,
                         setup_logging)


def main(argv=None) -> int:
    """Entry point: parse the arguments, load the stack config with its overrides, fit its folds and print
    the per-fold scores; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--config", required=True, help="stack config (path, or name under configs/stack)")
    p.add_argument("--fold", default="all", help="fold index, comma list, or 'all' (default all)")
    p.add_argument("--force", action="store_true", help="recompute folds whose artifacts are already current")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="config overrides as key=value (e.g. lgbm.num_leaves=15)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    with one_line_errors():
        # light: the config loader (no torch, scikit-learn or LightGBM yet)
        from rakuten.second_level.api import load_stack

        cfg = load_stack(args.config, overrides=args.overrides)
        paths, folds = paths_from_args(args), parse_fold_arg(args.fold)
        # heavy: scikit-learn and LightGBM (the stacker) load only after the arguments, the config and
        # the workdir are checked
        from rakuten.second_level.stacker import run_stack

        t0 = time.time()
        res = run_stack(cfg, paths, folds=folds, force=args.force, progress=not args.no_progress)
        print_fold_results(res, f"stack {res['name']}: LightGBM over {len(cfg.stack.inputs)} experiment(s)",
                           time.time() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
