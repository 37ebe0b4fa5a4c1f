"""The sampler choice of a fold's DataLoaders: length-grouped, length-bucketed, class-balanced or shuffled training
batches (every order a function of seed and epoch, sharded under DDP), length-sorted eval batches.
"""
from __future__ import annotations

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler
from rakuten.training.distributed import EpochShuffleSampler, ShardedBatchSampler
from rakuten.training.samplers import BucketBatchSampler, ClassBalancedSampler, LengthGroupedBatchSampler


def make_loader(ds: Dataset, cfg, train: bool, collate, lengths=None, labels=None, seed: int = 0, dist_info=None):
    """(DataLoader, its batch sampler). Every order is a function of (seed, epoch) via ``set_epoch``,
    so a resumed run replays it; eval loaders sort by length when lengths exist and the engine
    restores the original order through each batch's ``index``. Under DDP, training batches are
    sharded across ranks."""

    bs = int(cfg.train.batch_size if train else cfg.train.eval_batch_size)
    workers = int(cfg.train.num_workers)
    kw = dict(num_workers=workers, collate_fn=collate, pin_memory=torch.cuda.is_available(),
              persistent_workers=workers > 0)
    kind = cfg.train.sampler if train else "length"
    if train and kind == "balanced":
        # rare classes drawn more often (probability ~ count^-power); pairs with an unweighted loss
        bsampler = EpochBatchSampler(ClassBalancedSampler(labels, power=float(cfg.train.balanced_power), seed=seed), bs)
    elif train and lengths is not None and kind == "bucket":
        # fixed-width length buckets: one padded length per bucket (the pad multiple, 8 if none)
        bsampler = BucketBatchSampler(lengths, bs, width=int(cfg.data.get("pad_to_multiple_of") or 8), seed=seed)
    elif lengths is not None and kind in ("length", "bucket"):
        bsampler = LengthGroupedBatchSampler(lengths, bs, shuffle=train, seed=seed)
    elif train:
        bsampler = EpochBatchSampler(EpochShuffleSampler(len(ds), seed), bs)
    else:
        bsampler = BatchSampler(SequentialSampler(ds), bs, drop_last=False)
    if train and dist_info is not None and dist_info.enabled:
        bsampler = ShardedBatchSampler(bsampler, dist_info)
    return DataLoader(ds, batch_sampler=bsampler, **kw), bsampler


class EpochBatchSampler(torch.utils.data.BatchSampler):
    """BatchSampler that forwards ``set_epoch`` to its sampler."""

    def __init__(self, sampler, batch_size: int):
        super().__init__(sampler, batch_size, drop_last=False)

    def set_epoch(self, epoch: int) -> None:
        """Forward ``epoch`` to the wrapped sampler's ``set_epoch``."""
        self.sampler.set_epoch(epoch)
