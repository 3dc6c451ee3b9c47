"""Module, Parameter, state_dict, and the flat parameter/gradient buffers.

State-dict order follows PyTorch: for each module, its own parameters, then its own buffers, then
its children in registration order. ``load_state_dict`` is strict and names every missing,
unexpected or mis-shaped key.

``flatten_parameters(model)`` moves every trainable parameter into ONE contiguous float32 buffer
and every gradient into another (DESIGN.md): zeroing grads is one memset, the global norm one
reduction, clip+Adam one fused pass. Frozen parameters (requires_grad=False) stay outside.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from fastcpu.autograd import Tensor


class Parameter(Tensor):
    """A Tensor that a Module registers; trainable unless ``requires_grad=False``."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(np.ascontiguousarray(data, dtype=np.float32)
                         if np.asarray(data).dtype.kind == "f" else np.asarray(data),
                         requires_grad=requires_grad)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, requires_grad={self.requires_grad})"


class Module:
    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call Module.__init__() before assigning")
        for d in (self._parameters, self._buffers, self._modules):
            d.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: np.ndarray) -> None:
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- traversal ---------------------------------------------------------------------------
    def named_modules(self, prefix=""):
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop()
            yield name, m
            kids = [(f"{name}.{k}" if name else k, c) for k, c in m._modules.items()]
            stack.extend(reversed(kids))

    def named_parameters(self, prefix=""):
        for name, m in self.named_modules(prefix):
            for k, p in m._parameters.items():
                yield (f"{name}.{k}" if name else k), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def children(self):
        return list(self._modules.values())

    # -- modes -------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    # -- state dict --------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        out = OrderedDict()
        for name, m in self.named_modules():
            pre = f"{name}." if name else ""
            for k, p in m._parameters.items():
                out[pre + k] = p.data
            for k, b in m._buffers.items():
                out[pre + k] = b
        return out

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy ``state`` into this module's arrays in place (flat-buffer views stay valid)."""
        slots = self.state_dict()           # the live arrays, by name
        missing = [k for k in slots if k not in state]
        unexpected = [k for k in state if k not in slots]
        shapes = [f"{k}: expected {tuple(slots[k].shape)}, got {tuple(np.shape(state[k]))}"
                  for k in slots if k in state and tuple(np.shape(state[k])) != slots[k].shape]
        problems = []
        if strict and missing:
            problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if shapes:
            problems.append(f"mis-shaped keys ({len(shapes)}): {'; '.join(shapes)}")
        if problems:
            raise KeyError(f"load_state_dict for {type(self).__name__}: " + " | ".join(problems))
        for k, dst in slots.items():
            if k in state:
                dst[...] = np.asarray(state[k], dtype=dst.dtype)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.data.size for p in self.parameters()
                   if p.requires_grad or not trainable_only)

    def zero_grad(self) -> None:
        for p in self.parameters():
            if p.grad is not None:
                p.grad[...] = 0


class ModuleList(Module):
    def __init__(self, modules=()):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __getitem__(self, i):
        return self._modules[str(i)]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class ParameterBuffer:
    """The flat float32 buffers behind a model's trainable parameters and their gradients."""

    def __init__(self, named):
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        sizes = [p.data.size for p in self.params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        n = int(self.offsets[-1])
        self.data = np.empty(n, np.float32)
        self.grad = np.zeros(n, np.float32)
        for p, a, b in zip(self.params, self.offsets[:-1], self.offsets[1:]):
            self.data[a:b] = p.data.reshape(-1)
            p.data = self.data[a:b].reshape(p.data.shape)
            p.grad = self.grad[a:b].reshape(p.data.shape)

    def __len__(self):
        return self.data.size

    def zero_grad(self) -> None:
        self.grad.fill(0)


def flatten_parameters(module: Module) -> ParameterBuffer:
    """Re-home every trainable parameter of ``module`` into one flat buffer (and grads)."""
    return ParameterBuffer([(n, p) for n, p in module.named_parameters() if p.requires_grad])
