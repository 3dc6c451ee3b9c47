"""Fault injection for the trainer's tests (``python -m fastcpu.train --debug-fault ...``, a
hidden flag): a small object the training loop calls at fixed points, so no test branch sits
inside the accumulation maths."""
from __future__ import annotations

from fastcpu.startup import UsageError


class Faults:
    """Test hooks (``--debug-fault``): ``nan@K[:M]`` poisons the mel loss weight of steps K..M,
    ``exception@K`` raises after the last forward pass of step K, ``after-update@K`` once step
    K's update is done (before its validation and checkpoints), ``in-validation@K`` and
    ``in-save@K`` inside step K's validation or its (non-emergency) checkpoint write. A suffix
    ``/rN`` (``exception@5/r1``) arms it on data-parallel rank N only."""
    KINDS = ("nan", "exception", "after-update", "in-validation", "in-save")

    def __init__(self, text=None):
        self.kind, self.a, self.b = None, 0, -1
        if text and "/r" in text:
            text, _, rank = text.partition("/r")
            from fastcpu import distributed
            if not rank.isdigit():
                raise UsageError(f"--debug-fault: /r{rank}: expected /rN, a rank number")
            if int(rank) != distributed.world().rank:
                text = None
        if text:
            kind, _, at = text.partition("@")
            a, _, b = at.partition(":")
            if kind not in self.KINDS or not a.isdigit() or not (b or "0").isdigit():
                raise UsageError(f"--debug-fault {text!r}: expected exception@K, "
                                 f"after-update@K or nan@K[:M]")
            self.kind, self.a = kind, int(a)
            self.b = int(b or (a if kind != "nan" else 10 ** 9))

    def weights(self, step_no: int, w: dict) -> dict:
        if self.kind == "nan" and self.a <= step_no <= self.b:
            w["mel"] = float("nan")
        return w

    def after_forward(self, step_no: int, last: bool) -> None:
        if self.kind == "exception" and step_no == self.a and last:
            raise RuntimeError(f"injected fault in step {step_no} (--debug-fault)")

    def after_update(self, step: int) -> None:
        if self.kind == "after-update" and step == self.a:
            raise RuntimeError(f"injected fault after the update of step {step} (--debug-fault)")

    def at(self, where: str, step: int) -> None:
        """``where``: "in-validation" or "in-save"."""
        if self.kind == where and step == self.a:
            raise RuntimeError(f"injected fault {where} of step {step} (--debug-fault)")
