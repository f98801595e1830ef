"""Tensor kernels the optimizer compiler calls: the runtime of generated code and of the reference.

Each is a few lines of torch with the math in its docstring; nothing here knows about specs.
"""
from __future__ import annotations

import math

import torch

from nldsl.runtime import functions as vocabulary

#: Muon's quintic coefficients (Keller Jordan), PyTorch's `torch.optim.Muon` defaults.
QUINTIC = (3.4445, -4.7750, 2.0315)
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def newton_schulz(x: torch.Tensor, steps: int = 5, polynomial="quintic", eps: float = 1e-7,
                  precision: str = "float32") -> torch.Tensor:
    """Orthogonalise a matrix: X0 = x / max(||x||_F, eps), then `steps` odd-polynomial steps
    X <- a X + (b A + c A^2) X, A = X X^T, on the wide orientation (rows <= cols), in `precision`.

    `quintic` (or a tuple (a, b, c)) is Muon's iteration, written op for op as PyTorch's Muon
    writes it so the two agree bit for bit (on a contiguous x; any other layout is taken as its
    contiguous copy, so the result depends on x's values only); `cubic` is (3/2, -1/2, 0), eq. 44 with zeta = 1/4 on
    the orthogonality objective alone. The result has x's dtype.
    """
    if x.ndim != 2:
        raise ValueError(f"newton_schulz needs a matrix, got shape {tuple(x.shape)}")
    return _iterate(x, steps, polynomial, eps, precision, torch.addmm)


#: On a CPU one `baddbmm` over G large matrices is slower than G `addmm` calls (each of those is
#: parallel inside; the batched kernel splits the batch over the cores): batch up to this size.
CPU_BATCH_MAX_ELEMENTS = 2**18


def newton_schulz_group(xs: list[torch.Tensor], steps: int = 5, polynomial="quintic",
                        eps: float = 1e-7, precision: str = "float32") -> list[torch.Tensor]:
    """`newton_schulz` of G matrices of one shape, dtype and device: stacked to [G, rows, cols]
    and iterated once for all, each product one `torch.baddbmm`, where batching pays (on a GPU
    always, on a CPU up to `CPU_BATCH_MAX_ELEMENTS` per matrix; docs/performance.md), else
    matrix by matrix. Batched and per-matrix products may round differently."""
    if any(x.ndim != 2 for x in xs):
        raise ValueError(f"newton_schulz needs matrices, got shapes {[tuple(x.shape) for x in xs]}")
    if not xs or any(x.shape != xs[0].shape for x in xs):
        raise ValueError("newton_schulz_group needs matrices of one shape, got shapes "
                         f"{[tuple(x.shape) for x in xs]}")
    if xs[0].device.type == "cpu" and xs[0].numel() > CPU_BATCH_MAX_ELEMENTS:
        return [newton_schulz(x, steps, polynomial, eps, precision) for x in xs]
    return list(_iterate(torch.stack(xs), steps, polynomial, eps, precision, torch.baddbmm))


def newton_schulz_batch(x: torch.Tensor, steps: int = 5, polynomial="quintic", eps: float = 1e-7,
                        precision: str = "float32") -> torch.Tensor:
    """`newton_schulz` of every matrix of x [..., rows, cols] at once (one `baddbmm` per
    product), each matrix normalised by its own Frobenius norm: a module's per-sequence, per-head
    states."""
    if x.ndim < 2:
        raise ValueError(f"newton_schulz needs matrices, got shape {tuple(x.shape)}")
    flat = x.reshape(-1, *x.shape[-2:])                     # [G, rows, cols]
    return _iterate(flat, steps, polynomial, eps, precision, torch.baddbmm).reshape(x.shape)


def _iterate(x, steps, polynomial, eps, precision, multiply_add) -> torch.Tensor:
    """The iteration on [rows, cols] (multiply_add = addmm) or [G, rows, cols] (baddbmm)."""
    a, b, c = _coefficients(polynomial)
    # contiguous: the products' rounding depends on the operands' strides, so a transposed view
    # (a tall matrix's own result) would orthogonalise differently from its contiguous copy
    out = x.to(PRECISIONS[precision]).contiguous()          # [(G,) rows, cols]
    wide = x.size(-2) <= x.size(-1)
    if not wide:
        out = out.mT                                        # [(G,) cols, rows]
    out = out.div(torch.linalg.vector_norm(out, dim=(-2, -1), keepdim=True).clamp(min=eps))
    for _ in range(int(steps)):
        gram = out @ out.mT                                 # [(G,) rows, rows]
        poly = multiply_add(gram, gram, gram, beta=b, alpha=c)
        out = multiply_add(out, poly, out, beta=a)
    if not wide:
        out = out.mT
    return out.to(x.dtype)


