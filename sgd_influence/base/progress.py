"""Progress of the long loops (training, retrace, influence-functions solve), wherever they run.

`bar(...)` is a tqdm bar when the loop runs in the process that owns the terminal. In a worker
(a process of the --workers pool, or a Dask worker) the runner has called `report_to(send)`:
`bar` then returns a `Reporter`, which sends the loop's state -- a dict with the worker, the
bar's description, steps done and total, its postfix, whether it closed -- at most every
`REPORT_S` seconds and when it closes. In the driver `StepBars` shows each running unit's
steps under the phase's bar of units.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import Callable, Dict, Iterable, Optional

from tqdm import tqdm

REPORT_S = 0.5  # at most two messages a second per loop

_send: Optional[Callable[[dict], None]] = None


def report_to(send: Optional[Callable[[dict], None]]) -> None:
    """In a worker: send every loop's progress with `send(message)` (None: tqdm bars again)."""
    global _send
    _send = send


def bar(iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "", unit: str = "step",
        disable: bool = False):
    """A tqdm bar here, or in a worker that reports (`report_to`) a `Reporter` of the same use."""
    if _send is not None and not disable:
        return Reporter(_send, iterable, total, desc, unit)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable)


class Reporter:
    """The part of tqdm's interface the loops use (iterate, update, set_postfix, close),
    sending the state instead of drawing it."""

    def __init__(self, send: Callable[[dict], None], iterable: Optional[Iterable], total: Optional[int],
                 desc: str, unit: str):
        self.send, self.iterable, self.desc, self.unit = send, iterable, desc, unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.postfix, self.closed = 0, "", False
        self.last: Optional[float] = None  # no report yet: the first update is sent, whatever the clock's origin
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update()
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.last is None or time.monotonic() - self.last >= REPORT_S:
            self._report()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._report()

    def _report(self) -> None:
        self.last = time.monotonic()
        try:
            self.send({"worker": self.worker, "desc": self.desc, "unit": self.unit, "n": self.n,
                       "total": self.total, "postfix": self.postfix, "closed": self.closed})
        except Exception:  # progress is a courtesy: a lost message never fails the unit
            pass


class StepBars:
    """The driver's view of the units running in workers: one bar per running loop, below the
    phase's bar (position 0), removed when the loop closes."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bars: Dict[tuple, tqdm] = {}
        self.lock = threading.Lock()  # messages arrive on a reader or event-loop thread

    def show(self, msg: dict) -> None:
        if not self.enabled:
            return
        key = (msg["worker"], msg["desc"])
        with self.lock:
            b = self.bars.get(key)
            if b is None:
                if msg["closed"]:
                    return
                used = {x.pos for x in self.bars.values()}
                pos = next(p for p in range(1, len(self.bars) + 2) if p not in used and -p not in used)
                b = self.bars[key] = tqdm(total=msg["total"], desc=f"  {msg['desc']}", unit=msg["unit"],
                                          position=pos, leave=False)
            b.n = msg["n"]
            b.set_postfix_str(msg["postfix"], refresh=False)
            b.refresh()
            if msg["closed"]:
                b.close()
                del self.bars[key]

    def close(self) -> None:
        with self.lock:
            for b in self.bars.values():
                b.close()
            self.bars.clear()
