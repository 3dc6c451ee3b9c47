"""Per-step timing: a per-op table and a Chrome/Perfetto trace of any training step.

Every autograd ``Function`` forward and backward is timed while a profiler is active::

    from fastcpu import profile
    with profile.Profiler() as prof:
        loss = model(...); loss.backward(); opt.step()
    print(prof.table())
    prof.write_chrome_trace("trace.json")        # open in https://ui.perfetto.dev

Inactive, the hook costs one attribute check per op. Spans can be added by hand with
``profile.span("optimizer")``.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import defaultdict

_active = None          # the running Profiler, if any
_lock = threading.Lock()


def active():
    return _active


class Profiler:
    def __init__(self):
        self.events = []            # (name, phase, t0, t1, flops, bytes)
        self.t_start = None
        self.t_end = None
        self.paused_s = 0.0         # time spent paused (excluded from the wall time)
        self._paused_at = None

    def _activate(self):
        global _active
        with _lock:
            if _active is not None:
                raise RuntimeError("a profiler is already running")
            _active = self

    def __enter__(self):
        self._activate()
        self.t_start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        global _active
        self.t_end = self._paused_at or time.perf_counter()
        _active = None
        return False

    def pause(self):
        """Stop recording (e.g. between profiled steps); ``wall`` excludes paused time."""
        global _active
        self._paused_at = time.perf_counter()
        _active = None

    def resume(self):
        self._activate()
        self.paused_s += time.perf_counter() - self._paused_at
        self._paused_at = None

    def add(self, name, phase, t0, t1, flops=0, nbytes=0):
        self.events.append((name, phase, t0, t1, flops, nbytes))

    @property
    def wall(self):
        end = self.t_end if self.t_end is not None else time.perf_counter()
        if self._paused_at is not None:
            end = self._paused_at
        return end - self.t_start - self.paused_s

    def summary(self):
        """{(name, phase): [calls, seconds, flops, bytes]}; nested spans are excluded."""
        agg = defaultdict(lambda: [0, 0.0, 0, 0])
        for name, phase, t0, t1, fl, nb in self.events:
            if phase == "span":
                continue
            a = agg[(name, phase)]
            a[0] += 1
            a[1] += t1 - t0
            a[2] += fl
            a[3] += nb
        return dict(agg)

    def table(self, steps: int = 1) -> str:
        agg = self.summary()
        total = sum(v[1] for v in agg.values())
        wall = self.wall
        rows = sorted(agg.items(), key=lambda kv: -kv[1][1])
        out = [f"{'op':<28}{'phase':<10}{'calls':>7}{'total ms':>11}{'% step':>8}{'GFLOP/s':>9}"
               f"{'GB/s':>7}"]
        for (name, phase), (calls, sec, fl, nb) in rows:
            gf = f"{fl / sec / 1e9:9.1f}" if fl and sec else f"{'':>9}"
            gb = f"{nb / sec / 1e9:7.1f}" if nb and sec else f"{'':>7}"
            out.append(f"{name:<28}{phase:<10}{calls:>7}{sec * 1e3:>11.1f}"
                       f"{100 * sec / wall:>7.1f}%{gf}{gb}")
        out.append(f"{'sum of ops':<45}{total * 1e3:>11.1f}{100 * total / wall:>7.1f}%")
        out.append(f"{'measured wall time':<45}{wall * 1e3:>11.1f}  ({steps} step(s))")
        return "\n".join(out)

    def chrome_trace(self) -> dict:
        pid = os.getpid()
        ev = []
        for name, phase, t0, t1, fl, nb in self.events:
            ev.append({"name": name, "cat": phase, "ph": "X", "pid": pid, "tid": 1,
                       "ts": (t0 - self.t_start) * 1e6, "dur": (t1 - t0) * 1e6,
                       "args": {k: v for k, v in (("flops", fl), ("bytes", nb)) if v}})
        return {"traceEvents": ev, "displayTimeUnit": "ms"}

    def write_chrome_trace(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.chrome_trace(), f)


@contextlib.contextmanager
def span(name: str, phase: str = "span"):
    """Time a region by hand (e.g. "optimizer", "data"); shows in the trace, and in the table
    when ``phase`` is not "span"."""
    prof = _active
    if prof is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        prof.add(name, phase, t0, time.perf_counter())


class StepProfiler:
    """Profile ``steps`` training steps, skipping the first step of the process (it compiles)::

        sp = StepProfiler(3, on_done=lambda prof: ...)
        for ...:
            with sp.step():
                train_step()
        sp.close()           # on an early exit: stops a profile still running

    ``on_done(profiler)`` is called once the last profiled step has finished.
    """

    def __init__(self, steps: int, on_done):
        self.left, self.steps, self.on_done = steps, steps, on_done
        self.seen = 0
        self.prof = None

    @contextlib.contextmanager
    def step(self):
        active = self.left > 0 and self.seen >= 1
        if active:
            if self.prof is None:
                self.prof = Profiler().__enter__()
            else:
                self.prof.resume()
        yield                          # (an exception propagates; close() ends the profile)
        self.seen += 1
        if active:
            self.prof.pause()
            self.left -= 1
            if self.left == 0:
                self.prof.__exit__(None, None, None)
                self.on_done(self.prof)

    def close(self) -> None:
        if self.prof is not None and self.left > 0:
            self.prof.__exit__(None, None, None)
            self.left = 0
