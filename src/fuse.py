"""Train a fusion model on upstream OOF embeddings / probabilities, K-fold on the same folds.

    python src/fuse.py --config configs/fusion/fusion_hier_avg_avg.yaml
    python src/fuse.py --config fusion_baseline_concat --fold 0 train.lr=3e-4 fusion.head=mlp

Writes oof/<name>/fold<k>.npz, test_fold<k>.npz and meta.json (kind "fusion"). Folds already done
with the same config, upstream artifacts and fold file are skipped unless --force.
"""
from __future__ import annotations

import argparse
import time

from rakuten.cli import (add_common_args, one_line_errors, parse_fold_arg, paths_from_args, print_fold_results,
                         setup_logging)


def main(argv=None) -> int:
    """Entry point: parse the arguments, load the fusion config with its overrides, train its folds and
    print the per-fold scores; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--config", required=True, help="fusion config (path, or name under configs/fusion)")
    p.add_argument("--fold", default="all", help="fold index, comma list, or 'all' (default all)")
    p.add_argument("--force", action="store_true", help="recompute folds whose artifacts are already current")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="config overrides as key=value (e.g. train.lr=3e-4)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    with one_line_errors():
        # the config loader first (its check reads the fusion networks' registry, which loads torch)
        from rakuten.second_level.api import load_fusion

        cfg = load_fusion(args.config, overrides=args.overrides)
        paths, folds = paths_from_args(args), parse_fold_arg(args.fold)
        # heavy: torch (fusion) loads only after the arguments, the config and the workdir are checked
        from rakuten.second_level.fusion import run_fusion

        t0 = time.time()
        res = run_fusion(cfg, paths, folds=folds, force=args.force, progress=not args.no_progress)
        print_fold_results(res, f"fusion {res['name']} ({cfg.fusion.variant})", time.time() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
