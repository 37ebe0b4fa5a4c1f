"""Train unimodal experiments fold by fold; write out-of-fold and test predictions.

    python src/run_fold.py --config configs/experiments/text_tiny_title.yaml --fold 0 train.epochs=2
    python src/run_fold.py --fold 0            # fold 0 of every experiment of the preset
    python src/run_fold.py --fold all          # every fold of every experiment of the preset

Data-parallel inside a fold, same artifacts (rank 0 writes):
    accelerate launch --multi_gpu --num_processes 2 src/run_fold.py --config ... --fold 0

Each fold writes oof/<experiment>/fold<k>.npz, test_fold<k>.npz, summary_fold<k>.csv and updates
meta.json. A killed run resumes from its last epoch checkpoint; a finished fold is skipped.
"""
from __future__ import annotations

import argparse
import os

from rakuten.cli import (add_common_args, one_line_errors, parse_fold_arg, paths_from_args, quiet_progress,
                         setup_logging)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--config", default=None,
                   help="experiment config (path or name under configs/experiments); default: every "
                        "unimodal experiment of --preset")
    p.add_argument("--preset", default=None, help="preset whose experiments run when --config is absent "
                                                  "(default: $RAKUTEN_PRESET or demo)")
    p.add_argument("--fold", required=True, help="fold index, comma list, or 'all'")
    p.add_argument("--force", action="store_true", help="retrain folds whose artifacts are already complete")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="config overrides as key=value (e.g. train.epochs=2)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    quiet_progress(args.no_progress)
    with one_line_errors():
        from rakuten.data.prepared import describe, load_dataset
        from rakuten.experiment import load_experiment
        from rakuten.pipeline import text_only_fallback
        from rakuten.presets import experiment_overrides, load_preset

        paths = paths_from_args(args)
        # Under `accelerate launch` / `torchrun` every rank runs this; rank 0 alone reports and writes.
        main = os.environ.get("RANK", "0") == "0"
        # A named config is loaded (and validated) before the data: a bad override is reported at
        # once and nothing, not even the prepared-data cache, is written.
        cfgs = [load_experiment(args.config, args.overrides)] if args.config else None
        from rakuten.lineage import fold_file
        for cfg in cfgs or []:
            parse_fold_arg(args.fold, int(cfg.folds.k))       # a bad --fold or a missing fold file,
            fold_file(paths, cfg)                              # before the data is read
        ds = load_dataset(paths)
        if main:
            print(describe(ds))
        if cfgs is None:
            preset = text_only_fallback(load_preset(args.preset), ds, announce=main)
            cfgs = [load_experiment(e, experiment_overrides(preset, e) + list(args.overrides))
                    for e in preset.experiments]
        from rakuten.training.fold import run_fold   # torch: imported once the inputs are checked
        for cfg in cfgs:
            for fold in parse_fold_arg(args.fold, int(cfg.folds.k)):
                if main:
                    print(f"***** {cfg.name} fold {fold} *****")
                s = run_fold(cfg, paths, fold, ds=ds, progress=not args.no_progress, force=args.force)
                if main:
                    print(f"{cfg.name} fold {fold}: macro-F1 {s['macro_f1']:.4f}  "
                          f"weighted-F1 {s['weighted_f1']:.4f}  accuracy {s['accuracy']:.4f}")
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
