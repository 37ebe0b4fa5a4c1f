"""Fan-out of a preset's folds and experiments as Ray tasks: one machine's GPUs, or a Ray cluster.

Every (unimodal experiment, fold) becomes one Ray task that calls ``training.fold.run_fold``, the
function ``run_fold.py`` calls, so the artifacts are the ones the serial path writes. Each fusion
experiment of the preset becomes one task calling ``second_level.fusion.run_fusion`` and each stack
one task calling ``second_level.stacker.run_stack``; those tasks receive the ObjectRefs of the tasks
whose outputs they read as arguments, so Ray starts them only once their upstream folds are written
(Ray's own dependency passing; nothing here schedules). Order: unimodal folds, then fusion, then
stacks (a stack may read fusion outputs).

Concurrency: tasks write different files (each fold its own npz, each experiment its own folder),
and ``meta.json``, which every fold of an experiment updates, is merged under a file lock
(``Experiment.update_meta``). Shared caches under ``<workdir>/cache/`` (tokens, tokenizers, image
arrays, frozen features) are written atomically, so concurrent builders would be safe; to avoid
building the same large cache K times at once, an experiment with several folds to run first gets
one *prepare* task (tokenize, build the uint8 image cache, or extract the frozen-backbone features;
it also downloads the pretrained weights once), and its fold tasks depend on it. Second-level
experiments run as one task each (all folds): their folds share one ``open_experiment`` step and
cost seconds on a CPU.

Resources: a fold task asks for ``gpus_per_task`` GPUs (default: 1 where the cluster has GPUs, else
0) and ``cpus_per_task`` CPUs; TF-IDF folds and second-level tasks ask for CPUs only. A fold task
killed with its worker (OOM, preempted node) is retried and resumes from its epoch checkpoint.

On a cluster every node must see the repository, the data and the workdir at the same paths (a
shared filesystem) and have the same Python environment; ``src/`` is put on the workers'
``PYTHONPATH``.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from rakuten.artifacts import Experiment
from rakuten.cli import setup_logging
from rakuten.config import Config, ConfigError
from rakuten.data.prepared import load_dataset
from rakuten.errors import RakutenError
from rakuten.experiment import load_experiment
from rakuten.lineage import fold_file
from rakuten.paths import Paths
from rakuten.presets import experiment_overrides, load_preset
from rakuten.second_level import api
from rakuten.stages import ensure_demo_data, folds_stage, text_only_fallback
from rakuten.training.fold_data import prepare_fold_data

log = logging.getLogger(__name__)

STAGES = ("unimodal", "fusion", "stack")
SRC_DIR = Path(__file__).resolve().parents[1]
# Passed on to the workers when set in the driver's environment (a cluster's workers do not inherit it).
PASS_ENV = ("RAKUTEN_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TORCH_HOME")
DISTRIBUTED_REQUIREMENTS = "requirements-distributed.txt"


def require_ray():
    """Import ray, or fail with one line naming the optional requirements file."""
    try:
        # optional: ray (requirements-distributed.txt)
        import ray
    except ImportError:
        raise RakutenError(f"ray is not installed; pip install -r {DISTRIBUTED_REQUIREMENTS}") from None
    return ray


# ------------------------------------------------------------------------------------------- the plan
@dataclass
class UnimodalJob:
    """One unimodal experiment of the plan: its config, every fold of its fold file, the folds this launch
    trains (``todo``), those complete already (``done``), and the fold file's hash."""
    cfg: Config
    folds: list[int]            # every fold of its fold file
    todo: list[int]             # the folds this launch trains
    done: list[int]             # complete on disk already (skipped)
    fold_hash: str

    @property
    def name(self) -> str:
        """The experiment's name (its config's)."""
        return self.cfg.name


@dataclass
class SecondLevelJob:
    """One fusion or stack experiment of the plan: its stage, config and input experiment names."""
    stage: str                  # fusion | stack
    cfg: Config
    inputs: list[str]           # upstream experiment names

    @property
    def name(self) -> str:
        """The experiment's name (its config's)."""
        return self.cfg.name


