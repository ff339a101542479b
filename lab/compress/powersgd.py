"""PowerSGD (Vogels, Karimireddy, Jaggi 2019): rank-r approximation by one warm-started power-iteration step.

Spec Part B §B4. Each parameter with ≥ 2 dims is viewed as a matrix
M (a × b) (conv weights as out × rest); the others (biases, and matrices too
small to be worth compressing: (a + b) r · min_compression_rate >= a b, as in
torch's hook) are averaged uncompressed. Per step, with Q (b × r) warm-started
from the previous step (initially Gaussian from a shared seed) and
orthonormalized:

    P = M Q;  P = all_reduce_sum(P);  P = orthonormalize(P)      # Gram–Schmidt
    Q = Mᵀ P; Q = all_reduce_mean(Q)
    M̂ = P Qᵀ                                                    # the average every rank uses

What is sent per step: three all-reduces, of the P factors (4·a·r bytes per
matrix), the Q factors (4·b·r) and the uncompressed tensors (4 bytes each),
tagged `<tag>:P`, `<tag>:Q`, `<tag>:dense` in the Ledger. Error feedback keeps
e = M - M̂ (the residual against the *averaged* approximation, as the paper's
code and torch's powerSGD_hook do: `error_vs_aggregate`); EF21/EControl use
each rank's own message P Q_iᵀ.

Warm-up (`start_iter`, torch's `start_powerSGD_iter`): the first `start_iter`
calls of `reduce` all-reduce the whole vector uncompressed (one all-reduce of
4d bytes, tagged `<tag>:warmup`), as torch's hook does before it starts
compressing; error feedback keeps nothing from them (the residual stays 0, the
EF21 estimate becomes the gradient itself), and the Q factors start from the
shared seed at the first compressed step. torch's default is 10 (it also
protects its error memory from DDP's bucket rebuild after the first
iteration); the paper and the lab's default compress from the first step (0).

Alone (`compress`/`decompress`, one party) the packet is the local factors
(P, Q) and the uncompressed tensors; repeated calls on a fixed matrix of rank
≤ r converge to it exactly (power iteration with warm start).

Knobs: `rank` r for every matrix, or `ratio` -> per matrix
r = max(1, ⌊ratio · a b / (a + b)⌋) (spec §0.4); `warm_start`; `min_compression_rate`
(2 as in torch); `epsilon` added to column norms in Gram–Schmidt; `start_iter`
(config `powersgd_start_iter`). Needs the
parameter `shapes` (in the order the flat vector concatenates them), at
construction or through `bind(shapes)`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lab.comm.packet import Packet
from lab.compress.base import Compressor, row_seed


def orthonormalize_(m: torch.Tensor, epsilon: float = 0.0) -> torch.Tensor:
    """Gram–Schmidt on the columns of a batch of matrices (..., a, r), in place; zero columns stay zero."""
    for i in range(m.shape[-1]):
        col = m[..., i:i + 1]
        norm = col.norm(dim=-2, keepdim=True) + epsilon
        col.copy_(torch.where(norm > 0, col / torch.where(norm > 0, norm, torch.ones_like(norm)), 0.0))
        if i + 1 < m.shape[-1]:
            rest = m[..., i + 1:]
            rest -= (col * rest).sum(dim=-2, keepdim=True) * col
    return m


class PowerSGD(Compressor):
    name = "powersgd"
    unbiased = False
    knob = "rank per matrix r = max(1, ⌊ratio · ab/(a+b)⌋)"

    def __init__(self, *, shapes: Sequence[Sequence[int]] | None = None, rank: int | None = None,
                 ratio: float | None = None, warm_start: bool = True, min_compression_rate: float = 2.0,
                 epsilon: float = 0.0, seed: int = 0, start_iter: int = 0):
        if (rank is None) == (ratio is None):
            raise ValueError("PowerSGD needs exactly one of rank or ratio")
        if rank is not None and rank < 1:
            raise ValueError(f"rank={rank!r} is invalid: expected >= 1")
        if isinstance(start_iter, bool) or not isinstance(start_iter, int) or start_iter < 0:
            raise ValueError(f"powersgd_start_iter={start_iter!r} is invalid: expected an integer >= 0")
        self.start_iter = start_iter
        self.warming = False  # the last `reduce` was an uncompressed warm-up all-reduce
        self.rank, self.ratio, self.warm_start = rank, ratio, warm_start
        self.min_compression_rate, self.epsilon, self.seed = min_compression_rate, epsilon, seed
        self.shapes = [tuple(s) for s in shapes] if shapes is not None else None  # None: `bind` it first
        self.q: list[torch.Tensor] | None = None  # warm-start factors, (n, b, r) each
        self.matrices, self.dense, self.offsets = [], [], [0]
        if shapes is None:
            return
        for s in self.shapes:
            self.offsets.append(self.offsets[-1] + math.prod(s))
        # (index, a, b, r) of each compressed matrix; indices of the uncompressed tensors
        for i, s in enumerate(self.shapes):
            if len(s) >= 2:
                a, b = s[0], math.prod(s[1:])
                r = min(a, b, rank if rank is not None else max(1, math.floor(ratio * a * b / (a + b))))
                if (a + b) * r * min_compression_rate < a * b:
                    self.matrices.append((i, a, b, r))
                    continue
            self.dense.append(i)

    def bind(self, shapes):
        return PowerSGD(shapes=shapes, rank=self.rank, ratio=self.ratio, warm_start=self.warm_start,
                        min_compression_rate=self.min_compression_rate, epsilon=self.epsilon, seed=self.seed,
                        start_iter=self.start_iter)

    @property
    def error_vs_aggregate(self) -> bool:
        """EF14 measures its residual against the averaged approximation (paper code, torch's hook); after a
        warm-up step against the rank's own vector, so the residual stays 0."""
        return not self.warming

    @property
    def dim(self) -> int:
        return self.offsets[-1]

    def describe(self, d):
        ranks = sorted({r for _, _, _, r in self.matrices})
        return f"rank {ranks[0] if len(ranks) == 1 else ranks} on {len(self.matrices)} matrices"

    # ---- pieces --------------------------------------------------------------------------------------
    def _check(self, v: torch.Tensor):
        if self.shapes is None:
            raise ValueError("PowerSGD needs the parameter shapes of the vectors it compresses: bind(shapes) first")
        if v.shape[1] != self.dim:
            raise ValueError(f"PowerSGD was built for vectors of {self.dim} values (its shapes), got {v.shape[1]}")

    def _matrix(self, v: torch.Tensor, i: int, a: int, b: int) -> torch.Tensor:  # (n, d) -> (n, a, b)
        return v[:, self.offsets[i]:self.offsets[i + 1]].reshape(v.shape[0], a, b)

    def _dense(self, v: torch.Tensor) -> torch.Tensor:  # (n, d) -> (n, Σ dense numel)
        parts = [v[:, self.offsets[i]:self.offsets[i + 1]] for i in self.dense]
        return torch.cat(parts, dim=1) if parts else v.new_zeros(v.shape[0], 0)

    def _start_q(self, n: int) -> list[torch.Tensor]:
        """Q factors for this step, (n, b, r) each: warm-started or fresh from a shared seed; orthonormalized."""
        stale = self.q is None or not self.warm_start or any(q.shape[0] != n for q in self.q)
        if stale:
            g = torch.Generator().manual_seed(row_seed(self.seed, 0 if self.warm_start else self.calls, 0))
            self.q = [torch.randn(b, r, generator=g).expand(n, b, r).clone() for _, _, b, r in self.matrices]
        self.calls += 1
        return [orthonormalize_(q, self.epsilon) for q in self.q]

    def _assemble(self, n: int, pq: list[tuple[torch.Tensor, torch.Tensor]], dense: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(n, self.dim, device=dense.device)
        for (i, *_), (p, q) in zip(self.matrices, pq):
            out[:, self.offsets[i]:self.offsets[i + 1]] = (p @ q.transpose(1, 2)).reshape(n, -1)
        j = 0
        for i in self.dense:
            k = self.offsets[i + 1] - self.offsets[i]
            out[:, self.offsets[i]:self.offsets[i + 1]] = dense[:, j:j + k]
            j += k
        return out

    @staticmethod
    def _cat(ts: list[torch.Tensor], n: int) -> torch.Tensor:
        return torch.cat([t.reshape(n, -1) for t in ts], dim=1) if ts else torch.zeros(n, 0)

    def _split(self, flat: torch.Tensor, which: int) -> list[torch.Tensor]:
        """(n, Σ) -> [(n, a or b, r)] for P (which=1) or Q (which=2)."""
        out, j = [], 0
        for m in self.matrices:
            rows, r = m[which], m[3]
            out.append(flat[:, j:j + rows * r].reshape(flat.shape[0], rows, r))
            j += rows * r
        return out

    # ---- one party -----------------------------------------------------------------------------------
    def compress(self, v, *, ranks=None):  # v: (n, d)
        self._check(v)
        n = v.shape[0]
        qs = self._start_q(n)
        ps, new_qs = [], []
        for (i, a, b, _), q in zip(self.matrices, qs):
            m = self._matrix(v.float(), i, a, b)
            p = orthonormalize_(m @ q, self.epsilon)  # (n, a, r)
            ps.append(p)
            new_qs.append(m.transpose(1, 2) @ p)  # (n, b, r)
        self.q = [q.clone() for q in new_qs]
        return Packet({"P": self._cat(ps, n), "Q": self._cat(new_qs, n), "dense": self._dense(v.float())})

    def decompress(self, packet):
        t = packet.tensors
        n = t["P"].shape[0]
        return self._assemble(n, list(zip(self._split(t["P"], 1), self._split(t["Q"], 2))), t["dense"])

    # ---- across ranks ---------------------------------------------------------------------------------
    def reduce(self, v, collective, *, tag=""):
        self._check(v)
        n = v.shape[0]
        v = v.float()
        self.warming = self.calls < self.start_iter
        if self.warming:  # torch's start_powerSGD_iter: a plain all-reduce of the whole vector
            self.calls += 1
            self.last_nbytes = 4 * v.shape[1]
            return v, collective.all_reduce(v, op="mean", tag=f"{tag}:warmup")[0]
        dense = self._dense(v)
        if dense.shape[1]:
            dense = collective.all_reduce(dense, op="mean", tag=f"{tag}:dense")
        qs = self._start_q(n)
        ms = [self._matrix(v, i, a, b) for i, a, b, _ in self.matrices]
        p_flat = self._cat([m @ q for m, q in zip(ms, qs)], n)
        if p_flat.shape[1]:
            p_flat = collective.all_reduce(p_flat, op="sum", tag=f"{tag}:P")  # summed: orthonormalized next
        ps = [orthonormalize_(p.clone(), self.epsilon) for p in self._split(p_flat, 1)]
        local_qs = [m.transpose(1, 2) @ p for m, p in zip(ms, ps)]  # (n, b, r) this rank's Q_i
        q_flat = self._cat(local_qs, n)
        if q_flat.shape[1]:
            q_flat = collective.all_reduce(q_flat, op="mean", tag=f"{tag}:Q")
        mean_qs = self._split(q_flat, 2)
        self.q = [q.clone() for q in mean_qs]
        self.last_nbytes = 4 * (p_flat.shape[1] + q_flat.shape[1] + dense.shape[1])
        mean = self._assemble(n, list(zip(ps, mean_qs)), dense)[0]
        local = self._assemble(n, list(zip(ps, local_qs)), self._dense(v))
        return local, mean

    def server_reduce(self, v, collective, *, weights, ranks, tag=""):
        raise ValueError("compressor='powersgd' needs all-reduces among the workers; a federated uplink "
                         "has none: use another compressor")
