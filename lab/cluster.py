"""A cluster is a tensor with a leading rank axis.

`Cluster` holds the parameters of the workers this process simulates as one
flat `(n_local, d)` tensor — row r is worker r's parameter vector, the
concatenation of the model's parameters in `named_parameters()` order. The
forward and backward of all workers is one `torch.func.vmap` over
`functional_call` — or, for models with a `forward_stacked` (the MLP and the
linear model: batched matmuls over the leading axis) and a loss whose per-row
form is known, that forward with plain autograd, which skips vmap's per-call
Python (a millisecond, more than a whole step of ten small workers). A stock
`torch.optim` optimizer over the flat tensor acts as `n_local` independent
optimizers because its arithmetic is elementwise. Norm-based operations (gradient clipping) are done per row here.

Flat rows make communication simple (one buffer per collective, like DDP's
buckets) and give ZeRO-style sharding contiguous slices to own.

Buffers (e.g. BatchNorm statistics) are not stacked: use models without
running statistics (GroupNorm), as FedAvg's pitfalls advise anyway.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

#: loss_fn (a mean over one worker's batch) -> the same loss of every row of a stacked batch at once:
#: (outputs (n, B, ...), targets (n, B, ...)) -> (n,)
ROW_LOSSES: dict[Callable, Callable] = {
    F.cross_entropy: lambda out, y: F.cross_entropy(out.flatten(0, 1), y.flatten(0, 1), reduction="none")
    .view(out.shape[0], -1).mean(1),
    F.mse_loss: lambda out, y: F.mse_loss(out, y, reduction="none").view(out.shape[0], -1).mean(1),
}


class Cluster:
    """Workers `ranks` of a `num_workers` cluster, all starting from `model`'s parameters.

    loss_fn(outputs, targets) -> scalar, for one worker's batch.
    """

    def __init__(self, model: nn.Module, *, num_workers: int, loss_fn: Callable, ranks: Sequence[int] | None = None):
        self.model = model
        self.num_workers = num_workers
        self.ranks = list(range(num_workers)) if ranks is None else list(ranks)
        #: rank -> its local row (-1: held by another process); `rows_of` maps many ranks at once
        self.row_of = torch.full((num_workers,), -1, dtype=torch.long)
        self.row_of[self.ranks] = torch.arange(len(self.ranks))
        self.loss_fn = loss_fn
        self.names, self.shapes, self.numels = [], [], []
        for name, p in model.named_parameters():
            self.names.append(name)
            self.shapes.append(p.shape)
            self.numels.append(p.numel())
        self.offsets = [0]
        for n in self.numels:
            self.offsets.append(self.offsets[-1] + n)
        row = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
        self.params = row.unsqueeze(0).repeat(len(self.ranks), 1).requires_grad_(True)  # (n, d)
        self.buffers = {k: v.detach() for k, v in model.named_buffers()}
        self._scratch: dict[str, torch.Tensor] = {}
        # gradients w.r.t. each parameter tensor, then one concatenation: differentiating w.r.t. the flat
        # row would materialize a full-size zero tensor per parameter in the backward of its slice
        # (about 4.5x the parameter bytes at the peak, against 2x this way; the numbers are identical)
        self._vgrad = vmap(grad_and_value(self._loss_of_dict), in_dims=(0, 0, 0))
        self._vforward = vmap(self._forward_row, in_dims=(0, 0))
        #: the stacked path (see the module docstring) when the model and its loss allow it
        self.stacked = (hasattr(type(model), "forward_stacked") and loss_fn in ROW_LOSSES and not self.buffers)

    # ---- shapes --------------------------------------------------------------------------
    @property
    def num_local(self) -> int:
        return len(self.ranks)

    @property
    def dim(self) -> int:
        return self.offsets[-1]

    def unflatten(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        """(d,) -> {name: tensor} as views into `row`."""
        return {n: row.narrow(0, o, k).view(s)
                for n, o, k, s in zip(self.names, self.offsets, self.numels, self.shapes)}

    def local_index(self, rank: int) -> int:
        row = int(self.row_of[rank])
        if row < 0:
            raise ValueError(f"rank {rank} is not held by this process (it holds {self.ranks})")
        return row

    def rows_of(self, ranks) -> tuple[torch.Tensor, torch.Tensor]:
        """(the ranks of `ranks` this process holds, their local rows), both LongTensors in the given order."""
        ranks = torch.as_tensor(ranks, dtype=torch.long).reshape(-1)
        rows = self.row_of[ranks]
        held = rows >= 0
        return ranks[held], rows[held]

    # ---- compute -----------------------------------------------------------------------------
    def _forward_row(self, row, x):
        return functional_call(self.model, (self.unflatten(row), self.buffers), (x,))

    def _loss_of_dict(self, named, x, y):
        return self.loss_fn(functional_call(self.model, (named, self.buffers), (x,)), y)

    def _loss_of_row(self, row, x, y):
        return self.loss_fn(self._forward_row(row, x), y)

    def _stacked(self, params: torch.Tensor) -> dict[str, torch.Tensor]:
        """(n, d) -> {name: (n, *shape)} as views into `params`."""
        n = params.shape[0]
        return {k: params.narrow(1, o, c).view(n, *s)
                for k, o, c, s in zip(self.names, self.offsets, self.numels, self.shapes)}

    def forward(self, x: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        """x: (n, B, ...) -> outputs (n, B, ...), one batch per row."""
        params = self.params if params is None else params
        if self.stacked:
            return self.model.forward_stacked(self._stacked(params), x)
        return self._vforward(params, x)

    def loss_and_grad(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *, out: torch.Tensor | None = None):
        """Per-row loss (n,) and gradient (n, d) at `params` (n, d); nothing else is written. `out` (n, d): where
        to put the gradient (a buffer reused step after step saves allocating, and faulting in, n·d floats)."""
        p = params.detach()
        n = p.shape[0]
        named = self._stacked(p)
        if self.stacked:
            leaves = {k: v.detach().requires_grad_() for k, v in named.items()}
            with torch.enable_grad():
                losses = ROW_LOSSES[self.loss_fn](self.model.forward_stacked(leaves, x), y)  # (n,)
                grads = dict(zip(self.names, torch.autograd.grad(losses.sum(), list(leaves.values()))))
        else:
            grads, losses = self._vgrad(named, x, y)
        flat = params.new_empty(n, self.dim) if out is None else out  # (n, d)
        for k, into in self._stacked(flat).items():  # (copies into slices: faster than a cat of strided grads)
            into.copy_(grads.pop(k))
        return losses.detach(), flat

    def losses(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-row loss (n,) at `params` (n, d), forward only (no activations kept for a backward)."""
        with torch.no_grad():
            if self.stacked:
                return ROW_LOSSES[self.loss_fn](self.model.forward_stacked(self._stacked(params.detach()), x), y)
            return vmap(self._loss_of_row, in_dims=(0, 0, 0))(params.detach(), x, y)

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Compute every local worker's gradient on its own batch into `params.grad`; returns losses (n,).

        The gradient's memory is the same buffer step after step (`scratch`): what reads `params.grad` reads it
        before the next backward (the optimizer step, a gradient hook, clipping), as a step does."""
        losses, grads = self.loss_and_grad(self.params, x, y, out=self.scratch("backward", self.num_local))
        self.params.grad = grads
        return losses

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip each row's gradient to L2 norm `max_norm`; returns the norms before clipping (n,)."""
        g = self.params.grad
        norms = g.norm(dim=1)
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        self.params.grad = g * scale.unsqueeze(1)  # not in place: g may be an expanded all-reduce result
        return norms

    def evaluate(self, row: torch.Tensor, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Outputs of the model with parameters `row` (d,) on inputs x (M, ...), in batches."""
        with torch.no_grad():
            outs = [functional_call(self.model, (self.unflatten(row), self.buffers), (x[i:i + batch_size],))
                    for i in range(0, x.shape[0], batch_size)]
        return torch.cat(outs)

    def scratch(self, name: str, rows: int) -> torch.Tensor:
        """A (rows, d) buffer kept between calls under `name`, contents undefined: filling big rank-stacked
        buffers every step costs far less than allocating (and faulting in) fresh ones."""
        buf = self._scratch.get(name)
        if buf is None or buf.shape[0] < rows:
            buf = self._scratch[name] = self.params.new_empty(rows, self.dim, requires_grad=False)
        return buf[:rows]

    def set_rows(self, value: torch.Tensor, rows: Sequence[int] | None = None):
        """Overwrite local rows (all by default) with `value` ((d,) or (len(rows), d))."""
        with torch.no_grad():
            if rows is None:
                self.params.copy_(value.expand_as(self.params))
            else:
                rows = torch.as_tensor(rows, dtype=torch.long, device=self.params.device)
                self.params[rows] = value.expand(len(rows), self.dim).to(self.params.dtype)

    def state_bytes_per_rank(self) -> int:
        return self.dim * self.params.element_size()

    def param_count(self) -> int:
        return self.dim
