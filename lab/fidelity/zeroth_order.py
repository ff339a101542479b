"""Claims of the zeroth-order family: FedKSeed, Just One Byte, Ferret, FedZO, FZooS.

The zeroth-order runs use the heterogeneous least squares of `lstsq` (5 clients, one group each, d = 21):
a black box a few hundred function values can move. Ferret, a first-order method whose claim is about the
uplink, runs on the digits MLP against FedAvg with the same clients and steps.
"""
from __future__ import annotations

from lab.fidelity.claim import accuracy, claim, eval_loss, num, objective, pct, size, times, total

#: 5 clients, one least-squares group each (their own optimum): FZooS's kind of problem
QUADRATIC = dict(dataset="lstsq", model="linear", num_workers=5, partition="shards", shards_per_worker=1,
                 topology="phones")


def start_loss(r) -> float:
    """Test loss of the run's initial model."""
    return objective(r.config, split="test")


@claim("fedkseed", paper="Qin et al. 2024, FedKSeed (ICML)",
       claim="[ABSTRACT] Full-parameter federated zeroth-order tuning from K shared seeds: under 18 KB per client "
             "per round for billion-parameter models, beating federated PEFT baselines.",
       evidence="Round [CODE] from zhenqincn/FedKSeed (K = 4096, seed pool, Pro's importance); the lab's "
                "reconstruction equals the incremental model (tests).",
       left="LLM instruction tuning and the PEFT comparison (Rouge-L on Natural Instructions / Dolly).")
def fedkseed(bench):
    rounds = bench.n(5, 3)
    r = bench.run("fedkseed", rounds=rounds, eval_every=1, local_steps=20, zo_seeds=4096, lr=0.005, **QUADRATIC)
    clients = r.config.num_workers
    per_client = (total(r, "bytes_uplink") + total(r, "bytes_downlink")) / (rounds * clients)
    start, end = start_loss(r), eval_loss(r)
    text = (f"K = 4096 seeds, 5 clients, {rounds} rounds: {size(per_client)} per client per round (up + down), "
            f"independent of the model's size; test loss {num(start)} → {num(end)}.")
    return text, per_client < 18 * 1024 and end < start


@claim("justonebyte", paper="Zelikman et al. 2023, Just One Byte (per gradient)",
       claim="[ABSTRACT] Decentralized SPSA fine-tuning where machines exchange only one byte per projected "
             "gradient, and training still works.",
       evidence="Round [CODE] from ezelikman/justonebyte; the byte is what is sent and applied (the released code "
                "sends the float); the 7-bit log code is the spec's design choice.",
       left="GPT-2 fine-tuning on SST-2; dynamic join/leave.")
def justonebyte(bench):
    steps = bench.n(40, 20)
    common = dict(steps=steps, eval_every=steps, **QUADRATIC)
    one, f32 = bench.run("justonebyte", **common), bench.run("justonebyte", zo_scalar_format="fp32", **common)
    start = start_loss(one)
    text = (f"5 machines, 4 samples each, {steps} iterations: {size(total(one) / (steps * 5))} per machine per "
            f"iteration (fp32: {size(total(f32) / (steps * 5))}); test loss {num(start)} → {num(eval_loss(one))} "
            f"(fp32 scalars: {num(eval_loss(f32))}).")
    close = abs(eval_loss(one) - eval_loss(f32)) <= 0.02 * eval_loss(f32)
    return text, total(one) * 4 == total(f32) and eval_loss(one) < start and close


@claim("ferret", paper="Shu et al. 2025, Ferret (ICML)",
       claim="[third-party summary] First-order local training, the update sent as projections on shared random "
             "directions: ~10⁶× less communication than FedAvg with comparable accuracy, ~6× less computation "
             "than FedKSeed.",
       evidence="Client and server [CODE] from allen4747/Ferret (group sizes, truncated normal, clip 10); the "
                "server lr 3 undoes the 1/3 bias.",
       left="The 10⁶× factor needs billion-parameter models (d = 4,810 here); computation against FedKSeed.")
def ferret(bench):
    rounds = bench.n(4, 3)
    common = dict(num_workers=4, rounds=rounds, eval_every=rounds, local_steps=10, batch_size=16, lr=0.1,
                  topology="phones")
    r, avg = bench.run("ferret", ferret_seeds=50, **common), bench.run("fedavg", **common)
    mine, theirs = total(r, "bytes_uplink"), total(avg, "bytes_uplink")
    up = mine / theirs
    text = (f"digits MLP, 4 clients, {rounds} rounds, K = 50 seeds (the released script: 200): uplink "
            f"{times(mine, theirs)} of FedAvg's; test accuracy {pct(accuracy(r))} vs FedAvg {pct(accuracy(avg))}.")
    return text, up < 0.2 and accuracy(r) >= accuracy(avg) - 0.05


def fedzo_run(bench, **extra):
    return bench.run("fedzo", rounds=bench.n(5, 3), eval_every=1, local_steps=5, **QUADRATIC, **extra)


@claim("fedzo", paper="Fang et al. 2022, FedZO (IEEE TSP)",
       claim="[RECON] Federated optimization from function values only (two-point estimates on random directions) "
             "converges, with a speedup linear in clients and local steps.",
       evidence="Client step as the paper; f_i is the client's loss over its whole shard [RECON: the paper draws "
                "b1 examples per query].",
       left="The linear-speedup rate; the paper's black-box attack and softmax experiments.")
def fedzo(bench):
    r = fedzo_run(bench)
    start, end = start_loss(r), eval_loss(r)
    text = (f"5 clients, 20 directions, {r.config.rounds} rounds ({int(r.metrics.queries.iloc[-1]):,} queries): "
            f"test loss {num(start)} → {num(end)}.")
    return text, end < start


@claim("fzoos", paper="Shu, Lin, Dai, Low 2023, FZooS",
       claim="[CODE README] Trajectory-informed surrogate gradients with a shared random-feature correction reach "
             "a lower loss per query than FedZO (RGF), on heterogeneous black boxes.",
       evidence="Algorithm and constants [CODE] from shuyao95/FZooS; the box around the model, the lengthscale fit "
                "and the exploration score [RECON].",
       left="Against FedZO with plain SGD at a tuned rate the lab's FZooS does not win (docstring evidence).")
def fzoos(bench):
    rounds = bench.n(3, 2)
    r = bench.run("fzoos", rounds=rounds, eval_every=1, local_steps=5, fzoos_features=500, fzoos_candidates=20,
                  **QUADRATIC)
    queries = int(r.metrics.queries.iloc[-1])
    zo = fedzo_run(bench, optimizer="adamw", lr=0.01)  # FedZO as FZooS's experiments run it (its Adam step)
    at = zo.metrics[zo.metrics.queries >= queries]
    if not len(at):
        return f"FedZO's run made fewer than FZooS's {queries:,} queries: no comparison.", None
    zo_loss, zo_queries = float(at.eval_loss.iloc[0]), int(at.queries.iloc[0])
    text = (f"5 clients, {rounds} rounds, 500 random features (the code: 10,000): test loss {num(eval_loss(r))} after "
            f"{queries:,} queries vs FedZO (Adam, 20 directions) {num(zo_loss)} after {zo_queries:,}.")
    return text, eval_loss(r) < zo_loss
