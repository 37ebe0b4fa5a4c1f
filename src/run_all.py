"""The whole pipeline from raw files to a validated submission and the leaderboard.

    python src/run_all.py --preset demo                      # generated demo data (what `make demo` runs)
    python src/run_all.py --preset cpu --data-dir DATA       # real data, offline pretrained features
    python src/run_all.py --preset gpu --data-dir DATA       # the thesis's fine-tuned models (GPU)
    python src/run_all.py --preset gpu --backbones reduced   # the same preset, reduced random-init backbones (CPU)

Stages: data, folds, unimodal K-fold OOF, fusion, stack, tuning, submission, leaderboard. Every stage
skips work whose artifacts are complete; a killed run restarts where it stopped.
"""
from __future__ import annotations

import argparse

from rakuten.cli import add_common_args, one_line_errors, paths_from_args, quiet_progress, setup_logging
from rakuten.errors import RakutenError
from rakuten.presets import add_backbones_arg


def main(argv=None) -> int:
    """Entry point: parse the arguments, validate the preset and run every stage of the pipeline (in an
    MLflow run with ``--track``); returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--preset", default="demo", help="configs/presets/<name>.yaml (demo, cpu, gpu)")
    add_backbones_arg(p)
    p.add_argument("--trials", type=int, default=None, help="Optuna trials per tuned model (default: the preset's)")
    p.add_argument("--no-tuning", action="store_true", help="skip the Optuna stage")
    p.add_argument("--format", choices=["challengedata", "sigir"], default=None,
                   help="submission format (default: that of the input data)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--track", action="store_true",
                   help="record the run in MLflow (requirements-tracking.txt): each experiment, fusion and stack "
                        "as a nested run, the leaderboard, the choice and the submission on the parent run")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlruns/mlflow.db)")
    p.add_argument("--force", action="store_true",
                   help="redo the artifacts whose config, data, fold file or upstream changed (a stale "
                        "unimodal experiment is otherwise an error); current artifacts are reused")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    quiet_progress(args.no_progress)
    with one_line_errors():
        # heavy: yaml and pandas (stages) load only after the arguments are checked
        from rakuten.presets import load_preset
        from rakuten.reporting.tracking import session
        from rakuten.stages import run_all, validate_preset

        if args.trials is not None and args.trials < 0:
            raise RakutenError(f"--trials must be >= 0 (got {args.trials})")
        preset = load_preset(args.preset, backbones=args.backbones)
        if args.tracking_uri and not args.track:
            raise RakutenError("--tracking-uri is used only with --track")
        validate_preset(preset)      # every config it runs, before any data is read or file written
        paths = paths_from_args(args)
        with session(paths, args.track, args.tracking_uri, run_name=preset.get("name"),
                     tags={"preset": preset.get("name"), "data_dir": paths.data_dir or "demo"}):
            run_all(preset, paths, progress=not args.no_progress, tune_trials=args.trials,
                    skip_tuning=args.no_tuning, submit_format=args.format, force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