@dataclass
class Plan:
    """What a launch runs: the preset's unimodal and second-level jobs, and the experiments left out, each
    as (stage, experiment, why not run)."""
    preset: str
    unimodal: list[UnimodalJob] = field(default_factory=list)
    second: list[SecondLevelJob] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)   # (stage, experiment, why not run)

    def describe(self) -> str:
        """The plan as text (what ``launch`` prints): per unimodal experiment the folds to run and those
        complete already, each second-level task with its inputs, and what is not run and why."""
        n_folds = sum(len(j.todo) for j in self.unimodal)
        lines = [f"***** Launch plan: preset {self.preset} *****",
                 f"  unimodal fold tasks: {n_folds} over {len(self.unimodal)} experiment(s)"]
        for j in self.unimodal:
            done = f"; complete already: {','.join(map(str, j.done))}" if j.done else ""
            lines.append(f"    {j.name:32s} kind {j.cfg.kind:6s} folds to run: "
                         f"{','.join(map(str, j.todo)) or '-'}{done}")
        for j in self.second:
            lines.append(f"  {j.stage:6s} task: {j.name} <- {', '.join(j.inputs)}")
        for stage, name, why in self.skipped:
            lines.append(f"  not run: {stage} {name}: {why}")
        return "\n".join(lines)


def parse_list(value: str | None) -> list[str] | None:
    """A comma list -> its non-empty items, stripped; ``None`` stays ``None``."""
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _second_level_config(stage: str, name: str, folds_spec: tuple[int, int] | None, preset,
                         overrides: list[str]) -> tuple[Config, list[str]]:
    """The fusion/stack config exactly as ``run_all`` loads it (``second_level.api``: the preset's
    folds and its entry for ``name``), then the unimodal experiments' ``folds.k``/``folds.seed`` (a
    second level must use its inputs' fold file, also when ``folds.k=...`` was overridden), then the
    command line's overrides. Returns (config, input experiment names)."""
    extra = ([f"folds.k={folds_spec[0]}", f"folds.seed={folds_spec[1]}"] if folds_spec else []) + overrides
    if stage == "fusion":
        # heavy: fusion loads torch
        from rakuten.second_level.fusion import fusion_config, fusion_inputs
        cfg = api.load_fusion(name, preset, extra)
        fusion_config(cfg)  # validate now, not in a worker an hour later
        return cfg, fusion_inputs(cfg)[0]
    # heavy: the stacker loads scikit-learn and LightGBM
    from rakuten.second_level.stacker import stack_config
    cfg = api.load_stack(name, preset, extra)
    return cfg, list(stack_config(cfg).stack.inputs)


