"""Optimizer and learning-rate schedules over the flat parameter/gradient buffers.

``Adam`` runs the fused clip+Adam kernel over one ``ParameterBuffer`` (DESIGN.md): one pass for
the global norm, one for clip + update. The scalar maths (schedule, bias corrections, clip
coefficient) stays in Python. Schedules are functions of the update count ``t`` (1 for the first
update), like the reference's ``ScheduledOptim`` which increments ``current_step`` first.
"""
from __future__ import annotations

import math

import numpy as np

from fastcpu import kernels
from fastcpu.config import OptimizerConfig
from fastcpu.nn.module import ParameterBuffer


class Schedule:
    """lr(t) for update t >= 1."""

    def __init__(self, cfg: OptimizerConfig, hidden: int):
        self.cfg = cfg
        self.init_lr = cfg.lr if cfg.lr is not None else hidden ** -0.5
        self.kind = cfg.schedule

    def __call__(self, t: int) -> float:
        c = self.cfg
        if t < 1:
            raise ValueError("schedule: updates count from 1")
        if self.kind == "noam":            # the reference: init_lr * min(t^-0.5, w^-1.5 t) * anneal
            scale = min(t ** -0.5, c.warm_up_step ** -1.5 * t) if c.warm_up_step else t ** -0.5
            for s in c.anneal_steps:
                if t > s:
                    scale *= c.anneal_rate
            return self.init_lr * scale
        warm = min(1.0, t / c.warm_up_step) if c.warm_up_step else 1.0
        if self.kind == "constant":
            return self.init_lr * warm
        if self.kind == "exponential":     # linear warm-up, then lr * decay_rate^(t - warm-up)
            return self.init_lr * warm * c.decay_rate ** max(0, t - c.warm_up_step)
        # cosine: linear warm-up, then half a cosine from init_lr to min_lr at total_step
        if t <= c.warm_up_step:
            return self.init_lr * warm
        span = max(1, c.total_step - c.warm_up_step)
        frac = min(1.0, (t - c.warm_up_step) / span)
        return c.min_lr + 0.5 * (self.init_lr - c.min_lr) * (1 + math.cos(math.pi * frac))


class Adam:
    """torch.optim.Adam + clip_grad_norm_ semantics, fused, on one flat buffer.

    ``step()`` returns ``(norm, lr, stepped)``: the pre-clip gradient norm, the learning rate used,
    and whether an update happened (a non-finite norm skips it and leaves ``t`` unchanged).
    """

    def __init__(self, buffer: ParameterBuffer, cfg: OptimizerConfig, hidden: int = 256,
                 backend: str = "auto"):
        cfg.validate()
        self.buffer = buffer
        self.cfg = cfg
        self.schedule = Schedule(cfg, hidden)
        self.m = np.zeros_like(buffer.data)
        self.v = np.zeros_like(buffer.data)
        self.t = 0
        self.kernel = kernels.get("adam", backend)

    def lr_at(self, t: int) -> float:
        return self.schedule(t)

    def step(self):
        c = self.cfg
        lr = self.schedule(self.t + 1)
        norm = self.kernel.clip_adam(self.buffer.data, self.buffer.grad, self.m, self.v,
                                     step=self.t + 1, lr=lr, beta1=c.betas[0], beta2=c.betas[1],
                                     eps=c.eps, weight_decay=c.weight_decay,
                                     max_norm=c.grad_clip_thresh)
        if not math.isfinite(norm):
            return norm, lr, False
        self.t += 1
        return norm, lr, True

    def zero_grad(self):
        self.buffer.zero_grad()

    # -- state: per-parameter moments by name (what checkpoints and the converter use) ---------
    def state_tensors(self) -> dict:
        out = {}
        for name, p, a, b in zip(self.buffer.names, self.buffer.params, self.buffer.offsets[:-1],
                                 self.buffer.offsets[1:]):
            out[f"exp_avg/{name}"] = self.m[a:b].reshape(p.shape)
            out[f"exp_avg_sq/{name}"] = self.v[a:b].reshape(p.shape)
        return out

    def load_state_tensors(self, tensors: dict, t: int) -> None:
        missing = [n for n in self.buffer.names if f"exp_avg/{n}" not in tensors
                   or f"exp_avg_sq/{n}" not in tensors]
        if missing:
            raise KeyError(f"optimizer state lacks moments for {len(missing)} parameters, e.g. "
                           f"{missing[0]}")
        for name, a, b in zip(self.buffer.names, self.buffer.offsets[:-1],
                              self.buffer.offsets[1:]):
            self.m[a:b] = np.asarray(tensors[f"exp_avg/{name}"], np.float32).reshape(-1)
            self.v[a:b] = np.asarray(tensors[f"exp_avg_sq/{name}"], np.float32).reshape(-1)
        self.t = int(t)
