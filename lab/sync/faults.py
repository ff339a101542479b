"""Client faults shared by the federated techniques, and the record of who took part in each round.

Real federated rounds lose clients. The lab models these kinds, all drawn from
generators seeded by (seed, round), so every process of a distributed run and
every technique run on the same config see the same faults:

- **dropout** (`dropout_prob`): a sampled client leaves the round and says so
  (a closed connection); the server does not wait for it.
- **failure during the round** (`fail_prob`): a client that was picked — a
  trainer, or one of MoDeST's aggregators — crashes after being picked and
  before sending anything this round, without a word (a dead machine, a lost
  link). It is back for the next round. A server cannot tell it from a slow
  client, so without a deadline it waits for it forever.
- **stragglers** (`straggler_prob`, `straggler_slowdown`): a sampled client
  computes `straggler_slowdown` times slower than its nominal time
  (local steps × the device's step time).
- **leaves** (`clients_stop`, `stop_round`, `return_round`): from round
  `stop_round` on, that many clients (chosen by the seed) stop answering — for
  good, or until round `return_round` when they come back (0 = never).
- **late joins** (`clients_join`, `join_round`): that many other clients (chosen
  by the seed) are not there before round `join_round`: a server cannot sample
  a client that has not registered, and MoDeST's peers learn of a join one
  round after it is announced (`joined`).
- **sign-flipping (Byzantine) clients** (`byzantine_clients`, `byzantine_scale`):
  they upload the negation of their honest update, x − scale·(y − x), or of
  their vote (FedVote). Applied where the upload is a model or a vote: FedAvg,
  FedProx, PGFed, FedVote (not the control-variate uploads of the SCAFFOLD
  family, nor MoDeST's peer transfers).

The server's **deadline** (`round_deadline`, in multiples of the round's nominal
compute time, i.e. the slowest sampled client without faults): clients
that have not answered by then are left out of the round. With no deadline (0)
the server waits for every sampled client that did not announce a dropout: a
straggler just makes the round slower, and a client that is silent (left,
failed) makes it wait forever — the round *stalls* and no later round completes.

`ClientFaults.plan(...)` turns one round's sample into a `RoundPlan`: who
takes part, who dropped, who was late, who was silent or failed, whether the
round stalls, and the simulated seconds the server waited. `RoundPlan.extras()`
is what every federated technique writes into its metrics row (`sampled`,
`participants` as comma-separated client ids, `num_participants`,
`num_failed`, `round_completed`); `participants_of(row)` parses them back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class RoundPlan:
    round_index: int
    sampled: list[int]
    participants: list[int]  # clients whose upload the server uses, ascending
    dropped: list[int] = field(default_factory=list)  # announced dropouts
    late: list[int] = field(default_factory=list)  # stragglers that missed the deadline
    silent: list[int] = field(default_factory=list)  # gone (left, not back yet): never answer
    failed: list[int] = field(default_factory=list)  # crashed during this round, before sending
    stalled: bool = False  # the server waits forever for a silent client (no deadline)
    seconds: float = 0.0  # simulated compute time of the round as the server waits for it

    @property
    def completed(self) -> bool:
        """The server aggregated at least one client's update."""
        return not self.stalled and bool(self.participants)

    def extras(self) -> dict:
        return {"sampled": ids(self.sampled), "participants": ids(self.participants if not self.stalled else []),
                "num_participants": len(self.participants) if not self.stalled else 0,
                "num_failed": len(self.failed), "round_completed": self.completed}


def ids(clients) -> str:
    return ",".join(str(c) for c in clients)


def participants_of(row) -> list[int]:
    """The clients that took part in a metrics row's round."""
    s = row["participants"]
    return [int(c) for c in s.split(",")] if s else []