def build_plan(preset_name: str, paths: Paths, experiments: list[str] | None = None,
               folds: list[int] | None = None, overrides: list[str] | None = None,
               fusion_overrides: list[str] | None = None, stack_overrides: list[str] | None = None,
               stages: list[str] | None = None, force: bool = False, backbones: str | None = None) -> Plan:
    """Resolve every config, check fold files and artifacts, and decide what runs (no Ray needed).

    A fold that is complete on disk (same fold file) is not submitted unless ``force``. A fusion or
    stack runs when each of its inputs is complete on disk or fully produced by this launch.
    """
    # heavy: fold_state loads torch
    from rakuten.training.fold_state import check_experiment_folds, discard_replaced

    stages = list(stages or STAGES)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ConfigError(f"--stages: unknown stage {bad[0]!r} (choose from {', '.join(STAGES)})")
    preset = load_preset(preset_name, backbones=backbones)   # backbones: --backbones (full | reduced)
    if preset.get("no_images") and not experiments and paths.data_dir is not None:
        # a preset with a text-only twin, on data without training images: plan the twin instead
        preset = text_only_fallback(preset, load_dataset(paths))
    names = experiments or list(preset.experiments)
    cfgs = [load_experiment(e, experiment_overrides(preset, e) + list(overrides or []), backbones=preset.get("backbones"))
            for e in names]
    specs = sorted({(int(c.folds.k), int(c.folds.seed)) for c in cfgs})
    if len(specs) > 1 and {"fusion", "stack"} & set(stages):
        raise ConfigError("the unimodal experiments use different fold files "
                          f"({', '.join(f'k={k} seed={s}' for k, s in specs)}); a second level needs one")
    plan = Plan(preset.get("name", preset_name))

    if "unimodal" in stages:
        if paths.data_dir is None:
            ensure_demo_data(paths, preset)
        ds = load_dataset(paths)   # once here: the workers then read the prepared cache
        for k, seed in specs:      # idempotent, and refuses to replace a different split
            folds_stage(paths, ds, k, seed, force=force)
        for cfg in cfgs:
            fd = prepare_fold_data(cfg, paths, ds)
            exp = Experiment(paths.oof_dir, cfg.name)
            # once, here: in parallel folds, --force on another fold file or config would delete siblings' work
            discard_replaced(check_experiment_folds(exp, fd, cfg, force, paths))
            all_folds = sorted(int(k) for k in fd.folds["fold"].unique())
            want = all_folds if folds is None else folds
            missing = [k for k in want if k not in all_folds]
            if missing:
                raise RakutenError(f"fold {missing[0]} is not in {fd.fold_file.name} "
                                   f"(folds {all_folds[0]}..{all_folds[-1]})")
            done = [k for k in want if not force and exp.fold_done(k, fd.fold_hash)]
            plan.unimodal.append(UnimodalJob(cfg, all_folds, [k for k in want if k not in done], done,
                                             fd.fold_hash))

    produced: dict[str, bool] = {}   # name -> fully written once this launch's tasks finish
    lacking: dict[str, list[int]] = {}
    for j in plan.unimodal:
        exp = Experiment(paths.oof_dir, j.name)
        lacking[j.name] = [k for k in j.folds if k not in j.todo + j.done and not exp.fold_done(k, j.fold_hash)]
        produced[j.name] = not lacking[j.name]
    folds_spec = specs[0] if len(specs) == 1 else None
    for stage, extra in (("fusion", fusion_overrides), ("stack", stack_overrides)):
        if stage not in stages:
            continue
        for name in preset.get(stage) or []:
            cfg, inputs = _second_level_config(stage, name, folds_spec, preset, list(extra or []))
            why = None
            for up in inputs:
                if produced.get(up):
                    continue
                if up in produced:
                    why = (f"input {up}: fold(s) {','.join(map(str, lacking.get(up, [])))} neither complete "
                           "nor in this launch" if up in lacking else f"input {up} is not run")
                    break
                try:   # not in this launch: usable if complete on disk on this fold file
                    _, fdf, fhash = fold_file(paths, cfg)
                    ok = all(Experiment(paths.oof_dir, up).fold_done(int(k), fhash) for k in fdf["fold"].unique())
                except RakutenError:
                    ok = False
                if not ok:
                    why = f"input {up} is not in this launch and not complete in {paths.oof_dir}"
                    break
            if why:
                plan.skipped.append((stage, name, why))
                produced[name] = False
            else:
                plan.second.append(SecondLevelJob(stage, cfg, inputs))
                produced[name] = True
    return plan


# ------------------------------------------------------------------------------------------ the tasks
def _worker_setup() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    setup_logging(False)


def _where() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def prepare_task(cfg_dict: dict, workdir: str, data_dir: str | None) -> dict:
    """Build an experiment's shared caches once, before its folds fan out (see the module docstring)."""
    # heavy: these load torch, in the worker only
    from rakuten.training.features import frozen_features
    from rakuten.training.inputs import build_inputs_and_model

    _worker_setup()
    t0 = time.time()
    cfg, paths = Config(cfg_dict), Paths.make(workdir, data_dir)
    if cfg.kind in ("text", "image"):
        fd = prepare_fold_data(cfg, paths)
        if cfg.model.freeze_backbone:
            frozen_features(cfg, paths, fd, progress=False)
        else:
            build_inputs_and_model(cfg, paths, fd)
    return {"stage": "prepare", "name": cfg.name, "seconds": round(time.time() - t0, 1), "where": _where()}


def fold_task(cfg_dict: dict, workdir: str, data_dir: str | None, fold: int, force: bool, *deps) -> dict:
    """One (experiment, fold): exactly what ``run_fold.py --config <exp> --fold <fold>`` does."""
    # heavy: torch, in the worker only
    from rakuten.training.fold import run_fold

    _worker_setup()
    t0 = time.time()
    cfg = Config(cfg_dict)
    s = run_fold(cfg, Paths.make(workdir, data_dir), fold, progress=False, force=force)
    return {"stage": "unimodal", "name": cfg.name, "fold": fold, "scores": s,
            "seconds": round(time.time() - t0, 1), "where": _where()}


