"""One rank of bench/netlab.py, run inside its own network namespace (`ip netns exec`).

Joins a gloo process group over the namespace's shaped veth (GLOO_SOCKET_IFNAME),
measures a ping-pong latency and every (op, size) in the plan, and writes what it
saw as JSON: per repetition the seconds this rank spent in the call (after a
barrier) and the bytes its interface transmitted (`/sys/class/net/IF/statistics/tx_bytes`,
wire bytes including headers). Sizes follow ../shared/techniques/sharding_and_topology.md §0.2:
all_reduce and broadcast M = the tensor; all_gather X = the gathered output;
reduce_scatter X = the input; all_to_all Y = one rank's send buffer.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist


def tx_bytes(ifname: str) -> int:
    with open(f"/sys/class/net/{ifname}/statistics/tx_bytes") as f:
        return int(f.read())


def make_call(op: str, size: int, rank: int, world: int):
    """A zero-argument closure running `op` on fp32 buffers of the given logical size."""
    n = max(size // 4, world)
    n -= n % world  # divisible chunks
    if op == "all_reduce":
        x = torch.ones(n)
        return lambda: dist.all_reduce(x)
    if op == "broadcast":
        x = torch.ones(n)
        return lambda: dist.broadcast(x, src=0)
    if op == "all_gather":
        inp, out = torch.ones(n // world), torch.empty(n)
        return lambda: dist.all_gather_into_tensor(out, inp)
    if op == "reduce_scatter":
        inp, out = torch.ones(n), torch.empty(n // world)
        return lambda: dist.reduce_scatter_tensor(out, inp)
    if op == "all_to_all":
        inp, out = torch.ones(n), torch.empty(n)
        return lambda: dist.all_to_all_single(out, inp)
    raise ValueError(f"op={op!r} is unknown")


def ping_pong(rank: int, iters: int = 40) -> float:
    """Half the median round trip of a 4-byte message between ranks 0 and 1 (seconds)."""
    x = torch.zeros(1)
    times = []
    for _ in range(iters):
        dist.barrier()
        t0 = time.perf_counter()
        if rank == 0:
            dist.send(x, 1)
            dist.recv(x, 1)
        elif rank == 1:
            dist.recv(x, 0)
            dist.send(x, 0)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] / 2


def stream(rank: int, nbytes: int, reps: int = 3) -> float:
    """Seconds to send `nbytes` from rank 0 to rank 1 (median), the point-to-point goodput check."""
    x = torch.zeros(nbytes // 4)
    times = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        if rank == 0:
            dist.send(x, 1)
            dist.recv(torch.zeros(1), 1)  # the receiver acknowledges the whole message
        elif rank == 1:
            dist.recv(x, 0)
            dist.send(torch.zeros(1), 0)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def shift(rank: int, world: int, nbytes: int, reps: int = 3) -> float:
    """Seconds (median) for every rank to send `nbytes` to its successor while receiving from its predecessor,
    all at once: the calibration of how much the emulated switch forwards in total (P·nbytes / seconds)."""
    out, inp = torch.zeros(nbytes // 4), torch.zeros(nbytes // 4)
    times = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        reqs = [dist.irecv(inp, (rank - 1) % world), dist.isend(out, (rank + 1) % world)]
        for q in reqs:
            q.wait()
        dist.barrier()  # the slowest pair finished
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--master", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ifname", required=True)
    ap.add_argument("--plan", required=True, help="JSON file: list of {op, size, reps}")
    ap.add_argument("--out", required=True)
    ap.add_argument("--stream-bytes", type=int, default=4 << 20)
    a = ap.parse_args()
    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = a.ifname
    dist.init_process_group("gloo", rank=a.rank, world_size=a.world, init_method=f"tcp://{a.master}:{a.port}",
                            timeout=timedelta(seconds=600))
    plan = json.load(open(a.plan))
    out = {"rank": a.rank, "world": a.world, "ping_pong_s": ping_pong(a.rank),
           "stream_s": stream(a.rank, a.stream_bytes), "stream_bytes": a.stream_bytes,
           "shift_s": shift(a.rank, a.world, 4 * a.stream_bytes), "shift_bytes": 4 * a.stream_bytes, "cases": []}
    for op in sorted({p["op"] for p in plan}):  # warm every op's code path once, small
        make_call(op, 4 * a.world, a.rank, a.world)()
    for p in plan:
        call = make_call(p["op"], p["size"], a.rank, a.world)
        secs, txs = [], []
        for _ in range(p["reps"]):
            dist.barrier()
            b0 = tx_bytes(a.ifname)
            t0 = time.perf_counter()
            call()
            secs.append(time.perf_counter() - t0)
            dist.barrier()  # every receiver has everything: nothing of this call is left in a socket buffer
            txs.append(tx_bytes(a.ifname) - b0)
        out["cases"].append({"op": p["op"], "size": p["size"], "seconds": secs, "tx_bytes": txs})
    dist.barrier()
    dist.destroy_process_group()
    with open(a.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
