"""Token-budget batches: a budget of tokens per micro-batch, so short and long batches cost about the same.  (Packing is
data.collator's; load_model's use_cache=False keeps packed samples apart: a KV cache skips their detection.)"""
from __future__ import annotations

import torch
from transformers.trainer_pt_utils import BatchRebalanceSampler


def budget_batches(lengths, budget: int, packed: bool, seed: int) -> list[list[int]]:
    """Shuffle once (seeded), cut into batches within the budget: sum of lengths packed, longest x count padded."""
    g = torch.Generator().manual_seed(seed)
    batches, current, total, longest = [], [], 0, 0
    for i in torch.randperm(len(lengths), generator=g).tolist():
        n = lengths[i]
        cost = total + n if packed else max(longest, n) * (len(current) + 1)
        if current and cost > budget:
            batches.append(current)
            current, total, longest = [], 0, 0
        current.append(i)
        total, longest = total + n, max(longest, n)
    if current:
        batches.append(current)
    return batches


class TokenBudgetBatchSampler(BatchRebalanceSampler):
    """Micro-batches of at most `budget` tokens, partitioned once (steps per epoch known up front), reshuffled each
    epoch; rank r of W takes batches r, r+W, ... (wrapping so every rank runs as many steps).  A BatchRebalanceSampler
    is what the Trainer passes as `batch_sampler` without sharding it again."""

    def __init__(self, lengths, budget: int, packed: bool, seed: int = 42, rank: int = 0, world_size: int = 1):
        self.batches = budget_batches(list(lengths), budget, packed, seed)
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return -(-len(self.batches) // self.world_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + 1 + self.epoch)
        order = torch.randperm(len(self.batches), generator=g).tolist()
        order += order[: len(self) * self.world_size - len(order)]  # wrap: equal step counts on every rank
        for k in order[self.rank::self.world_size]:
            yield self.batches[k]


def sample_lengths(dataset) -> list[int]:
    """Token counts of a tokenized dataset (a lazy one tokenizes, and caches, every sample here)."""
    return [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