def second_level_task(stage: str, cfg_dict: dict, workdir: str, data_dir: str | None, force: bool,
                      *deps) -> dict:
    """One fusion or stack experiment, all folds: what ``fuse.py`` / ``stack.py --config <name>`` do."""
    _worker_setup()
    t0 = time.time()
    cfg, paths = Config(cfg_dict), Paths.make(workdir, data_dir)
    if stage == "fusion":
        # heavy: torch, in the worker only
        from rakuten.second_level.fusion import run_fusion as run
    else:
        # heavy: scikit-learn and LightGBM, in the worker only
        from rakuten.second_level.stacker import run_stack as run
    res = run(cfg, paths, force=force, progress=False)
    return {"stage": stage, "name": cfg.name, "result": res, "seconds": round(time.time() - t0, 1),
            "where": _where()}


# ---------------------------------------------------------------------------------------- submission
@dataclass
class Resources:
    """Ray resources of the tasks: GPUs and CPUs per fold task (``gpus_per_task`` None: 1 where the cluster
    has GPUs, else 0), CPUs per fusion or stack task, retries of a task whose worker died, and whether
    each experiment's caches are built by one prepare task first (``prepare``)."""
    gpus_per_task: float | None = None    # None: 1 where the cluster has GPUs, else 0
    cpus_per_task: float = 1.0
    second_level_cpus: float = 1.0
    max_retries: int = 2
    prepare: bool = True

    def resolved_gpus(self, cluster: dict) -> float:
        """GPUs per fold task: ``gpus_per_task`` when set, else 1 when ``cluster`` (Ray's cluster resources)
        has a GPU, else 0."""
        if self.gpus_per_task is not None:
            return float(self.gpus_per_task)
        return 1.0 if cluster.get("GPU", 0) > 0 else 0.0


@dataclass
class Submitted:
    """One task submitted to Ray: its key, stage, experiment, fold (None for a prepare or second-level task),
    object ref, and the keys of the tasks it depends on."""
    key: str                  # "<exp>/prepare", "<exp>/fold<k>", "<exp>"
    stage: str
    name: str
    fold: int | None
    ref: object
    needs: list[str]          # keys of the tasks this one depends on


def ray_init(ray, address: str | None, num_cpus: int | None, num_gpus: int | None) -> bool:
    """Connect (``address``) or start a local Ray; returns True when this process started it."""
    # Never phone home (Ray's usage statistics); set RAY_USAGE_STATS_ENABLED=1 to opt in.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = {"TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(SRC_DIR)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    env.update({k: os.environ[k] for k in PASS_ENV if k in os.environ})
    if ray.is_initialized():
        return False
    if address:
        if num_cpus is not None or num_gpus is not None:
            raise ConfigError("--num-cpus/--num-gpus size a local Ray; a cluster has its own (ray start ...)")
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
        return True
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, runtime_env={"env_vars": env},
             log_to_driver=True)
    return True


