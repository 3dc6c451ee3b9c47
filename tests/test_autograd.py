"""The autograd core and modules: graph order, accumulation, no_grad, freeing, state dicts, flat
parameter buffers."""
import numpy as np
import pytest

from fastcpu import nn
from fastcpu.autograd import Function, Tensor, no_grad
from fastcpu.nn import functional as F


def test_diamond_graph_accumulates_both_paths():
    # y = relu(x) used twice: L = sum(y + 3*y) -> dL/dx = 4 * (x > 0)
    x = Tensor(np.array([-1.0, 2.0, 3.0], np.float32), requires_grad=True)
    y = F.relu(x)
    z = y + y * 3.0
    z.backward(np.ones(3, np.float32))
    np.testing.assert_array_equal(x.grad, [0, 4, 4])


def test_deep_chain_is_iterative():
    """A 5000-node chain would blow Python's recursion limit if backward recursed."""
    x = Tensor(np.ones(4, np.float32), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0
    y.backward(np.ones(4, np.float32))
    np.testing.assert_array_equal(x.grad, np.ones(4))


def test_no_grad_records_nothing():
    lin = nn.Linear(3, 2)
    with no_grad():
        y = lin(Tensor(np.ones((1, 3), np.float32)))
    assert y._node is None and not y.requires_grad


def test_saved_arrays_are_freed_after_backward():
    class Probe(Function):
        ctx_ref = None

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x * 2)
            Probe.ctx_ref = ctx
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return (g * 2,)
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    Probe.apply(x).backward(np.ones(3, np.float32))
    assert Probe.ctx_ref.saved_tensors == () and Probe.ctx_ref.inputs == ()
    np.testing.assert_array_equal(x.grad, [2, 2, 2])


def test_needs_input_grad_skips_work():
    lin = nn.Linear(4, 2)
    x = Tensor(np.ones((3, 4), np.float32))          # input needs no grad
    lin(x).backward(np.ones((3, 2), np.float32))
    assert x.grad is None
    np.testing.assert_array_equal(lin.bias.grad, [3, 3])


def test_backward_count_mismatch_is_an_error():
    class Bad(Function):
        @staticmethod
        def forward(ctx, x, y):
            return x + y

        @staticmethod
        def backward(ctx, g):
            return (g,)
    x = Tensor(np.ones(2, np.float32), requires_grad=True)
    with pytest.raises(RuntimeError, match="1 grads for 2 positional inputs"):
        Bad.apply(x, x).backward(np.ones(2, np.float32))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.frozen = nn.Parameter(np.arange(3, dtype=np.float32), requires_grad=False)
        self.lin = nn.Linear(3, 3)
        self.bn = nn.BatchNorm1d(3)
        self.stack = nn.ModuleList([nn.LayerNorm(3), nn.Linear(3, 2)])


def test_state_dict_order_names_and_modes():
    m = Block()
    assert list(m.state_dict()) == [
        "frozen", "lin.weight", "lin.bias", "bn.weight", "bn.bias", "bn.running_mean",
        "bn.running_var", "bn.num_batches_tracked", "stack.0.weight", "stack.0.bias",
        "stack.1.weight", "stack.1.bias"]
    assert [n for n, _ in m.named_parameters()][:3] == ["frozen", "lin.weight", "lin.bias"]
    m.eval()
    assert not m.bn.training and not m.stack[1].training
    m.train()
    assert m.stack[0].training


def test_load_state_dict_is_strict_and_names_every_problem():
    m = Block()
    sd = {k: v.copy() for k, v in m.state_dict().items()}
    del sd["lin.bias"]
    sd["extra.weight"] = np.zeros(2)
    sd["stack.1.weight"] = np.zeros((3, 3))
    with pytest.raises(KeyError) as e:
        m.load_state_dict(sd)
    msg = str(e.value)
    assert "missing keys (1): lin.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "stack.1.weight: expected (2, 3), got (3, 3)" in msg


def test_flat_buffers_are_views_and_survive_load():
    m = Block()
    buf = nn.flatten_parameters(m)
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert len(buf) == sum(p.data.size for p in trainable)
    assert all(np.shares_memory(p.data, buf.data) for p in trainable)
    assert all(np.shares_memory(p.grad, buf.grad) for p in trainable)
    assert not np.shares_memory(m.frozen.data, buf.data)
    sd = {k: np.full_like(v, 0.5) for k, v in m.state_dict().items()}
    m.load_state_dict(sd)
    assert np.all(buf.data == 0.5)                # loaded in place, views intact
    x = Tensor(np.ones((2, 3), np.float32))
    m.stack[1](m.lin(x)).backward(np.ones((2, 2), np.float32))
    assert buf.grad.any()
    buf.zero_grad()
    assert not buf.grad.any()


def test_dropout_module_train_eval():
    nn.init.manual_seed(0)
    d = nn.Dropout(0.5)
    x = Tensor(np.ones((100, 100), np.float32))
    assert (d(x).data == 0).mean() == pytest.approx(0.5, abs=0.03)
    d.eval()
    assert d(x) is x
    with pytest.raises(ValueError):
        nn.Dropout(1.0)


def test_rng_state_round_trip_gives_same_masks():
    nn.init.manual_seed(3)
    st = nn.init.get_state()
    a = [nn.init.next_dropout_seed() for _ in range(3)]
    nn.init.set_state(st)
    assert [nn.init.next_dropout_seed() for _ in range(3)] == a


def test_linear_cat_equals_separate_linears():
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((2, 5, 6)).astype(np.float32)
    params = [Tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True)
              for s in [(4, 6), (4,), (3, 6), (3,)]]
    x = Tensor(x0.copy(), requires_grad=True)
    y = F.linear_cat(x, *params)
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    got = [x.grad] + [p.grad for p in params]
    x2 = Tensor(x0.copy(), requires_grad=True)
    ps = [Tensor(p.data.copy(), requires_grad=True) for p in params]
    y0, y1 = F.linear(x2, ps[0], ps[1]), F.linear(x2, ps[2], ps[3])
    np.testing.assert_allclose(y.data, np.concatenate([y0.data, y1.data], -1), rtol=1e-5,
                               atol=1e-6)
    from fastcpu.autograd import backward
    backward([y0, y1], [np.ascontiguousarray(g[..., :4]), np.ascontiguousarray(g[..., 4:])])
    for a, b in zip(got, [x2.grad] + [p.grad for p in ps]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pairs"):
        F.linear_cat(x, params[0], params[1], params[2])


def test_attention_packed_equals_separate_q_k_v():
    """One autograd Function serves both call forms: q, k, v apart, or packed in one tensor whose
    slices the kernel reads (and whose gradient it writes) in place."""
    from fastcpu.autograd import backward
    rng = np.random.default_rng(4)
    B, T, H, D = 2, 9, 2, 4
    qkv0 = rng.standard_normal((B, T, 3, H, D)).astype(np.float32)
    g = rng.standard_normal((B, T, H, D)).astype(np.float32)
    L = np.array([9, 5])
    packed = Tensor(qkv0.copy(), requires_grad=True)
    y = F.attention_packed(packed, L)
    backward([y], [g])
    parts = [Tensor(np.ascontiguousarray(qkv0[:, :, i]), requires_grad=True) for i in range(3)]
    y2 = F.attention(*parts, L)
    backward([y2], [g])
    np.testing.assert_allclose(y.data, y2.data, rtol=1e-6, atol=1e-6)
    for i, p in enumerate(parts):
        np.testing.assert_allclose(packed.grad[:, :, i], p.grad, rtol=1e-5, atol=1e-6)
    assert np.abs(packed.grad).max() > 0
