"""Validation of the sync-period family's config fields (QSR, DiLoCo, Streaming DiLoCo, the federated
techniques and the client-fault model); `ExperimentConfig.__post_init__` calls `check(config, bad)`.

`bad(name, value, allowed)` raises the ValueError every config error uses (field, value, what is allowed).
"""
from __future__ import annotations

#: techniques whose round is a federated round (server or sampled peers), budgeted in rounds
FEDERATED = ("fedavg", "fedprox", "scaffold", "scallion", "scafcom", "modest", "fedvote", "pgfed")
#: federated techniques that apply the client-fault model
FAULT_AWARE = FEDERATED


def check(c, bad) -> None:
    for name in ("warmup_steps", "local_steps", "clients_stop", "stop_round", "byzantine_clients"):
        if getattr(c, name) < 0:
            bad(name, getattr(c, name), "an integer >= 0")
    for name in ("qsr_alpha", "prox_mu", "pgfed_mu", "pgfed_lambda", "round_deadline", "cv_alpha"):
        if getattr(c, name) < 0:
            bad(name, getattr(c, name), "a number >= 0")
    for name in ("outer_lr", "server_lr", "fedvote_k", "byzantine_scale"):
        if getattr(c, name) <= 0:
            bad(name, getattr(c, name), "a number > 0")
    for name in ("outer_momentum", "pgfed_beta", "dropout_prob", "straggler_prob"):
        if not 0 <= getattr(c, name) < 1:
            bad(name, getattr(c, name), "a number in [0, 1)")
    for name in ("merge_alpha",):
        if not 0 <= getattr(c, name) <= 1:
            bad(name, getattr(c, name), "a number in [0, 1]")
    for name in ("scafcom_beta", "success_fraction"):
        if not 0 < getattr(c, name) <= 1:
            bad(name, getattr(c, name), "a number in (0, 1]")
    if c.straggler_slowdown < 1:
        bad("straggler_slowdown", c.straggler_slowdown, "a number >= 1 (how many times slower a straggler is)")
    if c.round_deadline and c.round_deadline < 1:
        bad("round_deadline", c.round_deadline, "0 (wait for every client) or a number >= 1 (multiples of the "
            "round's nominal compute time)")
    if c.num_fragments < 1:
        bad("num_fragments", c.num_fragments, "an integer >= 1")
    if c.technique == "streaming_diloco":
        if c.num_fragments > c.sync_period:
            bad("num_fragments", c.num_fragments, f"at most sync_period={c.sync_period} (each fragment syncs once "
                "per sync period, at its own step)")
        if c.overlap_steps >= c.sync_period / c.num_fragments:
            bad("overlap_steps", c.overlap_steps, f"fewer than sync_period/num_fragments = "
                f"{c.sync_period / c.num_fragments:g} (at most one fragment in flight)")
    if c.overlap_steps < 0:
        bad("overlap_steps", c.overlap_steps, "an integer >= 0")
    if c.modest_aggregators < 1 or c.modest_aggregators > c.num_workers:
        bad("modest_aggregators", c.modest_aggregators, f"an integer in [1, num_workers={c.num_workers}]")
    if c.clients_stop > c.num_workers:
        bad("clients_stop", c.clients_stop, f"at most num_workers={c.num_workers}")
    if c.byzantine_clients >= c.num_workers and c.byzantine_clients:
        bad("byzantine_clients", c.byzantine_clients, f"fewer than num_workers={c.num_workers}")
    if c.technique == "dimat" and c.model != "mlp":
        bad("model", c.model, "'mlp' for technique='dimat' (its neuron alignment permutes the MLP's hidden units)")