def submit(ray, plan: Plan, paths: Paths, res: Resources, force: bool = False) -> list[Submitted]:
    """Submit every task of ``plan``; dependencies travel as ObjectRef arguments."""
    cluster = ray.cluster_resources()
    gpus = res.resolved_gpus(cluster)
    wd, dd = str(paths.workdir), None if paths.data_dir is None else str(paths.data_dir)
    prep = ray.remote(prepare_task)
    fold = ray.remote(fold_task)
    second = ray.remote(second_level_task)
    out: list[Submitted] = []
    by_name: dict[str, list[Submitted]] = {}

    def opts(name: str, num_gpus: float, num_cpus: float) -> dict:
        return {"name": name, "num_gpus": num_gpus, "num_cpus": num_cpus, "max_retries": res.max_retries}

    for j in plan.unimodal:
        if not j.todo:
            continue
        d = j.cfg.to_dict()
        g = 0.0 if j.cfg.kind in ("tfidf", "knn") else gpus
        deps: list[Submitted] = []
        if res.prepare and j.cfg.kind in ("text", "image") and len(j.todo) > 1:
            pg = g if j.cfg.model.get("freeze_backbone") else 0.0   # feature extraction runs the backbone
            ref = prep.options(**opts(f"{j.name}/prepare", pg, res.cpus_per_task)).remote(d, wd, dd)
            deps = [Submitted(f"{j.name}/prepare", "prepare", j.name, None, ref, [])]
            out += deps
        for k in j.todo:
            ref = fold.options(**opts(f"{j.name}/fold{k}", g, res.cpus_per_task)).remote(
                d, wd, dd, k, force, *[s.ref for s in deps])
            s = Submitted(f"{j.name}/fold{k}", "unimodal", j.name, k, ref, [s.key for s in deps])
            out.append(s)
            by_name.setdefault(j.name, []).append(s)
    for j in plan.second:
        ups = [s for n in j.inputs for s in by_name.get(n, [])]
        ref = second.options(**opts(j.name, 0, res.second_level_cpus)).remote(
            j.stage, j.cfg.to_dict(), wd, dd, force, *[s.ref for s in ups])
        s = Submitted(j.name, j.stage, j.name, None, ref, [u.key for u in ups])
        out.append(s)
        by_name[j.name] = [s]
    return out


def _cause(e: BaseException) -> str:
    c = getattr(e, "cause", None) or e
    msg = str(c).strip().splitlines()
    return f"{type(c).__name__}: {msg[-1] if msg else ''}"


def wait_all(ray, tasks: list[Submitted], echo=print) -> dict[str, dict]:
    """Wait for every task, printing one line as each ends; returns key -> outcome.

    A task whose upstream failed never runs (Ray fails it with the upstream's error): it is
    reported as "upstream failed", naming the task that really failed.
    """
    pending = {t.ref: t for t in tasks}
    outcomes: dict[str, dict] = {}
    t0 = time.time()
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            t = pending.pop(ready[0])
            try:
                o = outcomes[t.key] = {"status": "ok", **ray.get(ready[0])}
                score = f" macro-F1 {o['scores']['macro_f1']:.4f}" if "scores" in o else ""
                echo(f"[{time.time() - t0:7.1f}s] done    {t.key}{score} ({o['seconds']:.1f}s on {o['where']})")
            except Exception as e:   # ray.exceptions.RayTaskError (the task raised), worker died, ...
                outcomes[t.key] = {"status": "failed", "error": _cause(e)}
                echo(f"[{time.time() - t0:7.1f}s] failed  {t.key}: {outcomes[t.key]['error']}")
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    for t in tasks:   # submission order is topological
        failed_up = [k for k in t.needs if outcomes[k]["status"] != "ok"]
        if outcomes[t.key]["status"] != "ok" and failed_up:
            outcomes[t.key] = {"status": "upstream failed", "error": f"needs {', '.join(failed_up)}"}
    return outcomes


# ----------------------------------------------------------------------------------------- the report
SCORE_COLS = ("macro_f1", "weighted_f1", "accuracy")


def result_rows(plan: Plan, tasks: list[Submitted], outcomes: dict[str, dict], paths: Paths) -> list[dict]:
    """One row per (experiment, fold) of the plan, plus each complete experiment's OOF row."""
    rows: list[dict] = []

    def meta_of(name: str) -> dict:
        e = Experiment(paths.oof_dir, name)
        try:
            return e.read_meta() if e.meta_path.exists() else {}
        except RakutenError:
            return {}

    def add(stage, name, fold, status, s=None, seconds=None, where=""):
        row = {"stage": stage, "experiment": name, "fold": fold, "status": status,
               **{c: (s or {}).get(c) for c in SCORE_COLS}, "seconds": seconds, "where": where}
        rows.append(row)

    by_key = {t.key: t for t in tasks}
    for j in plan.unimodal:
        meta = meta_of(j.name)
        prep = outcomes.get(f"{j.name}/prepare")
        for k in sorted(j.todo + j.done):
            o = outcomes.get(f"{j.name}/fold{k}")
            if o is None:
                add("unimodal", j.name, k, "complete already", meta.get("folds", {}).get(str(k)))
            elif o["status"] == "ok":
                add("unimodal", j.name, k, "done", o["scores"], o["seconds"], o["where"])
            else:
                why = o["error"] if not (prep and prep["status"] != "ok") else f"prepare: {prep['error']}"
                add("unimodal", j.name, k, o["status"], None, None, why)
        if meta_of(j.name).get("oof"):
            add("unimodal", j.name, "OOF", "", meta_of(j.name)["oof"])
    for j in plan.second:
        o = outcomes.get(j.name) if j.name in by_key else None
        if o is None or o["status"] != "ok":
            add(j.stage, j.name, "-", o["status"] if o else "not run", None, None, (o or {}).get("error", ""))
            continue
        r, meta = o["result"], meta_of(j.name)
        for k in sorted(set(r["folds"]) | set(r["skipped"]), key=int):
            if k in r["folds"]:
                add(j.stage, j.name, k, "done", r["folds"][k])
            else:
                add(j.stage, j.name, k, "complete already", meta.get("folds", {}).get(str(k)))
        if r.get("oof"):
            add(j.stage, j.name, "OOF", "", r["oof"], o["seconds"], o["where"])
    for stage, name, why in plan.skipped:
        add(stage, name, "-", "not run", None, None, why)
    return rows


