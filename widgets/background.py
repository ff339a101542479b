"""What the Lab and the run panel share: training in a background thread that Stop ends after its current step
(the run keeps its rows) and `wait` joins. A widget sets `stop_message` and has `_set_status(text)`."""
from __future__ import annotations

import threading


class BackgroundRun:
    stop_message = "stopping…"
    _thread: threading.Thread | None = None
    _stop: threading.Event = threading.Event()  # replaced by a fresh one for every run (`_start`)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _start(self, target, args: tuple, *, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=target, args=args, daemon=True, name=name)
        self._thread.start()

    def stop(self) -> None:
        """End the current run (and sweep) after its current step or round; it keeps what it finished."""
        if self.running:
            self._stop.set()
            self._set_status(self.stop_message)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current run ends (True) or `timeout` seconds pass (False)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running