class ClientFaults:
    """The fault model of one run over `num_clients` clients (see the module docstring)."""

    def __init__(self, *, num_clients: int, seed: int = 0, dropout_prob: float = 0.0, straggler_prob: float = 0.0,
                 straggler_slowdown: float = 4.0, deadline: float = 0.0, num_stop: int = 0, stop_round: int = 0,
                 return_round: int = 0, num_join: int = 0, join_round: int = 1, fail_prob: float = 0.0,
                 num_byzantine: int = 0, byzantine_scale: float = 1.0):
        if not 0 <= num_stop <= num_clients:
            raise ValueError(f"clients_stop={num_stop!r} is invalid: expected 0..{num_clients}")
        if not 0 <= num_join <= num_clients - num_stop - 1 and num_join:
            raise ValueError(f"clients_join={num_join!r} is invalid: expected 0..{num_clients - num_stop - 1} "
                             f"(someone other than the {num_stop} leaving clients is there from the start)")
        if return_round and return_round <= stop_round:
            raise ValueError(f"return_round={return_round!r} is invalid: expected 0 (never) or a round after "
                             f"stop_round={stop_round}")
        if not 0 <= fail_prob < 1:
            raise ValueError(f"fail_prob={fail_prob!r} is invalid: expected a number in [0, 1)")
        if not 0 <= num_byzantine < max(num_clients, 1) and num_byzantine:
            raise ValueError(f"byzantine_clients={num_byzantine!r} is invalid: expected 0..{num_clients - 1}")
        self.num_clients, self.seed = num_clients, seed
        self.dropout_prob, self.straggler_prob = dropout_prob, straggler_prob
        self.straggler_slowdown = straggler_slowdown
        self.deadline, self.stop_round, self.return_round = deadline, stop_round, return_round
        self.join_round, self.fail_prob, self.byzantine_scale = join_round, fail_prob, byzantine_scale
        g = torch.Generator().manual_seed(seed * 7_919 + 424_242)
        stopping = torch.randperm(num_clients, generator=g)[:num_stop]
        byzantine = torch.randperm(num_clients, generator=g)[:num_byzantine]
        #: (N,) bool masks of who stops, flips signs, joins late: the per-round work is whole-tensor operations
        self.is_stopping, self.is_byzantine, self.is_joining = (torch.zeros(num_clients, dtype=torch.bool)
                                                                for _ in range(3))
        self.is_stopping[stopping], self.is_byzantine[byzantine] = True, True
        others = torch.randperm(num_clients, generator=torch.Generator().manual_seed(seed * 7_919 + 99))
        self.is_joining[others[~self.is_stopping[others]][:num_join]] = True
        self.stopping, self.byzantine, self.joining = (set(m.nonzero().flatten().tolist()) for m in
                                                       (self.is_stopping, self.is_byzantine, self.is_joining))

    @classmethod
    def from_config(cls, c, num_clients: int | None = None) -> ClientFaults:
        return cls(num_clients=c.num_workers if num_clients is None else num_clients, seed=c.seed,
                   dropout_prob=c.dropout_prob, straggler_prob=c.straggler_prob,
                   straggler_slowdown=c.straggler_slowdown, deadline=c.round_deadline, num_stop=c.clients_stop,
                   stop_round=c.stop_round, return_round=c.return_round, num_join=c.clients_join,
                   join_round=c.join_round, fail_prob=c.fail_prob, num_byzantine=c.byzantine_clients,
                   byzantine_scale=c.byzantine_scale)

    # ---- who is there --------------------------------------------------------------------------------
    def joined(self, client: int, round_index: int) -> bool:
        """Whether `client` has joined the federation by round `round_index` (late joiners from join_round)."""
        return client not in self.joining or round_index >= self.join_round

    def alive(self, client: int, round_index: int) -> bool:
        """Whether `client` answers in round `round_index`: it has joined and is not away (left, not back)."""
        away = (client in self.stopping and round_index >= self.stop_round
                and not (self.return_round and round_index >= self.return_round))
        return self.joined(client, round_index) and not away

    def members(self, round_index: int) -> list[int]:
        """The clients a server knows in round `round_index` (those that have joined; it cannot know who left)."""
        return self.member_mask(round_index).nonzero().flatten().tolist()

    def member_mask(self, round_index: int) -> torch.Tensor:
        """(N,) bool: `joined` for every client at once."""
        return ~self.is_joining if round_index < self.join_round else torch.ones(self.num_clients, dtype=torch.bool)

    def alive_mask(self, round_index: int) -> torch.Tensor:
        """(N,) bool: `alive` for every client at once."""
        away = self.stop_round <= round_index and not (self.return_round and round_index >= self.return_round)
        return self.member_mask(round_index) & ~self.is_stopping if away else self.member_mask(round_index)

    # ---- per-round draws -----------------------------------------------------------------------------
    def draws(self, round_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(dropped (N,) bool, straggling (N,) bool) for one round, the same on every process."""
        g = torch.Generator().manual_seed(self.seed * 1_000_033 + round_index * 31 + 17)
        u = torch.rand(2, self.num_clients, generator=g, dtype=torch.float64)
        return u[0] < self.dropout_prob, u[1] < self.straggler_prob

    def fails(self, round_index: int) -> torch.Tensor:
        """(N,) bool: which clients crash during round `round_index` (before sending), the same everywhere."""
        if not self.fail_prob:
            return torch.zeros(self.num_clients, dtype=torch.bool)
        g = torch.Generator().manual_seed(self.seed * 1_000_037 + round_index * 53 + 29)
        return torch.rand(self.num_clients, generator=g, dtype=torch.float64) < self.fail_prob

    def arrivals(self, sampled, *, round_index: int, steps, step_seconds: float):
        """When each sampled client's upload arrives, for all of them at once: (sampled (S,) long, seconds (S,)
        float64 — inf for a client that never answers, announced dropouts (S,) bool, failures during the round
        (S,) bool, the deadline in seconds (inf without one)). `steps`: the clients' local steps, a (S,) sequence
        in the order of `sampled` or a dict {client: steps}."""
        sampled = torch.as_tensor(sampled, dtype=torch.long).reshape(-1)
        if isinstance(steps, dict):
            steps = [steps[c] for c in sampled.tolist()]
        nominal = torch.as_tensor(steps, dtype=torch.float64).reshape(-1) * step_seconds  # (S,) without faults
        dropped_draw, straggling = self.draws(round_index)
        alive = self.alive_mask(round_index)[sampled]
        dropped = alive & dropped_draw[sampled]
        failed = alive & ~dropped & self.fails(round_index)[sampled]
        slowdown = torch.ones(len(sampled), dtype=torch.float64)
        slowdown[straggling[sampled]] = self.straggler_slowdown
        seconds = torch.where(alive & ~dropped & ~failed, nominal * slowdown, math.inf)  # (S,)
        longest = float(nominal.max()) if len(sampled) else 0.0  # the round's nominal compute time
        deadline_s = self.deadline * longest if self.deadline else math.inf
        return sampled, seconds, dropped, failed, deadline_s

    def finish_times(self, sampled: list[int], *, round_index: int, steps,
                     step_seconds: float) -> tuple[dict[int, float], list[int], list[int], float]:
        """`arrivals` as ({client: seconds (inf if it never answers)} without the announced dropouts, announced
        dropouts, clients that failed during the round, the deadline in seconds (inf without one))."""
        sampled, seconds, dropped, failed, deadline_s = self.arrivals(sampled, round_index=round_index, steps=steps,
                                                                      step_seconds=step_seconds)
        finish = dict(zip(sampled[~dropped].tolist(), seconds[~dropped].tolist()))
        return finish, sampled[dropped].tolist(), sampled[failed].tolist(), deadline_s

    def plan(self, sampled, *, round_index: int, steps, step_seconds: float) -> RoundPlan:
        """Who of `sampled` takes part in round `round_index` when the server waits for all of them (or
        the deadline). `steps` as in `arrivals`."""
        ids_, seconds, dropped, failed, deadline_s = self.arrivals(sampled, round_index=round_index, steps=steps,
                                                                   step_seconds=step_seconds)
        silent = seconds.isinf() & ~dropped & ~failed  # gone: never answer
        answers = ~seconds.isinf()
        on_time = answers & (seconds <= deadline_s)
        plan = RoundPlan(round_index, ids_.tolist(), ids_[on_time].tolist(), dropped=ids_[dropped].tolist(),
                         late=ids_[answers & ~on_time].tolist(), silent=ids_[silent].tolist(),
                         failed=ids_[failed].tolist())
        plan.stalled = bool(plan.silent or plan.failed) and not self.deadline
        waited_for_deadline = bool(plan.late or plan.silent or plan.failed)
        plan.seconds = deadline_s if waited_for_deadline and self.deadline else (
            float(seconds[on_time].max()) if plan.participants else 0.0)
        return plan

    def flip(self, rows: torch.Tensor, reference: torch.Tensor, clients: list[int]) -> torch.Tensor:
        """Sign-flipping attack on uploads: rows (k, d) of `clients`; Byzantine ones become
        reference − scale·(row − reference). Honest rows are returned unchanged."""
        if not self.byzantine:
            return rows
        bad = self.is_byzantine[torch.as_tensor(clients, dtype=torch.long)].to(rows.device)  # (k,)
        if not bool(bad.any()):
            return rows
        out = rows.clone()
        out[bad] = reference - self.byzantine_scale * (rows[bad] - reference)
        return out