def format_table(rows: list[dict]) -> str:
    """``rows`` (``result_rows``) as a fixed-width text table under a header and a dashed rule; scores with
    4 decimals, absent values empty."""
    head = ["stage", "experiment", "fold", "status", "macro-F1", "weighted-F1", "accuracy", "seconds", "where / why"]
    body = [[r["stage"], r["experiment"], str(r["fold"]), r["status"],
             *("" if r[c] is None else f"{r[c]:.4f}" for c in SCORE_COLS),
             "" if r["seconds"] is None else f"{r['seconds']:.1f}", r["where"] or ""] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])


# ------------------------------------------------------------------------------------------ the stage
def launch(preset: str, paths: Paths, *, address: str | None = None, experiments: list[str] | None = None,
           folds: list[int] | None = None, overrides: list[str] | None = None,
           fusion_overrides: list[str] | None = None, stack_overrides: list[str] | None = None,
           stages: list[str] | None = None, force: bool = False, resources: Resources | None = None,
           num_cpus: int | None = None, num_gpus: int | None = None, dry_run: bool = False,
           echo=print, backbones: str | None = None) -> dict:
    """Plan, submit, wait, report. Returns ``{"plan", "rows", "failed", "outcomes"}`` (failed: the keys
    of tasks that failed or did not run because an upstream task failed)."""
    ray = None if dry_run else require_ray()   # before the plan: a missing ray fails in a second
    plan = build_plan(preset, paths, experiments, folds, overrides, fusion_overrides, stack_overrides,
                      stages, force, backbones=backbones)
    echo(plan.describe())
    if dry_run:
        return {"plan": plan, "rows": [], "failed": [], "outcomes": {}}
    res = resources or Resources()
    started = ray_init(ray, address, num_cpus, num_gpus)
    try:
        cluster = ray.cluster_resources()
        wants_gpu = any(j.todo and j.cfg.kind in ("text", "image") for j in plan.unimodal)
        if wants_gpu and res.resolved_gpus(cluster) > cluster.get("GPU", 0):
            msg = (f"--gpus-per-task {res.resolved_gpus(cluster):g} but the Ray cluster has "
                   f"{cluster.get('GPU', 0):g} GPU(s): the fold tasks would wait forever")
            if address is None:
                raise ConfigError(msg)
            echo(f"warning: {msg} (unless an autoscaler adds GPU nodes)")
        echo(f"***** Ray: {cluster.get('CPU', 0):g} CPU, {cluster.get('GPU', 0):g} GPU; per fold task "
             f"{res.resolved_gpus(cluster):g} GPU + {res.cpus_per_task:g} CPU *****")
        tasks = submit(ray, plan, paths, res, force)
        outcomes = wait_all(ray, tasks, echo)
    finally:
        if started:
            ray.shutdown()
    rows = result_rows(plan, tasks, outcomes, paths)
    failed = [k for k, o in outcomes.items() if o["status"] != "ok"]
    return {"plan": plan, "rows": rows, "failed": failed, "outcomes": outcomes}
