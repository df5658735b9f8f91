"""Step progress from worker processes (sgd_influence/base/progress.py): a loop in a worker reports
its steps to the driver, which shows them under the phase's bar."""
import argparse
import time
import types

from sgd_influence.base import progress
from sgd_influence.pipeline.runner import run_units


def looping_unit(args, k, progress=True):
    """A unit with a loop of 5 steps, as training and the retrace have."""
    from sgd_influence.base.progress import bar
    b = bar(total=5, desc=f"loop {k}", disable=not progress)
    for _ in range(5):
        time.sleep(0.05)
        b.update()
    b.set_postfix(loss="0.1")
    b.close()
    return k


def spy(monkeypatch):
    seen = []
    show = progress.StepBars.show
    monkeypatch.setattr(progress.StepBars, "show", lambda self, msg: (seen.append(msg), show(self, msg)))
    return seen


def test_reporter_throttles_and_always_sends_the_end(monkeypatch):
    """On a freshly booted machine time.monotonic() (seconds since boot on Linux) is small: the first
    update must still be sent, and later ones only after REPORT_S (a fake clock, no real time)."""
    sent, now = [], [5.0]  # five seconds after boot
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(progress, "REPORT_S", 3600.0)
    progress.report_to(sent.append)
    try:
        b = progress.bar(range(7), desc="x")
        assert isinstance(b, progress.Reporter) and list(b) == list(range(7))
    finally:
        progress.report_to(None)
    assert [m["n"] for m in sent] == [1, 7] and sent[-1]["closed"] and sent[-1]["total"] == 7
    assert not isinstance(progress.bar(total=3, desc="here"), progress.Reporter)  # no sender: tqdm
    sent.clear()
    progress.report_to(sent.append)
    try:
        b = progress.bar(total=9, desc="y")
        b.update()
        b.update()  # within REPORT_S of the first: held back
        now[0] += 3600.0
        b.update()  # REPORT_S later: sent
        b.close()
    finally:
        progress.report_to(None)
    assert [m["n"] for m in sent] == [1, 3, 3] and sent[-1]["closed"]


def test_pool_workers_report_their_steps_to_the_driver(monkeypatch):
    seen = spy(monkeypatch)
    args = argparse.Namespace(workers=2, device_id="cpu", scheduler=None)
    run_units([(looping_unit, k) for k in range(3)], args, "loops")
    closed = {m["desc"] for m in seen if m["closed"]}
    assert closed == {"loop 0", "loop 1", "loop 2"}
    assert all(m["n"] == 5 and m["postfix"] == "loss=0.1" for m in seen if m["closed"])
    assert len({m["worker"] for m in seen}) >= 1


def test_no_reports_when_progress_is_off(monkeypatch):
    seen = spy(monkeypatch)
    args = argparse.Namespace(workers=2, device_id="cpu", scheduler=None)
    run_units([(looping_unit, k) for k in range(2)], args, "loops", progress=False)
    assert seen == []
