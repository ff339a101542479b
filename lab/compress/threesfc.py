"""3SFC (Zhou et al., ICCV 2023): an update encoded as one synthetic sample whose gradient points along it.

Spec Part B §B9. Sender and receiver share the reference model W0 (the global
model of the round; `set_reference`). To send a vector t (a model update or a
gradient), the sender fits a synthetic input x_s (n_s × input) and a soft label
y_s (n_s × classes, an unnormalized real vector used as a cross-entropy target,
linear in y) so that g_s = ∇_W CE(f_W0(x_s), y_s) is parallel to t:

    minimize 1 - |cos(g_s, t)|  over (x_s, y_s), from N(0, I) draws (a per-(call, rank) seed)
    scale = <g_s, t> / ||g_s||²        # the least-squares scalar, sign included
    send (x_s, y_s, scale);  the receiver recomputes g_s at W0 and uses scale · g_s

The synthetic sample's *single gradient step* stands for the whole update
(the "single step" of the title). The fit runs `iters` L-BFGS iterations (the
released code uses 10) and keeps the best |cos| seen; `last_cos` holds |cos| of
each row, the diagnostic the released code prints. Error feedback is a
separate wrapper (`error_feedback='ef'`, the paper's setting; the released
code leaves it off).

What is sent: 4 (n_s · (input + classes) + 1) bytes, independent of d — e.g.
300 bytes for the digits MLP with n_s = 1. Knob: ratio r -> n_s =
max(1, ⌊(r · 4d - 4) / (4 (input + classes))⌋). Classification models only
(the input must be continuous). Biased, δ unknown.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.func import functional_call

from lab.comm.packet import Packet
from lab.compress.base import Compressor


class ThreeSFC(Compressor):
    name = "3sfc"
    unbiased = False
    knob = "synthetic samples n_s = max(1, ⌊(ratio · 4d - 4) / (4 (input + classes))⌋)"

    def __init__(self, *, model: torch.nn.Module, unflatten, input_dim: int, num_classes: int,
                 samples: int | None = None, ratio: float | None = None, dim: int | None = None, iters: int = 10,
                 seed: int = 0):
        if (samples is None) == (ratio is None):
            raise ValueError("ThreeSFC needs exactly one of samples or ratio")
        per = 4 * (input_dim + num_classes)
        if samples is None:
            if dim is None:
                raise ValueError("ThreeSFC(ratio=...) needs dim, the length of the vectors it sends")
            samples = max(1, math.floor((ratio * 4 * dim - 4) / per))
        self.model, self.unflatten = model, unflatten
        self.input_dim, self.num_classes, self.samples = input_dim, num_classes, samples
        self.iters, self.seed = iters, seed
        self.reference: torch.Tensor | None = None
        self.last_cos: torch.Tensor | None = None

    def describe(self, d):
        return f"n_s={self.samples}"

    def set_reference(self, row: torch.Tensor) -> None:
        """W0 (d,), the model both ends hold, at which synthetic gradients are taken."""
        self.reference = row.detach().float().clone()

    def synthetic_grad(self, x: torch.Tensor, y: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
        """∇_W of the soft-label cross entropy of (x (n_s, in), y (n_s, C)) at the reference -> (d,)."""
        if self.reference is None:
            raise ValueError("3SFC needs the reference model: call set_reference(row) first")
        w = self.reference.clone().requires_grad_(True)
        out = functional_call(self.model, self.unflatten(w), (x,))  # (n_s, C)
        loss = -(y * F.log_softmax(out, dim=-1)).sum(dim=-1).mean()
        (g,) = torch.autograd.grad(loss, w, create_graph=create_graph)
        return g

    def _fit(self, t: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
        x = torch.randn(self.samples, self.input_dim, generator=gen).requires_grad_(True)
        y = torch.randn(self.samples, self.num_classes, generator=gen).requires_grad_(True)
        best = (x.detach().clone(), y.detach().clone(), -1.0)
        if t.norm() == 0:
            return best[0], best[1], 1.0
        opt = torch.optim.LBFGS([x, y], lr=1.0, max_iter=self.iters, history_size=10, line_search_fn="strong_wolfe")

        def closure():
            nonlocal best
            opt.zero_grad()
            cos = F.cosine_similarity(self.synthetic_grad(x, y, create_graph=True), t, dim=0).abs()
            if float(cos.detach()) > best[2] and torch.isfinite(cos.detach()):
                best = (x.detach().clone(), y.detach().clone(), float(cos.detach()))
            loss = 1 - cos
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        return best

    def compress(self, v, *, ranks=None):  # v: (n, d)
        n = v.shape[0]
        gens = self._generators(n, ranks)
        xs, ys, scales, coss = [], [], [], []
        for t, g in zip(v.float(), gens):
            x, y, cos = self._fit(t, g)
            gs = self.synthetic_grad(x, y)
            gg = gs.dot(gs)
            scales.append(gs.dot(t) / gg if gg > 0 else torch.zeros(()))
            xs.append(x.reshape(-1))
            ys.append(y.reshape(-1))
            coss.append(cos)
        self.last_cos = torch.tensor(coss)
        return Packet({"x": torch.stack(xs), "y": torch.stack(ys), "scale": torch.stack(scales).reshape(n, 1)})

    def decompress(self, packet):
        t = packet.tensors
        rows = []
        for x, y, s in zip(t["x"], t["y"], t["scale"]):
            rows.append(s[0] * self.synthetic_grad(x.view(self.samples, self.input_dim),
                                                   y.view(self.samples, self.num_classes)))
        return torch.stack(rows)
