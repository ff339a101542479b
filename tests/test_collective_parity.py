"""The gloo collective and the simulated one agree on every input both accept (issue 10, item 7).

Property-based (hypothesis) over ops, row shapes, dtypes (fp16, bf16, fp32, fp64, uint8, int32, int64), seeds,
op arguments (sum/mean, broadcast sources in and out of range, shift offsets including multiples of P and
negatives, sub-groups) and P in {2, 3, 4}:

- the simulated result matches a float64 reference (integers: exact int64 arithmetic), in the input's dtype,
  within a stated bound: 2·(ε(dtype)·|ref| + P·ε(acc)·Σ|x|) for reductions (acc: the accumulation dtype,
  fp32 for half types), bitwise for moves (gather, broadcast, shift, all_to_all);
- what the simulated collective refuses (an integer mean, a broadcast source outside 0..P-1) it refuses with
  ValueError, and so does gloo;
- then one spawn of P gloo processes per P replays every example hypothesis generated: each rank's result has
  the simulated one's dtype, the same bound against the reference (integers and moves: equal), the same
  ValueErrors, and the same Ledger.

Hypothesis explores and shrinks on the simulated side (one process); the gloo side replays the same cases.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import HealthCheck, example, given, settings, strategies as st

from lab.comm import Ledger, SimulatedCollective
from lab.launch import free_port
from lab.topology import preset

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64,
          "uint8": torch.uint8, "int32": torch.int32, "int64": torch.int64}
OPS = ("all_reduce", "reduce_scatter", "all_gather", "broadcast", "all_to_all", "shift", "send_recv", "mix")
EXAMPLES = 8  # per op and P


# ---- cases: plain dicts, so they travel to the gloo processes --------------------------------------------------
@st.composite
def cases(draw, p: int, op: str) -> dict:
    dtype = draw(st.sampled_from(sorted(DTYPES) if op != "mix" else ["float32", "float64"]))
    tail = tuple(draw(st.lists(st.integers(1, 4), max_size=2)))
    kw: dict = {}
    if op in ("all_reduce", "reduce_scatter"):
        kw["op"] = draw(st.sampled_from(["sum", "mean"]))
        if p == 4 and draw(st.booleans()):
            kw["groups"] = draw(st.sampled_from([[[0, 1], [2, 3]], [[0, 2], [1, 3]]]))
    g = len(kw["groups"][0]) if "groups" in kw else p
    if op == "reduce_scatter":
        tail = (g * draw(st.integers(1, 3)),) + tail
    elif op == "all_to_all":
        tail = (p,) + tail
    elif op == "broadcast":
        kw["src"] = draw(st.one_of(st.integers(0, p - 1), st.sampled_from([p, p + 1, -1])))
    elif op == "shift":
        kw["offset"] = draw(st.one_of(st.integers(-2 * p, 2 * p), st.sampled_from([0, p, -p, 2 * p])))
    elif op == "send_recv":
        dst = draw(st.permutations(range(p)))
        kw["pairs"] = [(s, d) for s, d in enumerate(dst) if draw(st.booleans())]
    elif op == "mix":
        kw["weights_seed"] = draw(st.integers(0, 2**16))
    return {"op": op, "dtype": dtype, "tail": tail, "seed": draw(st.integers(0, 2**16)),
            "scale": draw(st.sampled_from([1.0, 1e3])), "kw": kw}


def explicit(p: int, op: str) -> list[dict]:
    """The issue's cases, always tried: a source >= P, shifts by multiples of P, fp64 and int64 reductions."""
    base = {"op": op, "tail": (3,), "seed": 1, "scale": 1e3}
    out = {
        "broadcast": [{"dtype": "float32", "kw": {"src": p}}, {"dtype": "int64", "kw": {"src": p - 1}}],
        "shift": [{"dtype": "float64", "kw": {"offset": p}}, {"dtype": "int64", "kw": {"offset": -2 * p}}],
        "reduce_scatter": [{"dtype": "float64", "tail": (2 * p, 3), "kw": {"op": "mean"}},
                           {"dtype": "int64", "tail": (p,), "kw": {"op": "mean"}}],
        "all_reduce": [{"dtype": "int64", "kw": {"op": "mean"}}, {"dtype": "int64", "kw": {"op": "sum"}},
                       {"dtype": "float64", "kw": {"op": "mean"}}, {"dtype": "float16", "kw": {"op": "sum"}}],
    }.get(op, [])
    return [{**base, **o} for o in out]


