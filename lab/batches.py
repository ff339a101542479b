"""Per-rank minibatch streams, gathered for every rank of a step in one indexing op.

Rank r shuffles its shard with a generator seeded by (seed, r) and walks it in
order, reshuffling at each epoch; a batch may wrap across an epoch end so every
batch has exactly `batch_size` examples (vmap needs equal shapes). The stream
depends only on (seed, r): a rank draws the same batches whether it is simulated
beside others or runs alone under torch.distributed, and whichever other ranks
draw in the same step.

Layout (the speed comes from it): the ranks that have drawn keep their upcoming
example indices in one buffer, a row per rank,

    _buf  (K, W)  int64   row k: the unread rest of rank _owner[k]'s epoch, then its next epoch
    _head (K,)            the next unread column of each row;  _fill (K,): the row's valid length
    _slot (N,)            rank -> its row, -1 while it has drawn nothing

so a step is `buf[slots, head + arange(B)]` for all ranks at once, then one gather
of the examples. A row is topped up with its rank's next permutation when fewer
than B indices remain: Python runs per rank once per epoch (its `randperm`), never
per step. A rank that never draws (a federated client never sampled) has no row
and no generator, so memory grows with the ranks that took part: W = n_max + B
indices each.
"""
from __future__ import annotations

import torch


class RankBatches:
    """Minibatches of `batch_size` for each rank in `ranks`, each from its own shard (see the module docstring).

    shards: one LongTensor of example indices per rank (all N ranks of the run); x, y: the examples.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, shards: list[torch.Tensor], *, batch_size: int, seed: int,
                 ranks: list[int]):
        self.x, self.y, self.shards = x, y, shards
        self.batch_size, self.seed = batch_size, seed
        self.ranks = list(ranks)
        self._ranks = torch.tensor(self.ranks, dtype=torch.long)  # (n_local,)
        self.sizes = torch.tensor([len(s) for s in shards], dtype=torch.long)  # (N,) shard sizes n_r
        self._flat = torch.cat([s.reshape(-1).long() for s in shards]) if shards else torch.empty(0, dtype=torch.long)
        self._start = torch.cumsum(self.sizes, 0) - self.sizes  # (N,) where shard r begins in _flat
        self._width = (int(self.sizes.max()) if len(shards) else 0) + batch_size
        self._reset()

    def _reset(self) -> None:
        self._slot = torch.full((len(self.shards),), -1, dtype=torch.long)
        self._owner: list[int] = []  # slot -> rank
        self._gens: dict[int, torch.Generator] = {}
        self._buf = torch.empty(0, self._width, dtype=torch.long)
        self._head = torch.empty(0, dtype=torch.long)
        self._fill = torch.empty(0, dtype=torch.long)

    def shard_size(self, rank: int) -> int:
        return len(self.shards[rank])

    # ---- drawing ---------------------------------------------------------------------------------
    def next(self, ranks=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Next batch of each rank in `ranks` (a list or LongTensor of distinct ranks; default: all local):
        x (R, B, ...), y (R, B, ...)."""
        ranks = self._ranks if ranks is None else torch.as_tensor(ranks, dtype=torch.long).reshape(-1)
        slots = self._slots_of(ranks)  # (R,)
        short = (self._fill[slots] - self._head[slots]) < self.batch_size
        if bool(short.any()):
            self._top_up(slots[short])
        head = self._head[slots]
        idx = self._buf[slots.unsqueeze(1), head.unsqueeze(1) + torch.arange(self.batch_size)]  # (R, B)
        self._head[slots] = head + self.batch_size
        idx = idx.to(self.x.device)
        return self.x[idx], self.y[idx]

    def _slots_of(self, ranks: torch.Tensor) -> torch.Tensor:
        """The buffer rows of `ranks`, giving a row (and a generator) to each rank drawing for the first time."""
        slots = self._slot[ranks]
        new = ranks[slots < 0]
        if len(new):
            for r in new.tolist():  # once per rank and run
                if not len(self.shards[r]):
                    raise ValueError(f"rank {r} has no examples to draw batches from (an empty shard)")
                self._gens[r] = torch.Generator().manual_seed(self.seed * 1_000_003 + r)
            first = len(self._owner)
            self._owner += new.tolist()
            self._slot[new] = torch.arange(first, first + len(new))
            self._buf = torch.cat([self._buf, torch.empty(len(new), self._width, dtype=torch.long)])
            self._head = torch.cat([self._head, torch.zeros(len(new), dtype=torch.long)])
            self._fill = torch.cat([self._fill, torch.zeros(len(new), dtype=torch.long)])
            slots = self._slot[ranks]
        return slots

    def _top_up(self, slots: torch.Tensor) -> None:
        """Move each row's unread rest to its front and append its rank's next epochs until B indices are there."""
        rest = self._fill[slots] - self._head[slots]  # (Q,)
        cols = torch.arange(self._width)
        src = (self._head[slots].unsqueeze(1) + cols).clamp(max=self._width - 1)  # (Q, W)
        self._buf[slots] = self._buf[slots].gather(1, src)  # the unread rest, now from column 0
        self._head[slots] = 0
        self._fill[slots] = rest
        while len(slots):
            owners = [self._owner[k] for k in slots.tolist()]
            sizes = self.sizes[owners]  # (Q,)
            perms = torch.cat([torch.randperm(n, generator=self._gens[r]) for r, n in zip(owners, sizes.tolist())])
            rows = torch.repeat_interleave(slots, sizes)  # the row each new index goes to
            within = torch.arange(len(perms)) - torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
            fill = self._fill[slots]
            self._buf[rows, torch.repeat_interleave(fill, sizes) + within] = \
                self._flat[torch.repeat_interleave(self._start[owners], sizes) + perms]
            self._fill[slots] = fill + sizes
            slots = slots[self._fill[slots] < self.batch_size]  # shards smaller than a batch: another epoch

    # ---- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """{'gens': {rank: generator state}, 'order': {rank: its unread indices}, 'pos': {rank: 0}} for the ranks
        that have drawn (a rank absent has drawn nothing)."""
        order = {r: self._buf[k, self._head[k]:self._fill[k]].clone() for k, r in enumerate(self._owner)}
        return {"gens": {r: self._gens[r].get_state() for r in self._owner}, "order": order,
                "pos": {r: 0 for r in self._owner}}

    def load_state_dict(self, state: dict) -> None:
        self._reset()
        ranks = sorted(state["gens"])
        if not ranks:
            return
        slots = self._slots_of(torch.tensor(ranks, dtype=torch.long))
        for k, r in zip(slots.tolist(), ranks):
            self._gens[r].set_state(state["gens"][r])
            unread = torch.as_tensor(state["order"][r], dtype=torch.long)[int(state["pos"][r]):]
            self._buf[k, :len(unread)] = unread
            self._fill[k] = len(unread)
