"""Run a preset's folds and experiments as Ray tasks: every GPU of a machine, or a Ray cluster.

    python src/launch.py --preset demo                                  # local Ray, this machine
    python src/launch.py --preset gpu --ray-address auto --data-dir /data/rakuten --workdir /runs/r
    python src/launch.py --preset demo --experiments tfidf_text,text_tiny_title --folds 0,1 train.epochs=1
    python src/launch.py --preset gpu --dry-run                         # the plan, nothing runs

One Ray task per (unimodal experiment, fold) calls the same run_fold() as run_fold.py, so artifacts
are the serial path's; the preset's fusion and stack experiments follow as tasks that depend on the
folds they read. Folds already complete are skipped (--force retrains). A per-fold score table is
printed at the end; exit 1 if a task failed. Needs `pip install -r requirements-distributed.txt`.
"""
from __future__ import annotations

import argparse
import sys

from rakuten.cli import add_common_args, one_line_errors, parse_fold_arg, paths_from_args, setup_logging
from rakuten.presets import add_backbones_arg


def main(argv=None) -> int:
    """Entry point: parse the arguments, run the preset's plan as Ray tasks (``--dry-run``: print the plan
    only) and print the result table; returns the exit status (1 when a task failed or did not run)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--preset", default=None,
                   help="preset to run (name under configs/presets, or a YAML path; default: $RAKUTEN_PRESET or demo)")
    add_backbones_arg(p)
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join ('auto' on a node of a running cluster, or ray://host:10001); "
                        "default: start a local Ray on this machine")
    p.add_argument("--experiments", default=None,
                   help="comma list of unimodal experiments to run (default: all of the preset's)")
    p.add_argument("--folds", default=None, help="comma list of folds to run (default: all)")
    p.add_argument("--stages", default="unimodal,fusion,stack",
                   help="comma list of stages to run, of unimodal,fusion,stack (default: all three); a fusion "
                        "or stack runs only if its inputs are complete on disk or produced by this launch")
    p.add_argument("--fusion-override", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every fusion config (repeatable), e.g. train.epochs=50")
    p.add_argument("--stack-override", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every stack config (repeatable), e.g. lgbm.num_threads=4")
    p.add_argument("--gpus-per-task", type=float, default=None,
                   help="GPUs per fold task (default: 1 if the cluster has GPUs, else 0; TF-IDF folds use none)")
    p.add_argument("--cpus-per-task", type=float, default=1.0,
                   help="CPUs per fold task (default 1; Ray sets the task's OMP_NUM_THREADS to it)")
    p.add_argument("--second-level-cpus", type=float, default=1.0,
                   help="CPUs per fusion or stack task (default 1)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all; local only)")
    p.add_argument("--num-gpus", type=int, default=None, help="GPUs of the local Ray (default: all; local only)")
    p.add_argument("--max-retries", type=int, default=2,
                   help="retries of a task whose worker died (OOM, lost node); it resumes from its epoch "
                        "checkpoint (default 2)")
    p.add_argument("--no-prepare", action="store_true",
                   help="no per-experiment prepare task: folds build the shared caches concurrently")
    p.add_argument("--force", action="store_true", help="retrain folds whose artifacts are already complete")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit; Ray is not needed")
    p.add_argument("overrides", nargs="*", help="unimodal config overrides as key=value (e.g. train.epochs=2)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    with one_line_errors():
        # heavy: pandas (launch) loads only after the arguments are checked
        from rakuten.launch import Resources, format_table, launch, parse_list

        res = Resources(gpus_per_task=args.gpus_per_task, cpus_per_task=args.cpus_per_task,
                        second_level_cpus=args.second_level_cpus, max_retries=args.max_retries,
                        prepare=not args.no_prepare)
        out = launch(args.preset, paths_from_args(args), address=args.ray_address,
                     experiments=parse_list(args.experiments), folds=parse_fold_arg(args.folds, flag="--folds"),
                     overrides=args.overrides, fusion_overrides=args.fusion_override,
                     stack_overrides=args.stack_override, stages=parse_list(args.stages), force=args.force,
                     resources=res, num_cpus=args.num_cpus, num_gpus=args.num_gpus, dry_run=args.dry_run,
                     backbones=args.backbones)
        if args.dry_run:
            return 0
        print("\n***** Results *****")
        print(format_table(out["rows"]))
        if out["failed"]:
            root = [k for k in out["failed"] if out["outcomes"][k]["status"] == "failed"]
            print(f"error: {len(root)} task(s) failed ({', '.join(root)}); {len(out['failed']) - len(root)} "
                  "more not run because an upstream task failed", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