def _coefficients(polynomial) -> tuple[float, float, float]:
    if polynomial == "quintic":
        return QUINTIC
    if polynomial == "cubic":
        return (1.5, -0.5, 0.0)
    if isinstance(polynomial, (tuple, list)) and len(polynomial) == 3:
        return tuple(float(v) for v in polynomial)
    raise ValueError(f"newton_schulz polynomial must be 'cubic', 'quintic' or (a, b, c), got {polynomial!r}")


ACTIVATIONS = {"relu": torch.relu, "gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu,
               "tanh": torch.tanh, "sigmoid": torch.sigmoid, "linear": lambda h: h}


class MLP(tuple):
    """An MLP memory's weights [w_{i+1}, w_i] per layer, with its activation and residual flag.

    `m(x)` maps the last dim of x: h <- act(h @ W_i^T) between layers, no activation after the
    last, plus x when residual. A tuple of tensors, so torch.func differentiates it directly.
    """

    activation: str = "gelu"
    residual: bool = False

    def __new__(cls, weights, activation="gelu", residual=False):
        self = super().__new__(cls, weights)
        self.activation, self.residual = activation, residual
        return self

    def like(self, weights) -> "MLP":
        return MLP(weights, self.activation, self.residual)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return mlp_apply(tuple(self), x, self.activation, self.residual)


def mlp_apply(weights, x: torch.Tensor, activation: str, residual: bool) -> torch.Tensor:
    h = x                                                   # [..., d_in]
    for i, weight in enumerate(weights):
        h = h @ weight.T                                    # [..., d_{i+1}]
        if i < len(weights) - 1:
            h = ACTIVATIONS[activation](h)
    return h + x if residual else h


def mlp_init(widths: list[int], activation: str, residual: bool, like: torch.Tensor) -> MLP:
    """Hidden layers N(0, 1/fan_in); the output layer zero, so a fresh memory outputs 0 (or x)."""
    weights = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        if i == len(widths) - 2:
            weights.append(torch.zeros(fan_out, fan_in, dtype=like.dtype, device=like.device))
        else:
            std = 1 / math.sqrt(fan_in)
            weights.append(torch.randn(fan_out, fan_in, dtype=like.dtype, device=like.device) * std)
    return MLP(weights, activation, residual)


