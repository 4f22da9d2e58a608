"""kilnrt.engine.capture_lock: a capture runs alone, eager runs share, a waiting capture goes
before later eager runs, and a capture's own runs pass through (CPU threads, daemons: a deadlock fails the test instead of
hanging it; the GPU check is benchmarks/stress.py and tests/test_stress_script.py)."""
from __future__ import annotations

import threading
import time

from kilnrt.engine.capture_lock import CaptureLock


def test_eager_runs_share_and_a_capture_waits_for_them():
    lock, log = CaptureLock(), []
    first_in, release = threading.Event(), threading.Event()

    def eager(name):
        with lock.eager():
            log.append(f"{name} in")
            first_in.set()
            release.wait(5)
            log.append(f"{name} out")

    def capture():
        with lock.capture():
            log.append("capture")

    a = threading.Thread(daemon=True, target=eager, args=("a",))
    a.start()
    first_in.wait(5)
    with lock.eager():             # a second eager run enters beside the first
        log.append("b")
    c = threading.Thread(daemon=True, target=capture)
    c.start()
    time.sleep(0.1)
    assert "capture" not in log    # waits for a
    release.set()
    a.join(5)
    c.join(5)
    assert not a.is_alive() and not c.is_alive()
    assert log == ["a in", "b", "a out", "capture"]


def test_a_waiting_capture_goes_before_later_eager_runs():
    lock, log = CaptureLock(), []
    release = threading.Event()
    holding = threading.Event()

    def eager(name, hold=False):
        with lock.eager():
            if hold:
                holding.set()
                release.wait(5)
            log.append(name)

    def capture():
        with lock.capture():
            log.append("capture")

    first = threading.Thread(daemon=True, target=eager, args=("first", True))
    first.start()
    holding.wait(5)
    c = threading.Thread(daemon=True, target=capture)
    c.start()
    time.sleep(0.1)
    later = threading.Thread(daemon=True, target=eager, args=("later",))
    later.start()
    time.sleep(0.1)
    assert log == []
    release.set()
    for t in (first, c, later):
        t.join(5)
    assert not any(t.is_alive() for t in (first, c, later))
    assert log == ["first", "capture", "later"]


def test_a_captures_own_runs_pass_and_a_capture_inside_a_run_is_told_no():
    lock = CaptureLock()
    with lock.capture() as alone:
        assert alone
        with lock.eager():
            pass
        with lock.capture() as again:   # inside a capture: would wait for itself
            assert not again
    with lock.eager():
        with lock.capture() as inside_a_run:   # a plugin's engine inside an eager run
            assert not inside_a_run
    with lock.capture() as alone:   # released: free again
        assert alone


def test_a_run_inside_a_run_passes_while_a_capture_waits():
    lock, log = CaptureLock(), []
    outer_in, go = threading.Event(), threading.Event()

    def outer():
        with lock.eager():
            outer_in.set()
            go.wait(5)
            with lock.eager():   # would deadlock if it queued behind the waiting capture
                log.append("inner")

    def capture():
        with lock.capture():
            log.append("capture")

    a = threading.Thread(daemon=True, target=outer)
    a.start()
    outer_in.wait(5)
    c = threading.Thread(daemon=True, target=capture)
    c.start()
    time.sleep(0.1)
    go.set()
    a.join(5)
    c.join(5)
    assert not a.is_alive() and not c.is_alive()
    assert log == ["inner", "capture"]


def eager_run_held_open(lock):
    """An eager run on another thread, under way when this returns: (its thread, the event
    that ends it)."""
    holding, release = threading.Event(), threading.Event()

    def eager():
        with lock.eager():
            holding.set()
            release.wait(5)

    a = threading.Thread(daemon=True, target=eager)
    a.start()
    holding.wait(5)
    return a, release


