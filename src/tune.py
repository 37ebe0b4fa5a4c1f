"""Tune a fusion or stack config with Optuna on the fixed folds; optionally fit per-class logit biases.

    python src/tune.py --config configs/stack/stack_lgbm.yaml --trials 30
    python src/tune.py --config fusion_hier_avg_avg --trials 20 --timeout 1800
    # a second worker joins the same study (same storage, same study name):
    python src/tune.py --config stack_lgbm --trials 30 --storage sqlite:////abs/study.db --study-name s1
    python src/tune.py --config stack_lgbm --trials 0 --bias     # biases of the finished stack_lgbm

The study is stored in sqlite:///<workdir>/oof/<name>/study.db unless --storage says otherwise; the
best parameters are written to oof/<name>/best_config.yaml as a full config (experiment <name>_tuned)
for fuse.py / stack.py.
"""
from __future__ import annotations

import argparse

from rakuten.cli import add_common_args, one_line_errors, paths_from_args, setup_logging
from rakuten.errors import RakutenError


def main(argv=None) -> int:
    """Entry point: parse the arguments, run ``--trials`` Optuna trials on the config and print the study's
    best, then (``--bias``) fit per-class logit biases and print their held-out gain; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--config", required=True, help="fusion or stack config to tune (path or name)")
    p.add_argument("--trials", type=int, default=20, help="trials this worker runs (default 20; 0: none)")
    p.add_argument("--timeout", type=float, default=None, help="stop starting new trials after S seconds")
    p.add_argument("--storage", default=None,
                   help="any SQLAlchemy URL (default sqlite:///<workdir>/oof/<name>/study.db)")
    p.add_argument("--study-name", default=None, help="study name (default: the config's name)")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (default: tune.seed of the config)")
    p.add_argument("--bias", action="store_true",
                   help="also fit per-class logit biases on the OOF of the config's experiment "
                        "(--exp to name another) and report their held-out gain")
    p.add_argument("--exp", default=None, help="experiment whose biases --bias fits (default: the config's name)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="config overrides as key=value")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    with one_line_errors():
        # light: the config loader (no torch, scikit-learn or LightGBM yet)
        from rakuten.second_level.api import load_second_level

        if args.trials < 0 or (args.timeout is not None and args.timeout <= 0):
            raise RakutenError(f"--trials must be >= 0 and --timeout > 0 (got {args.trials}, {args.timeout})")
        cfg = load_second_level(args.config, overrides=args.overrides)
        paths = paths_from_args(args)
        # heavy: Optuna and scikit-learn load only after the arguments, the config and the workdir are checked
        from rakuten.second_level.tuning import tune, tune_biases

        if args.trials > 0:
            res = tune(cfg, paths, args.trials, timeout=args.timeout, storage=args.storage,
                       study_name=args.study_name, seed=args.seed, progress=not args.no_progress)
            print(f"***** study {res['study_name']} ({res['storage']}) *****")
            print(f"  trials in study: {res['n_trials']} ({res['n_complete']} complete, {res['n_pruned']} pruned; "
                  f"{res['this_worker_trials']} by this worker, sampler seed {res['worker_seed']})")
            if res["best_value"] is not None:
                print(f"  best OOF macro-F1 {res['best_value']:.4f} (trial #{res['best_trial']}): {res['best_params']}")
                print(f"  best config: {res['best_config']}")
        if args.bias:
            b = tune_biases(paths, args.exp or cfg.name)
            h = b["heldout"]
            print(f"***** per-class logit biases of {b['experiment']} *****")
            for f in h["per_fold"]:
                print(f"  fold {f['fold']}: held-out macro-F1 {f['before']:.4f} -> {f['after']:.4f} ({f['gain']:+.4f})")
            print(f"  mean held-out gain {h['mean_gain']:+.4f}; OOF macro-F1 {h['oof_before']['macro_f1']:.4f} -> "
                  f"{h['oof_after']['macro_f1']:.4f} (biases fitted on the other folds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
