"""A thin tape: Tensor, Function (ctx.save_for_backward), iterative backward, no_grad.

Nodes are coarse (Linear, Conv1d, fused residual+dropout+LayerNorm, Attention, ...): each
``Function`` subclass implements ``forward(ctx, *args)`` on NumPy arrays and
``backward(ctx, *grad_outputs)`` returning one gradient (or None) per positional argument. Kernels
accumulate, so a backward can ask ``ctx.grad_buffer(i)`` for the buffer to ``+=`` into: for a leaf
parameter that is its ``.grad`` itself (a view into the model's flat gradient buffer), which saves
a pass; returning that same buffer tells the engine it is already accumulated.

Backward walks the graph in reverse topological order with an explicit stack (no recursion), and
drops each node's saved arrays as soon as its backward has run.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from fastcpu import profile as _profile

__all__ = ["Tensor", "Function", "no_grad", "is_grad_enabled"]

_mode = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_mode, "enabled", True)


@contextlib.contextmanager
def no_grad():
    """Record nothing inside (validation, inference)."""
    prev = is_grad_enabled()
    _mode.enabled = False
    try:
        yield
    finally:
        _mode.enabled = prev


class Tensor:
    """A NumPy array plus what autograd needs: ``grad``, ``requires_grad`` and its creator node."""

    __slots__ = ("data", "grad", "requires_grad", "_node", "_index", "__weakref__")

    def __init__(self, data, requires_grad: bool = False):
        self.data = data if isinstance(data, np.ndarray) else np.asarray(data)
        self.grad = None
        self.requires_grad = requires_grad
        self._node = None
        self._index = 0

    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> float:
        return self.data.item()

    def __repr__(self):
        g = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{g})"

    def __add__(self, other):
        return Add.apply(self, other)

    def __mul__(self, scalar):
        return Scale.apply(self, scalar=float(scalar))

    __radd__ = __add__
    __rmul__ = __mul__

    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) * grad into every leaf's ``.grad``."""
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError("backward() without a gradient needs a scalar tensor")
            grad = np.ones_like(self.data)
        backward([self], [grad])


class Context:
    """What a Function node keeps between forward and backward."""

    __slots__ = ("fn", "inputs", "needs_input_grad", "saved_tensors", "n_out", "__dict__")

    def __init__(self, fn, inputs):
        self.fn = fn
        self.inputs = inputs
        self.needs_input_grad = tuple(isinstance(t, Tensor) and t.requires_grad for t in inputs)
        self.saved_tensors = ()
        self.n_out = 1

    def save_for_backward(self, *arrays):
        self.saved_tensors = arrays

    def grad_buffer(self, i):
        """Buffer to accumulate input i's gradient into (its .grad for a leaf, else zeros)."""
        from fastcpu.kernels._common import zeros_like
        t = self.inputs[i]
        if not self.needs_input_grad[i]:
            return zeros_like(np.asarray(t.data if isinstance(t, Tensor) else t))
        if t._node is None:                       # leaf: accumulate in place
            if t.grad is None:
                t.grad = zeros_like(t.data)
            return t.grad
        return zeros_like(t.data)


    def leaf_grad(self, i):
        """A leaf input's .grad to accumulate into, or None: the kernel then writes a fresh
        array (one pass less than zero-filling and accumulating) which backward returns."""
        t = self.inputs[i]
        if isinstance(t, Tensor) and t.requires_grad and t._node is None:
            if t.grad is None:
                t.grad = np.zeros_like(t.data)
            return t.grad
        return None


    def dx_target(self, i):
        """For kernels taking ``dx=None | array | "new"``: None when input i needs no gradient,
        the leaf's .grad to accumulate into, else "new" (the kernel writes a fresh array)."""
        if not self.needs_input_grad[i]:
            return None
        g = self.leaf_grad(i)
        return "new" if g is None else g


class Function:
    """Subclass with ``forward(ctx, *args, **kw)`` and ``backward(ctx, *grads)`` (NumPy arrays).

    Positional arguments may be Tensors (tracked) or anything else; keyword arguments are
    constants. ``backward`` returns one gradient (or None) per positional argument.
    """

    @classmethod
    def apply(cls, *args, **kwargs):
        raw = [a.data if isinstance(a, Tensor) else a for a in args]
        track = is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args)
        ctx = Context(cls, args if track else ())
        prof = _profile._active
        if prof is None:
            out = cls.forward(ctx, *raw, **kwargs)
        else:
            t0 = _profile.time.perf_counter()
            out = cls.forward(ctx, *raw, **kwargs)
            prof.add(cls.__name__.lstrip("_"), "forward", t0, _profile.time.perf_counter(),
                     *_cost(cls, raw, out))
        outs = out if isinstance(out, tuple) else (out,)
        wrapped = []
        for i, o in enumerate(outs):
            t = Tensor(o, requires_grad=track and np.issubdtype(o.dtype, np.floating))
            if t.requires_grad:
                t._node, t._index = ctx, i
            wrapped.append(t)
        ctx.n_out = len(outs)
        if not track:
            ctx.inputs = ()
        return tuple(wrapped) if isinstance(out, tuple) else wrapped[0]


def _accumulate(t: Tensor, g, pending):
    if g is None or not t.requires_grad:
        return
    if t._node is None:
        if t.grad is None:
            t.grad = g.astype(t.data.dtype, copy=True) if g.shape == t.shape else \
                np.broadcast_to(g, t.shape).astype(t.data.dtype)
        elif g is not t.grad:
            t.grad += g
        return
    key = (id(t._node), t._index)
    have = pending.get(key)
    pending[key] = g if have is None else have + g


def backward(roots, grads):
    """Reverse-mode sweep from ``roots`` (with their ``grads``), iterative."""
    # topological order of nodes (parents after children in `order` reversed)
    order, seen = [], set()
    stack = [(r._node, False) for r in roots if r._node is not None]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for t in node.inputs:
            if isinstance(t, Tensor) and t._node is not None and id(t._node) not in seen:
                stack.append((t._node, False))
    pending = {}
    for r, g in zip(roots, grads):
        _accumulate(r, np.asarray(g, dtype=r.dtype), pending)
    for node in reversed(order):
        outs = [pending.pop((id(node), i), None) for i in range(node.n_out)]
        if all(o is None for o in outs):
            continue
        outs = [np.zeros(0) if o is None else o for o in outs]
        prof = _profile._active
        if prof is None:
            in_grads = node.fn.backward(node, *outs)
        else:
            t0 = _profile.time.perf_counter()
            in_grads = node.fn.backward(node, *outs)
            prof.add(node.fn.__name__.lstrip("_"), "backward", t0, _profile.time.perf_counter())
        if not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        if len(in_grads) != len(node.inputs):
            raise RuntimeError(f"{node.fn.__name__}.backward returned {len(in_grads)} grads for "
                               f"{len(node.inputs)} positional inputs")
        for t, g in zip(node.inputs, in_grads):
            if isinstance(t, Tensor):
                _accumulate(t, g, pending)
        node.saved_tensors = ()
        node.inputs = ()
        node.__dict__.clear()


def _cost(cls, raw, out):
    """(flops, bytes) of a forward call, where a Function declares ``cost``."""
    f = getattr(cls, "cost", None)
    return f(raw, out) if f is not None else (0, 0)


class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        return a + b

    @staticmethod
    def backward(ctx, g):
        return g, g


class Scale(Function):
    @staticmethod
    def forward(ctx, a, scalar):
        ctx.scalar = scalar
        return a * a.dtype.type(scalar)

    @staticmethod
    def backward(ctx, g):
        return (g * g.dtype.type(ctx.scalar),)