def inputs(case: dict, p: int) -> torch.Tensor:
    """(P, *tail) rows of the case, the same in every process."""
    gen = torch.Generator().manual_seed(case["seed"])
    dtype = DTYPES[case["dtype"]]
    if dtype.is_floating_point:
        return (torch.randn(p, *case["tail"], generator=gen, dtype=torch.float64) * case["scale"]).to(dtype)
    lo = 0 if dtype == torch.uint8 else -100
    return torch.randint(lo, 100, (p, *case["tail"]), generator=gen, dtype=torch.int64).to(dtype)


def mixing(case: dict, p: int) -> torch.Tensor:
    w = torch.rand(p, p, generator=torch.Generator().manual_seed(case["kw"]["weights_seed"]), dtype=torch.float64)
    return (w / w.sum(1, keepdim=True)).to(DTYPES[case["dtype"]])  # (P, P) rows sum to 1


def call(coll, case: dict, x: torch.Tensor, p: int):
    """Run the case on the collective (x: the rows this process holds): its result, or ('ValueError', msg)."""
    kw = dict(case["kw"])
    try:
        if case["op"] == "mix":
            return coll.mix(x, weights=mixing(case, p))
        kw.pop("weights_seed", None)
        return getattr(coll, case["op"])(x, **kw).clone()
    except ValueError as e:
        return ("ValueError", str(e))


# ---- the float64 reference ---------------------------------------------------------------------------------------
def reference(case: dict, x: torch.Tensor, p: int):
    """(P, ...) what every rank should hold, and a (P, ...) error bound (None: equality), or None when the case
    must be refused."""
    op, kw, dtype = case["op"], case["kw"], x.dtype
    if op in ("all_reduce", "reduce_scatter"):
        if not dtype.is_floating_point and kw["op"] == "mean":
            return None
        groups = kw.get("groups") or [list(range(p))]
        ref = torch.empty(x.shape, dtype=torch.float64 if dtype.is_floating_point else torch.int64)
        mag = torch.empty(x.shape, dtype=torch.float64)
        for grp in groups:
            total = x[grp].double().sum(0) if dtype.is_floating_point else x[grp].long().sum(0)
            s = x[grp].double().abs().sum(0)
            if kw["op"] == "mean":
                total, s = total / len(grp), s / len(grp)
            ref[grp], mag[grp] = total, s
        if op == "reduce_scatter":
            g = len(groups[0])
            pos = [next(grp.index(r) for grp in groups if r in grp) for r in range(p)]
            ref = torch.stack([ref[r].chunk(g, 0)[pos[r]] for r in range(p)])
            mag = torch.stack([mag[r].chunk(g, 0)[pos[r]] for r in range(p)])
        if not dtype.is_floating_point:
            return ref.to(dtype), None  # exact, wrapped as the dtype wraps
        acc = torch.promote_types(dtype, torch.float32)
        bound = 2 * (torch.finfo(dtype).eps * ref.abs() + p * torch.finfo(acc).eps * mag)
        return ref, bound
    if op == "all_gather":
        return x.unsqueeze(0).expand(p, *x.shape), None
    if op == "broadcast":
        return (x[kw["src"]].unsqueeze(0).expand(x.shape), None) if 0 <= kw["src"] < p else None
    if op == "all_to_all":
        return x.transpose(0, 1), None
    if op == "shift":
        return torch.roll(x, kw["offset"], 0), None
    if op == "send_recv":
        out = torch.zeros_like(x)
        for s, d in kw["pairs"]:
            out[d] = x[s]
        return out, None
    w = mixing(case, p).double()
    ref = w @ x.double().reshape(p, -1)
    mag = w.abs() @ x.double().abs().reshape(p, -1)
    return ref.reshape(x.shape), (2 * p * torch.finfo(dtype).eps * mag).reshape(x.shape)


