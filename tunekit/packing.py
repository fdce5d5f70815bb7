"""Token-budget batching; with padding-free packing (data.collator), the batch holds real tokens only.

Packing (transformers' DataCollatorWithFlattening) concatenates a batch's samples into one row with position ids
restarting at 0 for each sample and no attention mask; transformers then keeps attention inside each sample (a
block-diagonal mask for SDPA/eager/flex, the varlen path for flash attention). That only holds when no KV cache is
passed (`use_cache=False`): with a cache, transformers skips the packed-sequence detection and every sample attends to
the ones before it.

TokenBudgetBatchSampler replaces a fixed batch size with a budget of tokens per micro-batch, so a batch of short
samples and a batch of long ones cost about the same.
"""
from __future__ import annotations

import torch
from transformers.trainer_pt_utils import BatchRebalanceSampler


def budget_batches(lengths, budget: int, packed: bool, seed: int) -> list[list[int]]:
    """Shuffle once (seeded), then cut the order into consecutive batches that fit the budget: the sum of lengths
    when packed, the longest length times the count when padded.  A sample longer than the budget goes alone."""
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
    """Micro-batches of at most `budget` tokens.  The partition into batches is fixed for the run (so the number of
    steps per epoch is known up front); their order is reshuffled each epoch.  Rank-aware: rank r of W takes batches
    r, r+W, ... (the last round wraps around so every rank runs the same number of steps).  Subclassing
    BatchRebalanceSampler is what tells the Trainer to pass it as `batch_sampler` and not to shard it again."""

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
