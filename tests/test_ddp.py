"""Data-parallel training inside a fold: `accelerate launch` with 2 CPU processes (gloo) writes the
same kind of artifacts as one process, only rank 0 writes, and the macro-F1 is close."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rakuten.artifacts import Experiment
from rakuten.folds import read_folds
from rakuten.metrics import scores

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "",
       "OMP_NUM_THREADS": "1"}
ACCELERATE = Path(sys.executable).with_name("accelerate")

pytestmark = pytest.mark.slow    # process groups: spawned ranks and accelerate launch


@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate not installed")
def test_two_process_fold_matches_one_process(tmp_path):
    from rakuten.data.demo import generate_demo_dataset
    data = tmp_path / "data"
    generate_demo_dataset(data, n_train=600, n_test=40, seed=11, image_size=32, progress=False)
    args = ["--data-dir", str(data), "--config", "text_tiny_title", "--fold", "0", "folds.k=3",
            "train.epochs=10", "train.lr=3e-3", "train.patience=10",
            # early stopping on the 200 fold rows: the inner split's 40 rows pick epochs by noise,
            # which alone moved the two runs 0.16 apart
            "train.early_stop=fold"]
    results = {}
    # The same effective batch (1 x 32 and 2 ranks x 16) and so the same number of optimiser steps:
    # what is left between the two runs is batch composition and dropout draws, not training length.
    for name, launcher, bs in (("single", [sys.executable], 32),
                               ("ddp", [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2",
                                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                                    "--main_process_port", "29517"], 16)):
        wd = tmp_path / name
        subprocess.run([sys.executable, str(REPO / "src" / "make_folds.py"), "--workdir", str(wd), "--data-dir",
                        str(data), "--k", "3"], check=True, env=ENV, capture_output=True)
        r = subprocess.run([*launcher, str(REPO / "src" / "run_fold.py"), "--workdir", str(wd), *args,
                            f"train.batch_size={bs}", "--no-progress"],
                           env=ENV, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        exp = Experiment(wd / "oof", "text_tiny_title")
        folds = read_folds(wd / "folds" / "folds_k3_seed42.csv")
        p = exp.load_test([0])
        assert len(p.ids) == 40
        oof_rows = folds[folds.fold == 0]
        from rakuten.artifacts import Predictions
        va = Predictions.load(exp.oof_path(0))
        assert set(va.ids) == set(oof_rows.id)
        assert r.stdout.count("***** text_tiny_title fold 0 *****") == 1  # only rank 0 reports
        assert not list((exp.dir).glob(".*.tmp")) and not (exp.dir / "checkpoints" / "fold0_last.pt").exists()
        results[name] = scores(va.labels, va.logits)["macro_f1"]
    assert results["single"] > 0.2 and results["ddp"] > 0.2, results
    # Same effective batch, different batch composition and dropout draws: close, not identical.
    # The exact gradient contract is checked by test_one_ddp_step_equals_one_step_at_twice_the_batch.
    assert abs(results["single"] - results["ddp"]) < 0.15, results


def _ddp_step(rank: int, world: int, port: int, out: str) -> None:
    """One SGD step of a 2-rank DDP run, batches sharded as fold.py shards them."""
    import torch
    import torch.distributed as dist

    from rakuten.training.distributed import (DistInfo, EpochShuffleSampler, ShardedBatchSampler, finish_distributed,
                                              hard_exit)
    from rakuten.training.loaders import EpochBatchSampler as _EpochBatchSampler

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x, y, model = _toy()
    net = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    sampler = ShardedBatchSampler(_EpochBatchSampler(EpochShuffleSampler(len(x), seed=3), 8), DistInfo(rank, world, rank))
    idx = next(iter(sampler))
    torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
    opt.step()
    if rank == 0:
        torch.save(model.state_dict(), out)
    # as run_fold.py ends a rank: without hard_exit 2-4 runs in 20 abort at interpreter exit (SIGABRT)
    assert finish_distributed()
    hard_exit(0)


def _toy():
    import torch
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 12, generator=g), torch.randint(0, 5, (64,), generator=g)
    torch.manual_seed(1)
    return x, y, torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))


def test_one_ddp_step_equals_one_step_at_twice_the_batch(tmp_path):
    """Rank r takes batches r, r+W, ... and DDP averages the gradients, so one 2-rank step at batch 8
    is one single-process step at batch 16 over the same rows. Without the all-reduce (or with both
    ranks on the same batch) rank 0's weights differ from the reference by far more than 1e-6."""
    import torch
    import torch.multiprocessing as mp

    from rakuten.training.distributed import EpochShuffleSampler
    from rakuten.training.loaders import EpochBatchSampler as _EpochBatchSampler

    out = tmp_path / "rank0.pt"
    mp.start_processes(_ddp_step, args=(2, 29000 + os.getpid() % 1000, str(out)), nprocs=2, join=True,
                       start_method="spawn")
    x, y, model = _toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    idx = next(iter(_EpochBatchSampler(EpochShuffleSampler(len(x), seed=3), 16)))
    torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
    opt.step()
    ddp = torch.load(out)
    _, _, start = _toy()
    for k, ref in model.state_dict().items():
        assert not torch.allclose(ref, start.state_dict()[k])          # the step moved the weights
        torch.testing.assert_close(ddp[k], ref, atol=1e-6, rtol=1e-5)