def test_a_capture_interrupted_while_waiting_lets_the_eager_runs_go():
    """A capture waiting for an eager run that is interrupted (KeyboardInterrupt in its wait)
    must wake the eager runs that queued behind it."""
    lock, log = CaptureLock(), []

    def later():
        with lock.eager():
            log.append("later")

    a, release = eager_run_held_open(lock)
    calls = {"n": 0}
    real_wait = lock._cond.wait

    def interrupted(timeout=None):
        calls["n"] += 1
        if calls["n"] == 1:   # the capture's first wait
            b.start()
            real_wait(0.3)    # releases the lock a while: b queues behind the waiting capture
            raise KeyboardInterrupt
        return real_wait(timeout)

    b = threading.Thread(daemon=True, target=later)
    lock._cond.wait = interrupted
    try:
        with lock.capture():
            pass
    except KeyboardInterrupt:
        pass
    lock._cond.wait = real_wait
    b.join(2)
    assert log == ["later"] and not b.is_alive()
    release.set()
    a.join(5)


def test_a_run_that_waits_for_a_helper_thread_while_a_capture_waits_does_not_deadlock(caplog):
    """Run A hands work to helper B (a plugin with a thread pool) and waits for it; capture C
    arrives between them.  B would wait for C, C for A, A for B: C, which waited first, gives
    up after ``patience_s`` with a warning (its caller runs eagerly this time), then B and A
    go; the next capture gets in."""
    lock, log = CaptureLock(patience_s=0.3), []
    c_waiting = threading.Event()

    def helper():
        with lock.eager():
            log.append("b")

    def outer():
        with lock.eager():
            c_waiting.wait(5)
            time.sleep(0.05)            # C is now waiting for this run
            b = threading.Thread(daemon=True, target=helper)
            b.start()
            b.join(5)
            log.append("a")

    def capture():
        c_waiting.set()
        with lock.capture() as alone:
            log.append(f"capture {alone}")

    a = threading.Thread(daemon=True, target=outer)
    a.start()
    time.sleep(0.05)
    c = threading.Thread(daemon=True, target=capture)
    t0 = time.monotonic()
    c.start()
    a.join(5)
    c.join(5)
    assert not a.is_alive() and not c.is_alive()
    assert log[-1] == "a" and sorted(log[:2]) == ["b", "capture False"]   # C's append races B
    assert 0.25 < time.monotonic() - t0 < 3 and lock.timeouts == 1
    assert "capture gave up waiting for eager runs" in caplog.text
    with lock.capture() as alone:         # for patience_s after a give-up, captures do not wait
        assert alone is False
    time.sleep(0.35)
    with lock.capture() as alone:
        assert alone is True
    assert lock.timeouts == 1


def test_an_eager_run_goes_beside_a_capture_that_takes_too_long(caplog):
    lock = CaptureLock(patience_s=0.2)
    capturing, release = threading.Event(), threading.Event()

    def capture():
        with lock.capture() as alone:
            assert alone
            capturing.set()
            release.wait(5)

    c = threading.Thread(daemon=True, target=capture)
    c.start()
    capturing.wait(5)
    t0 = time.monotonic()
    with lock.eager():
        waited = time.monotonic() - t0
    release.set()
    c.join(5)
    assert 0.15 < waited < 3 and lock.timeouts == 1
    assert "eager run went on beside a CUDA-graph capture" in caplog.text


def test_a_capture_that_waits_too_long_gives_up_for_this_call():
    lock = CaptureLock(patience_s=0.2)
    a, release = eager_run_held_open(lock)
    with lock.capture() as alone:
        assert alone is False             # the caller runs eagerly this time
    assert lock.timeouts == 1
    with lock.eager():                    # and nothing is left waiting: eager runs go at once
        pass
    release.set()
    a.join(5)
    time.sleep(0.25)
    with lock.capture() as alone:
        assert alone is True


def test_the_wait_limit_comes_from_the_environment(monkeypatch, caplog):
    from kilnrt.engine import capture_lock

    for text, want in [("2.5", 2.5), ("inf", float("inf")), ("0", 10.0), ("-1", 10.0), ("soon", 10.0), ("nan", 10.0)]:
        monkeypatch.setenv("KILNRT_CAPTURE_WAIT_S", text)
        assert CaptureLock().patience_s == want, text
    assert "'soon' is not a number of seconds" in caplog.text
    monkeypatch.delenv("KILNRT_CAPTURE_WAIT_S")
    assert capture_lock.CaptureLock().patience_s == 10.0
    lock = CaptureLock(patience_s=float("inf"))   # no limit: waits without overflowing
    a, release = eager_run_held_open(lock)
    threading.Timer(0.2, release.set).start()
    with lock.capture() as alone:
        assert alone is True
    a.join(5)
