"""The vocabulary's tensor functions for batched values (nldsl/language/builtins.py names them).

Each function takes the `nb` batch dims of its frame, so that reductions "over all elements"
(`dot`, `l2`) reduce one unit's value dims and never the batch. Elementwise and last-dim
functions ignore `nb`. Hyper-parameters and other Python numbers pass through `math`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

class SpecUseError(Exception):
    """A use of a built-in that the spec's shapes make impossible (rope on an odd width, a
    query and key of different widths), found when a tensor first flows: the compiled module's
    probe turns it into a located NLDSLCompileError at `node`."""

    def __init__(self, node, message: str, expected: str, hint: str):
        super().__init__(message)
        self.node, self.message, self.expected, self.hint = node, message, expected, hint


#: rmsnorm's and layernorm's epsilon inside the root, flash-linear-attention's default norm_eps.
NORM_EPS = 1e-5
#: l2norm divides by max(||a||, L2NORM_EPS), as the optimizer kernels do.
L2NORM_EPS = 1e-12

#: The built-ins of shape class "elementwise" (nldsl/language/builtins.py): (on a tensor, on a number).
ELEMENTWISE = {
    "sqrt": (torch.sqrt, math.sqrt), "exp": (torch.exp, math.exp), "log": (torch.log, math.log),
    "abs": (torch.abs, abs), "sign": (torch.sign, lambda a: float((a > 0) - (a < 0))),
    "tanh": (torch.tanh, math.tanh),
    "sigmoid": (torch.sigmoid, lambda a: 1 / (1 + math.exp(-a))),
    "softplus": (F.softplus, lambda a: math.log1p(math.exp(-abs(a))) + max(a, 0.0)),
    "relu": (torch.relu, lambda a: max(a, 0.0)),
    "gelu": (F.gelu, lambda a: 0.5 * a * (1 + math.erf(a / math.sqrt(2)))),
    "silu": (F.silu, lambda a: a / (1 + math.exp(-a))),
}


def as_tensors(a, b, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides as tensors, a number as a 0-d tensor on `like`'s device: a float in `like`'s
    dtype when that is floating (0.01 beside a float64 W is float64's 0.01, not float32's),
    else in the default one; an int or bool as torch makes it."""
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    as_tensor = lambda v: v if isinstance(v, torch.Tensor) else torch.tensor(
        v, dtype=dtype if isinstance(v, float) else None, device=like.device)
    return as_tensor(a), as_tensor(b)


def l2norm(a: torch.Tensor) -> torch.Tensor:
    """a / max(||a||_2, eps) over the last dim, as a * rsqrt(max(||a||^2, eps^2)): products
    instead of divisions, whose backward costs three more passes over `a`."""
    return a * torch.rsqrt(a.pow(2).sum(-1, keepdim=True).clamp(min=L2NORM_EPS ** 2))


def rmsnorm(a: torch.Tensor, eps: float | str = NORM_EPS) -> torch.Tensor:
    """a / sqrt(mean(a^2) + eps) over the last dim (no learned scale); eps "machine" is the
    dtype's machine epsilon, torch's nn.RMSNorm default (titans-pytorch's store and retrieve
    norms)."""
    eps = torch.finfo(a.dtype).eps if eps == "machine" else eps
    return a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + eps)


def layernorm(a: torch.Tensor) -> torch.Tensor:
    """(a - mean) / sqrt(var + eps) over the last dim (biased variance, no learned scale)."""
    centred = a - a.mean(-1, keepdim=True)
    return centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + NORM_EPS)


#: The built-ins of the shape classes builtins.LAST_DIM_SHAPES: functions of the last dim(s).
LAST_DIM = {
    "l2norm": l2norm, "rmsnorm": rmsnorm, "layernorm": layernorm,
    "softmax": lambda a: a.softmax(-1),
    "norm": lambda a: a.norm(dim=-1, keepdim=True),
    "sum": lambda a: a.sum(-1, keepdim=True),
    "mean": lambda a: a.mean(-1, keepdim=True),
    "transpose": lambda a: a.transpose(-1, -2),
    "trace": lambda a: a.diagonal(0, -2, -1).sum(-1),
}