def l2norm(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """x / max(||x||, eps) over the last dim."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)


def outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a b^T: vectors [n], [m] -> [n, m]; column matrices [n, 1], [m, 1] -> [n, m]."""
    if a.ndim == 1 and b.ndim == 1:
        return torch.outer(a, b)
    return a @ b.mT


def transpose(x):
    return x.mT if isinstance(x, torch.Tensor) and x.ndim >= 2 else x


def dot(a, b):
    """<a, b> summed over all elements (a 0-d tensor)."""
    return (a * b).sum()


def l2(a, b):
    """1/2 ||a - b||^2."""
    return 0.5 * ((a - b) ** 2).sum()


def orthogonality(x: torch.Tensor) -> torch.Tensor:
    """1/2 ||x^T x - I||_F^2 (eq. 43)."""
    gram = x.mT @ x                                        # [cols, cols]
    return 0.5 * ((gram - torch.eye(gram.size(-1), dtype=x.dtype, device=x.device)) ** 2).sum()


def autograd_step(loss, state, lr, decay):
    """state <- decay state - lr grad loss(state), the gradient by torch.func (any objective)."""
    from torch.func import grad as func_grad

    if isinstance(state, MLP):
        with torch.enable_grad():
            grads = func_grad(lambda ws: loss(state.like(ws)))(tuple(state))
        return state.like([decay * w - lr * g for w, g in zip(state, grads)])
    return decay * state - lr * gradient(loss, state)


def gradient(loss, state: torch.Tensor) -> torch.Tensor:
    """grad loss(state) by torch.func: the update direction a rule chain transforms."""
    from torch.func import grad as func_grad

    with torch.enable_grad():
        return func_grad(loss)(state)


def divide_or_zero(numerator, denominator):
    """numerator / denominator, and 0 where the denominator is 0: `solve`'s S* = w A / (w B + lam)
    (solve.py), where w B + lam = 0 only if the objective is flat in that coordinate (A = 0
    then too) and 0 is its minimum-norm minimiser."""
    if not torch.is_tensor(denominator):
        return numerator / denominator if denominator != 0 else numerator * 0
    return torch.where(denominator == 0, 0.0, numerator / denominator)


def divide_or_zero_each(numerators, denominators) -> list:
    """`divide_or_zero` over lists of tensors (the foreach schedule); a number divides them all."""
    if not isinstance(denominators, (list, tuple)):
        denominators = [denominators] * len(numerators)
    return [divide_or_zero(n, d) for n, d in zip(numerators, denominators)]


def load_mlp(state: dict, name: str, activation: str, residual: bool) -> MLP:
    weights, i = [], 0
    while f"{name}.{i}" in state:
        weights.append(state[f"{name}.{i}"])
        i += 1
    return MLP(weights, activation, residual)


def store_mlp(state: dict, name: str, mlp: MLP) -> None:
    state.update({f"{name}.{i}": w for i, w in enumerate(mlp)})


def size(x: torch.Tensor, dim) -> int:
    """x.size(dim), and a ValueError naming the shape when x has no such dim (Muon's
    `size(W, 1)` on a vector): torch's Muon refuses such parameters with a ValueError too."""
    if not -x.ndim <= int(dim) < x.ndim:
        raise ValueError(f"size(W, {int(dim)}): a tensor of shape {tuple(x.shape)} has no dim "
                         f"{int(dim)} (this optimizer needs parameters with more dims)")
    return x.size(int(dim))


def ndim(x: torch.Tensor) -> int:
    return x.ndim


def norm(x: torch.Tensor) -> torch.Tensor:
    return x.norm(dim=-1, keepdim=True)


def sum(x: torch.Tensor) -> torch.Tensor:  # noqa: A001 - the spec language's name
    return x.sum(-1, keepdim=True)


def mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(-1, keepdim=True)


def trace(x: torch.Tensor) -> torch.Tensor:
    return x.diagonal(0, -2, -1).sum(-1)


def softmax(x: torch.Tensor) -> torch.Tensor:
    return x.softmax(-1)


def unary(name: str, a):
    """An elementwise built-in of a tensor (torch) or of a Python number (math), as the module
    runtime computes it (nldsl/runtime/functions.py), so `sigmoid(lr)` is a number."""
    on_tensor, on_number = vocabulary.ELEMENTWISE[name]
    return on_tensor(a) if torch.is_tensor(a) else on_number(a)


def maximum(a, b):
    """max(a, b) elementwise; a number becomes a 0-d tensor of the other side's dtype and device
    when that side is a tensor (`scalars_like`)."""
    if not torch.is_tensor(a) and not torch.is_tensor(b):
        return max(a, b)
    return torch.maximum(*scalars_like(a, b))


def minimum(a, b):
    if not torch.is_tensor(a) and not torch.is_tensor(b):
        return min(a, b)
    return torch.minimum(*scalars_like(a, b))


def scalars_like(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides as tensors, a number in the tensor side's dtype and device (the module
    runtime's `as_tensors`)."""
    return vocabulary.as_tensors(a, b, a if torch.is_tensor(a) else b)


def clamp(a, low, high):
    """min(max(a, low), high): torch.clamp for a tensor, the same for numbers."""
    return torch.clamp(a, low, high) if torch.is_tensor(a) else min(max(a, low), high)


def stopgrad(a):
    return a.detach() if torch.is_tensor(a) else a


def logical(op: str, a, b):
    """`a and b` / `a or b` where a side is a tensor: elementwise, on bools."""
    a, b = scalars_like(a, b)
    return torch.logical_and(a, b) if op == "and" else torch.logical_or(a, b)


def logical_not(a):
    return torch.logical_not(a) if torch.is_tensor(a) else not a


def where(cond, then, otherwise):
    """`then if cond else otherwise`, elementwise (torch.where, both sides computed) for a
    tensor condition."""
    if not torch.is_tensor(cond):
        return then if cond else otherwise
    return torch.where(cond, then, otherwise)


def apply_memory(memory, x):
    """M(x): an MLP memory maps x; a matrix memory multiplies it (M @ x)."""
    return memory(x) if isinstance(memory, MLP) else memory @ x


def rmsnorm(x):
    return vocabulary.rmsnorm(x)


def layernorm(x):
    return vocabulary.layernorm(x)


def lp(a, b, p):
    """1/p sum |a - b|^p over all elements."""
    return vocabulary.lp(a, b, p, 0)


def huber(a, b, delta):
    """sum of 1/2 r^2 where |r| <= delta, else delta (|r| - delta / 2), r = a - b."""
    return vocabulary.huber(a, b, delta, 0)


def concat(*xs):
    return torch.cat(xs, dim=-1)


def lerp(a, b, w):
    """a + w (b - a): torch.lerp for tensors (PyTorch's ema op)."""
    return torch.lerp(a, b, w) if torch.is_tensor(a) else a + w * (b - a)


def addcmul(s, a, b, w):
    """s + w a b in one op."""
    return torch.addcmul(s, a, b, value=w)
