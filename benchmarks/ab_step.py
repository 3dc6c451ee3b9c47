"""A/B two backend choices of one kernel inside whole FastSpeech2 training steps.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/ab_step.py \\
        --kernel conv1d --backends dispatch,numba --batch 8 --phonemes 40-60 --steps 8

Builds the LJSpeech-config model once and times full training steps (forward, loss, backward,
clip + Adam), switching the kernel's ``auto`` choice between the two backends before every step
(A B A B ...), so both see the same machine state. Isolated kernel benchmarks miss effects that
only show in a step (e.g. two BLAS thread pools taking turns); this measures them.
"""
from __future__ import annotations

import argparse
import importlib
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", required=True, help="kernel module, e.g. conv1d, attention")
    ap.add_argument("--backends", help="two backends, comma-separated")
    ap.add_argument("--attr", help="instead of backends: a module constant to alternate, e.g. "
                    "FIR_DEPTH2_MIN_ROWS (with --values)")
    ap.add_argument("--values", help="two int values for --attr, comma-separated")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--phonemes", default="40-60")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per backend")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", default=None, help="default: configs/ljspeech.yaml")
    a = ap.parse_args(argv)
    from pathlib import Path

    from fastcpu import kernels, runtime
    from fastcpu.bench import FastcpuSide, make_batch, parse_range
    from fastcpu.config import load_config
    mod = importlib.import_module(f"fastcpu.kernels.{a.kernel}")
    if (a.backends is None) == (a.attr is None) or (a.attr is None) != (a.values is None):
        ap.error("give either --backends A,B or --attr NAME --values A,B")
    backs = (a.backends or a.values).split(",")
    if len(backs) != 2:
        ap.error("--backends / --values take exactly two")
    cfg = load_config(a.config or Path(__file__).resolve().parent.parent / "configs" /
                      "ljspeech.yaml")
    lo, hi = (int(v) for v in parse_range(a.phonemes).split("-"))
    batch = make_batch(a.batch, (lo, hi), 0)
    name = a.attr or "AUTO"
    original = getattr(mod, name)

    def use(be):
        setattr(mod, name, be if a.attr is None else int(be))
        kernels.get.cache_clear()

    try:
        with runtime.threads(a.threads), runtime.keep_memory():
            print(runtime.format_info())
            side = FastcpuSide(cfg, None, batch)
            for be in backs:                 # warm-up: compile / first touch for both
                use(be)
                side.step()
            times = {be: [] for be in backs}
            for _ in range(a.steps):
                for be in backs:
                    use(be)
                    t = time.perf_counter()
                    side.step()
                    times[be].append(time.perf_counter() - t)
    finally:
        use(original)
    med = {be: float(np.median(v)) for be, v in times.items()}
    for be in backs:
        print(f"{a.kernel} {name}={be:<10} median {med[be]:.3f} s   "
              f"{' '.join(f'{x:.3f}' for x in times[be])}")
    print(f"{backs[1]} / {backs[0]}: {med[backs[1]] / med[backs[0]]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
