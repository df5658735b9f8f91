"""Running independent units: in this process, or in a pool of worker processes.

A unit is a tuple (fn, *rest); running it calls fn(args, *rest, progress=...). Every unit
writes its own output file atomically, so the caller decides what is left to do by which
files exist, and a unit's result does not depend on where or beside what it ran. Workers
report their loops' steps (progress.py) through a queue; a thread here shows them below the
phase's bar.
"""
from __future__ import annotations

import multiprocessing as mp
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, List, Optional

from tqdm import tqdm

from .cluster import run_units as run_on_cluster
from ..base.progress import StepBars, report_to
from ..config.settings import set_context

def run_units(units: List[tuple], args, desc: str, on_result: Optional[Callable] = None, progress: bool = True,
              **inline) -> None:
    """Run fn(args, *rest) for every unit (fn, *rest), in-process or in a process pool of
    args.workers; on_result(unit, value), if given, in this process as each unit finishes.
    `inline` keyword arguments go to in-process calls only (workers build theirs from args)."""
    if not units:
        return
    if getattr(args, "scheduler", None):
        run_on_cluster(units, args, desc, on_result, progress)
        return
    if args.workers == 1 or len(units) == 1:
        for u in tqdm(units, desc=desc, unit="unit", disable=not progress or len(units) == 1):
            value = u[0](args, *u[1:], progress=progress, **inline)
            if on_result:
                on_result(u, value)
        return
    ctx = mp.get_context("spawn")
    # A SimpleQueue's put writes to the pipe before it returns (a Queue's is flushed later by a
    # thread): a worker's last message is in the pipe before its unit's result reaches us, so
    # the None put after the last result comes after every message.
    steps = ctx.SimpleQueue() if progress else None
    bars = StepBars(progress)
    reader = threading.Thread(target=show_steps, args=(steps, bars), daemon=True) if steps else None
    pool = ProcessPoolExecutor(min(args.workers, len(units)), mp_context=ctx,
                               initializer=init_worker, initargs=(args.device_id, steps))
    try:
        if reader:
            reader.start()
        futures = {pool.submit(u[0], args, *u[1:], progress=progress): u for u in units}
        for f in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="unit", disable=not progress):
            value = f.result()
            if on_result:
                on_result(futures[f], value)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # drop queued units; running ones finish cleanly
        raise
    finally:
        if reader:
            steps.put(None)
            reader.join(timeout=5)
        bars.close()
    pool.shutdown()


def init_worker(device_id: str, steps) -> None:
    """A pool process: the nnabla context, and its loops' progress sent to `steps` (a queue)."""
    set_context(device_id)
    if steps is not None:
        report_to(steps.put)


def show_steps(steps, bars: StepBars) -> None:
    """The driver's reader of the workers' progress messages, until None."""
    for msg in iter(steps.get, None):
        bars.show(msg)