def stopgrad(a):
    """a, cut from the autograd graph (a number is a constant already)."""
    return a.detach() if isinstance(a, torch.Tensor) else a


def value_sum(a: torch.Tensor, nb: int) -> torch.Tensor:
    """Sum over the value dims (everything after the `nb` batch dims)."""
    return a.sum(tuple(range(nb, a.ndim))) if a.ndim > nb else a


def dot(a, b, nb: int):
    """<a, b> over one unit's elements."""
    return value_sum(a * b, nb)


def l2(a, b, nb: int):
    """1/2 ||a - b||^2 over one unit's elements."""
    return 0.5 * value_sum((a - b) ** 2, nb)


def lp(a, b, p, nb: int):
    """1/p sum |a - b|^p (Miras' l_p attentional bias)."""
    return value_sum((a - b).abs() ** p, nb) / p


def huber(a, b, delta, nb: int):
    """sum of 1/2 r^2 where |r| <= delta, else delta (|r| - delta / 2); r = a - b."""
    r = (a - b).abs()
    return value_sum(torch.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta)), nb)


def orthogonality(a, nb: int):
    """1/2 ||a^T a - I||_F^2 of one unit's matrix (eq. 43)."""
    gram = a.transpose(-1, -2) @ a
    eye = torch.eye(gram.shape[-1], dtype=a.dtype, device=a.device)
    return 0.5 * value_sum((gram - eye) ** 2, nb)


def outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a b^T over the last dims: [.., n], [.., m] -> [.., n, m]."""
    return a.unsqueeze(-1) * b.unsqueeze(-2)


def matmul(a: torch.Tensor, b: torch.Tensor, rank_a: int, rank_b: int) -> torch.Tensor:
    """torch.matmul's rules on value dims, batch dims broadcast: x @ W, M @ k, A @ B, u @ w."""
    if rank_a == 1 and rank_b == 1:
        return (a * b).sum(-1)
    if rank_a == 1:
        if _shared(b, rank_b, a.ndim - 1):                       # x @ W with W a parameter:
            return a @ b.reshape(b.shape[-2:])                     # one GEMM, not one per unit
        return (a.unsqueeze(-2) @ b).squeeze(-2)
    if rank_b == 1:
        if _shared(a, rank_a, b.ndim - 1):
            return b @ a.reshape(a.shape[-2:]).mT
        return (a @ b.unsqueeze(-1)).squeeze(-1)
    return a @ b


def _shared(matrix: torch.Tensor, rank: int, vector_batch_dims: int) -> bool:
    """A matrix whose batch dims are all 1 (a lifted parameter), no more of them than the
    vector's: the same for every unit, so the product broadcasts as one plain matmul."""
    nb = matrix.ndim - rank
    return rank == 2 and nb <= vector_batch_dims and all(s == 1 for s in matrix.shape[:nb])


def causal_conv(a: torch.Tensor, kernel: torch.Tensor, cache: torch.Tensor):
    """Depthwise causal convolution over time: y_t[c] = sum_j kernel[c, j] a_{t-W+1+j}[c].

    a: [B, T, C], kernel: [C, W], cache: [B, W-1, C] (the inputs before a[:, 0], zeros at the
    start of a stream). Returns (y [B, T, C], the new cache: the last W-1 inputs).

    W shifted multiply-adds into one output (addcmul_ in place: autograd keeps only the shifted
    inputs and the kernel). Measured at [2, 1024, 256], W 4, with the SiLU after it: level with
    F.conv1d(groups=C) forward and faster with backward, and the output stays [B, T, C]
    contiguous (conv1d's is channels-first, which the head split would copy)."""
    width = kernel.shape[1]
    padded = torch.cat([cache, a], dim=1)                       # [B, W-1+T, C]
    steps = a.shape[1]
    y = padded[:, :steps] * kernel[:, 0]                        # [B, T, C]
    for j in range(1, width):
        y = y.addcmul_(padded[:, j:j + steps], kernel[:, j])
    return y, padded[:, padded.shape[1] - (width - 1):]
