"""Train unimodal experiments fold by fold; write out-of-fold and test predictions.

    python src/run_fold.py --config configs/experiments/text_tiny_title.yaml --fold 0 train.epochs=2
    python src/run_fold.py --fold 0            # fold 0 of every experiment of the preset
    python src/run_fold.py --fold all          # every fold of every experiment of the preset

Data-parallel inside a fold, same artifacts (rank 0 writes):
    accelerate launch --multi_gpu --num_processes 2 src/run_fold.py --config ... --fold 0

On a fresh checkout it prepares what it needs first, through the same stages as run_all.py: the demo
data when no --data-dir is given, the fold file when none exists.

Each fold writes oof/<experiment>/fold<k>.npz, test_fold<k>.npz, summary_fold<k>.csv and updates
meta.json. A killed run resumes from its last epoch checkpoint; a finished fold is skipped.
"""
from __future__ import annotations

import argparse

from rakuten.cli import (add_common_args, one_line_errors, parse_fold_arg, paths_from_args, quiet_progress,
                         setup_logging)
from rakuten.presets import add_backbones_arg


def main(argv=None) -> int:
    """Entry point: parse the arguments, prepare the data and fold file when missing, and train the
    requested folds of ``--config`` (else of every unimodal experiment of the preset); returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--config", default=None,
                   help="experiment config (path or name under configs/experiments); default: every "
                        "unimodal experiment of --preset")
    p.add_argument("--preset", default=None, help="preset whose experiments run when --config is absent "
                                                  "(default: $RAKUTEN_PRESET or demo)")
    add_backbones_arg(p)
    p.add_argument("--fold", required=True, help="fold index, comma list, or 'all'")
    p.add_argument("--force", action="store_true", help="retrain folds whose artifacts are already complete")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="config overrides as key=value (e.g. train.epochs=2)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    quiet_progress(args.no_progress)
    with one_line_errors():
        # heavy: pandas, and torch in stages, load only after the arguments are checked
        from rakuten.experiment import load_experiment
        from rakuten.lineage import fold_file
        from rakuten.presets import load_preset
        from rakuten.stages import (data_stage, ensure_folds, has_fold_file, is_main_rank, preset_experiments,
                                    train_folds)

        paths = paths_from_args(args)
        main = is_main_rank()
        # A named config is loaded (and validated) before the data: a bad override is reported at
        # once and nothing, not even the prepared-data cache, is written.
        cfgs = [load_experiment(args.config, args.overrides, backbones=args.backbones)] if args.config else None
        # A bad --fold is an error before the data is read, and so is a missing fold file in a workdir
        # that has fold files (another k or seed than its finished work's: a mistake). A workdir
        # with no fold file at all is a fresh one: it gets its fold file below, as run_all makes it.
        fresh = not has_fold_file(paths)
        for cfg in cfgs or []:
            parse_fold_arg(args.fold, int(cfg.folds.k))
            if not fresh:
                fold_file(paths, cfg)
        # as run_all would: the demo data when no --data-dir is given
        ds, preset = data_stage(paths, load_preset(args.preset, backbones=args.backbones), announce=main, fallback=cfgs is None)
        if cfgs is None:
            cfgs = preset_experiments(preset, args.overrides)
        todo = [(cfg, parse_fold_arg(args.fold, int(cfg.folds.k))) for cfg in cfgs]  # a bad --fold fails first
        if fresh:
            ensure_folds(paths, ds, cfgs, write=main)
        for cfg, folds in todo:
            train_folds(cfg, paths, folds, ds, progress=not args.no_progress, force=args.force, announce=main)
        from rakuten.training.distributed import finish_distributed, hard_exit  # torch: once the inputs are checked
        if finish_distributed():
            hard_exit(0)   # a rank of a DDP run: torch's gloo can abort the interpreter's own exit
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