def agrees(got, case: dict, x: torch.Tensor, p: int, ranks) -> str | None:
    """None when `got` (rows of `ranks`) is what the reference says; otherwise why not."""
    ref = reference(case, x, p)
    if ref is None:
        return None if isinstance(got, tuple) and got[0] == "ValueError" else f"accepted, should refuse: {got!r}"
    if isinstance(got, tuple):
        return f"refused: {got[1]}"
    want, bound = ref
    want = want[ranks]
    if got.dtype != x.dtype and case["op"] != "mix":
        return f"dtype {got.dtype}, input {x.dtype}"
    if got.shape != want.shape:
        return f"shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    if bound is None:
        return None if torch.equal(got, want.to(got.dtype)) else f"{got} != {want}"
    err = (got.double() - want).abs()
    worst = (err - bound[ranks]).max()
    return None if worst <= 0 else f"error {float(err.max()):.3g} over the bound by {float(worst):.3g}"


# ---- the simulated side, explored by hypothesis -------------------------------------------------------------------
SEEN: dict[int, list[dict]] = {2: [], 3: [], 4: []}


def _simulated(p: int, case: dict):
    coll = SimulatedCollective(world_size=p, ledger=Ledger(preset("ethernet", p)))
    x = inputs(case, p)
    return call(coll, case, x, p), x, coll


@pytest.mark.parametrize("p", [2, 3, 4])
def test_the_simulated_collective_matches_a_float64_reference(p):
    SEEN[p].clear()
    for op in OPS:  # a search per op, so that every op gets its share of the examples

        def check(case):
            got, x, _ = _simulated(p, case)
            why = agrees(got, case, x, p, list(range(p)))
            assert why is None, f"{case}: {why}"
            SEEN[p].append(case)

        for case in explicit(p, op):
            check = example(case=case)(check)
        settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])(given(case=cases(p, op))(check))()
    assert {c["op"] for c in SEEN[p]} == set(OPS)


# ---- the same cases on P gloo processes -----------------------------------------------------------------------------
def _worker(rank: int, p: int, port: int, cases_: list, out_dir: str):
    from lab.comm.distributed import DistributedCollective

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=p, init_method=f"tcp://127.0.0.1:{port}")
    try:
        coll = DistributedCollective(ledger=Ledger(preset("ethernet", p)), timeout=60.0)
        results = [call(coll, case, inputs(case, p)[rank:rank + 1], p) for case in cases_]
        torch.save({"results": results, "ledger": coll.ledger.table()}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.gloo
@pytest.mark.slow
@pytest.mark.parametrize("p", [2, 3, 4])
def test_gloo_agrees_with_the_simulated_collective(p, tmp_path):
    if not SEEN[p]:
        test_the_simulated_collective_matches_a_float64_reference(p)
    cases_ = list(SEEN[p])
    mp.spawn(_worker, args=(p, free_port(), cases_, str(tmp_path)), nprocs=p, join=True)
    sim = SimulatedCollective(world_size=p, ledger=Ledger(preset("ethernet", p)))
    expected = [call(sim, case, inputs(case, p), p) for case in cases_]
    for rank in range(p):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=False)
        assert got["ledger"].equals(sim.ledger.table()), rank
        for case, g, s in zip(cases_, got["results"], expected):
            x = inputs(case, p)
            why = agrees(g, case, x, p, [rank])
            assert why is None, f"rank {rank} of {p}, {case}: {why}"
            if isinstance(g, tuple):
                assert isinstance(s, tuple), f"{case}: gloo refused ({g[1]}), simulated accepted"
            else:
                assert g.dtype == s.dtype, f"{case}: gloo {g.dtype}, simulated {s.dtype}"
                if not g.dtype.is_floating_point or reference(case, x, p)[1] is None:
                    assert torch.equal(g[0], s[rank]), f"rank {rank}, {case}: {g[0]} != {s[rank]}"
