"""Which ranks of a torch.distributed run are alive: a heartbeat thread per rank on a side TCP store.

Why (issue 10): a gloo collective waits for every peer, and a peer that stops
answering (SIGSTOP, a debugger, a machine swapping itself to death) hung runs
for gloo's 30-minute default with no word of who. `comm_timeout` bounds the
wait (`lab.comm.distributed`); the heartbeat names the rank that went silent,
and with `heartbeat_timeout` > 0 ends the wait as soon as a peer has been
silent that long instead of at the timeout.

How: each rank's daemon thread adds 1 to its counter `commlab/<n>/hb/<rank>`
on the rendezvous store (MASTER_ADDR:MASTER_PORT, through a client connection
of its own with short timeouts) every `period` seconds, reads every rank's
counter, and notes by its own monotonic clock when each counter last moved. No
clocks are compared across machines. A stopped process stops its heartbeat
thread too; a busy one keeps beating (torch releases the GIL in its ops and the
thread needs it only briefly). `<n>` counts the heartbeats this process started,
so runs that reuse a store do not read each other's counters.

Under `lab.launch` the store lives in rank 0's process (under torchrun in the
agent): when rank 0 itself is stopped the store stops answering, which
`store_silence()` reports.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from datetime import timedelta

import torch.distributed as dist

_generation = itertools.count()
_current: Heartbeat | None = None


class Heartbeat:
    """A daemon thread beating for `rank` and watching the `world_size` counters on the store at host:port."""

    def __init__(self, *, rank: int, world_size: int, host: str, port: int, period: float):
        self.rank, self.world_size, self.period = int(rank), int(world_size), float(period)
        self.prefix = f"commlab/{next(_generation)}/hb/"
        self.keys = [f"{self.prefix}{r}" for r in range(self.world_size)]
        io = timedelta(seconds=max(2.0, 4 * self.period))  # a store op that takes longer counts as no answer
        self.store = dist.TCPStore(host, int(port), is_master=False, timeout=io, wait_for_workers=False)
        now = time.monotonic()
        self._count = [-1] * self.world_size
        self._moved = [now] * self.world_size  # when each counter last moved, by this process's clock
        self._answered = now  # when the store last answered
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"commlab-heartbeat-{self.rank}", daemon=True)

    def start(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)  # a store op in flight ends by its own timeout; the thread is a daemon

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self._beat()

    def _beat(self) -> None:
        try:
            self.store.add(self.keys[self.rank], 1)
            counts = [int(v) for v in self.store.multi_get(self.keys)] if self.store.check(self.keys) else \
                [self.store.add(k, 0) for k in self.keys]  # add 0: read, creating a counter not there yet
        except Exception:  # noqa: BLE001 - the store did not answer: silence, reported by store_silence()
            return
        now = time.monotonic()
        with self._lock:
            self._answered = now
            for r, c in enumerate(counts):
                if c != self._count[r]:
                    self._count[r], self._moved[r] = c, now

    # ---- what it knows ---------------------------------------------------------------------------------
    def silence(self) -> list[float]:
        """(P,) seconds since each rank's counter last moved (this rank: 0), by this process's clock."""
        now = time.monotonic()
        with self._lock:
            out = [now - t for t in self._moved]
        out[self.rank] = 0.0
        return out

    def silent(self, seconds: float) -> list[int]:
        """The other ranks whose heartbeat has not moved for at least `seconds`, while the store answered (when
        the store itself is silent nobody's counter can move: see `store_silence`)."""
        if self.store_silence() >= seconds:
            return []
        return [r for r, s in enumerate(self.silence()) if s >= seconds]

    def store_silence(self) -> float:
        with self._lock:
            return time.monotonic() - self._answered


def period_for(comm_timeout: float | None, heartbeat_timeout: float = 0.0) -> float:
    """Beat often enough that a silence of min(comm_timeout, heartbeat_timeout) spans several beats."""
    bounds = [1.0] + [t / 20 for t in (comm_timeout,) if t] + [t / 4 for t in (heartbeat_timeout,) if t]
    return max(0.05, min(bounds))


def start(*, rank: int, world_size: int, period: float) -> Heartbeat | None:
    """Start this process's heartbeat on the rendezvous store in MASTER_ADDR/MASTER_PORT (replacing a previous
    one); None when those are not set (a process group made some other way: no names, only the timeout)."""
    global _current
    stop()
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port:
        return None
    _current = Heartbeat(rank=rank, world_size=world_size, host=host, port=int(port), period=period).start()
    return _current


def current() -> Heartbeat | None:
    return _current


def stop() -> None:
    global _current
    if _current is not None:
        _current.stop()
        _current = None
