"""Token-loop oracles for the deep memories, written from the papers' equations (not from nldsl).

A helper module for tests (not collected: its name does not start with `test_`). Each function
is the slowest obviously-correct reading of one paper: a Python loop over tokens, the inner
gradient taken with `torch.autograd.grad` for every token, no closed forms, no scans. The
compiled specs (nldsl/stdlib/{titans,moneta,yaad,memora,atlas}.nl) are tested against these.

Conventions shared by every loop
--------------------------------
- Inputs are per head: keys, values, queries k, v, q [B, H, T, d] (already projected, convolved
  and normalised: the loops are the memory only); gates [B, H, T], one per token and head.
- A memory is a list of layer weights. The initial weights are given per head, each
  [H, d_out, d_in] (or [B, H, d_out, d_in] to continue a stream), applied as `W @ u`:

      MLP(u) = W_L act(W_{L-1} ... act(W_1 u)),    M(u) = u + MLP(u) when `residual`

  (nldsl's `mlp(..., residual)`, docs/language.md; Titans' 2-layer memory). A single layer with
  `residual=False` is the matrix memory M(u) = W u.
- `l2(a, b) = 1/2 ||a - b||^2` (the 1/2 of docs/language.md and of the titans.nl header: the
  papers' factor 2 of ||.||^2 is folded into the learning rate).
- Token t (0-based) belongs to chunk floor(t / b) and its inner gradient is taken at the state
  at the START of that chunk, M_{t'} with t' = b floor(t / b) (Titans eq. 16; see
  `titans_loop` for the paper's off-by-one). A trailing partial chunk is a chunk like any other.
- Reads see the token's own write, y_t = M_t(q_t) (titans.nl header "y_t = M_t(q_t)" and
  docs/language.md: a plain `read` sees the state after this unit's write), unless a loop says
  otherwise.
- Every loop returns (y [B, H, T, d_v], final weights [B, H, d_out, d_in] per layer, final
  momentum or dual state). Outer gradients flow through the writes: the inner gradient is taken
  with `create_graph=True` whenever autograd is recording and an input requires grad.

The loops: `titans_loop` (Titans LMM), `moneta_loop`, `yaad_loop`, `memora_loop` (Miras),
`atlas_loop` (Atlas, with `newton_schulz` and `polynomial_features`). `titans_pytorch_loop` is
different: it reproduces the `titans_pytorch.NeuralMemory` module (v0.5.5) end to end from x
(`titans_pytorch_params` reads a module's tensors), see
../shared/research/titans-pytorch-semantics.md.

Not covered: channel-wise gates (Miras' per-channel eta, alpha). The language defines their
broadcast on an MLP (docs/language.md, "Channel-wise gates": a weight's input channels, else
its output channels), tests/test_validation_memories.py writes that out; the loops take one gate per
token and head.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Weights = list[Tensor]

#: Muon's quintic Newton-Schulz coefficients (Keller Jordan; Atlas "NS-5").
MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


# -- shared pieces -------------------------------------------------------------------------------

def mlp(weights: Sequence[Tensor], u: Tensor, activation: Callable = F.gelu,
        residual: bool = True) -> Tensor:
    """M(u) per batch and head: weights [B, H, d_out, d_in] per layer, u [B, H, d_0] -> [B, H, d_L].
    The activation sits between layers only (none after the last)."""
    h = u
    for i, w in enumerate(weights):
        if i > 0:
            h = activation(h)
        h = torch.einsum("bhoi,bhi->bho", w, h)                          # [B, H, d_out]
    return u + h if residual else h


def expand(weights0: Sequence[Tensor], batch: int) -> Weights:
    """Per-head initial weights [H, o, i] -> [B, H, o, i]; [B, H, o, i] is taken as it is (a
    stream carried over from an earlier call). Values, not views: the loops never write in
    place, but a caller's tensor must not alias the state."""
    return [w.unsqueeze(0).expand(batch, *w.shape).clone() if w.dim() == 3 else w.clone()
            for w in weights0]


def _records(*tensors) -> bool:
    """Whether the inner gradients must be differentiable: outer gradients are wanted."""
    return torch.is_grad_enabled() and any(
        t.requires_grad for t in tensors if isinstance(t, torch.Tensor))


def inner_grad(loss_of: Callable[[Weights], Tensor], at: Sequence[Tensor],
               create_graph: bool) -> Weights:
    """grad_W loss_of(W) at W = `at`, one tensor per weight. `loss_of` returns a scalar summed
    over batch and heads: each (b, h) has its own weights, so the sum's gradient is the
    per-(b, h) gradient. A weight that is not in the outer graph gets a fresh leaf (same value)."""
    with torch.enable_grad():
        ws = [w if w.requires_grad else w.detach().requires_grad_() for w in at]
        loss = loss_of(ws)
        grads = torch.autograd.grad(loss, ws, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for w, g in zip(ws, grads)]


def _gate(g: Tensor, t: int, extra_dims: int = 2) -> Tensor:
    """Token t's gate [B, H, T] -> [B, H, 1, ...] broadcasting over a weight's trailing dims."""
    return g[:, :, t].reshape(*g.shape[:2], *([1] * extra_dims))


def l2(pred: Tensor, target: Tensor) -> Tensor:
    """1/2 ||pred - target||^2 over the last dim: [B, H, d] -> [B, H]."""
    return 0.5 * (pred - target).pow(2).sum(-1)


def newton_schulz(x: Tensor, steps: int = 5, coefficients=MUON_COEFFICIENTS,
                  eps: float = 1e-7) -> Tensor:
    """Muon's quintic Newton-Schulz on each matrix of x [..., m, n] (NL eq. 44; Atlas NS-5):

        X_0 = x / max(||x||_F, eps),   X_{j+1} = a X_j + (b A_j + c A_j^2) X_j,   A_j = X_j X_j^T.

    Muon transposes a tall matrix first; a X + b (X X^T) X + c (X X^T)^2 X equals
    a X + b X (X^T X) + c X (X^T X)^2, so it changes the cost and the rounding only, and this
    reference does not. Muon divides by ||x|| + eps, nldsl and titans-pytorch by max(||x||, eps).
    Computed in x's dtype (nldsl computes in float32 by default: `precision`)."""
    a, b, c = coefficients
    norm = torch.linalg.matrix_norm(x, ord="fro", keepdim=True)         # [..., 1, 1]
    x = x / norm.clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.transpose(-1, -2)                                     # [..., m, m]
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


def polynomial_features(u: Tensor, degree: int, coefficients: Sequence[float] | None = None,
                        constant: bool = True) -> Tensor:
    """Atlas' polynomial feature map phi_p(u) = [u^beta]_{|beta| <= p} (sec. "Polynomial feature
    maps"), written as the tensor powers of u, flattened:

        phi(u) = [a_0, a_1 u, a_2 vec(u u^T), ..., a_p vec(u^{(x) p})],   a_i = 1/i! by default

    (the paper's initialisation, from the Taylor series of exp). Choice: the tensor-power form
    (each monomial appears with its multiplicity, as a flatten of outer(k, k) gives it), so
    <phi(x), phi(y)> = sum_i a_i^2 (x . y)^i. `constant=False` drops the |beta| = 0 term.
    u [..., d] -> [..., sum_i d^i]."""
    coefficients = coefficients or [1 / math.factorial(i) for i in range(degree + 1)]
    parts, power = [], torch.ones_like(u[..., :1])                        # [..., 1]
    for i in range(degree + 1):
        if i > 0:
            power = (power.unsqueeze(-1) * u.unsqueeze(-2)).flatten(-2)   # [..., d^i]
        if i > 0 or constant:
            parts.append(coefficients[i] * power)
    return torch.cat(parts, dim=-1)


# -- Titans (arXiv 2501.00663) -------------------------------------------------------------------

def titans_loop(k: Tensor, v: Tensor, q: Tensor, theta: Tensor, eta: Tensor, alpha: Tensor,
                weights0: Sequence[Tensor], chunk_size: int, *, activation: Callable = F.gelu,
                residual: bool = True, momentum0: Sequence[Tensor] | None = None):
    """Titans' long-term memory (LMM), Titans v1 eqs. 8-16:

        loss        l(M; x_t) = 1/2 ||M(k_t) - v_t||^2                     (eq. 12, with 1/2)
        surprise    S_t = eta_t S_{t-1} - theta_t grad_M l(M_{t'}; x_t)    (eqs. 10, 14)
        forgetting  M_t = (1 - alpha_t) M_{t-1} + S_t                       (eq. 13)
        read        y_t = M_t(q_t)                                           (eq. 15)

    with every weight of the MLP memory updated by the same rule (S and M are per weight), and
    t' the start of t's chunk (eq. 16, b = chunk_size): all gradients of a chunk at the state
    the chunk starts from, so chunk_size = 1 is the fully recurrent eq. 14.

    Choices where the paper is ambiguous:
    - eq. 16 writes t' = t - mod(t, b) with 1-based t, which would put t = b at M_b, its own
      end; eq. 17 says the first chunk (t = 1..b) uses M_0. Here (0-based t) t' = b floor(t / b).
    - The 1/2 in the loss: the titans.nl header's `l2` convention (the factor 2 is in theta).
    - The read sees the token's own write (the titans.nl header: y_t = M_t(q_t)); eq. 15 says
      "forward pass without weight update", which is about the read not writing, not about
      which state it sees.
    - The momentum S and forgetting are per token (Titans' experiments; titans-pytorch pools
      them per chunk instead).

    k, v, q [B, H, T, d]; theta, eta, alpha [B, H, T]; weights0 per layer [H, o, i] (or
    [B, H, o, i]); momentum0 like the weights (zeros by default).
    Returns y [B, H, T, d_v], the final weights M_T and the final momentum S_T (per layer,
    [B, H, o, i])."""
    batch, _, steps, _ = k.shape
    weights = expand(weights0, batch)
    momentum = (expand(momentum0, batch) if momentum0 is not None
                else [torch.zeros_like(w) for w in weights])
    graph = _records(k, v, q, theta, eta, alpha, *weights, *momentum)
    ys, snapshot = [], weights
    for t in range(steps):
        if t % chunk_size == 0:
            snapshot = weights                                             # M_{t'}
        grads = inner_grad(lambda w: l2(mlp(w, k[:, :, t], activation, residual),
                                        v[:, :, t]).sum(), snapshot, graph)
        momentum = [_gate(eta, t) * s - _gate(theta, t) * g for s, g in zip(momentum, grads)]
        weights = [(1 - _gate(alpha, t)) * w + s for w, s in zip(weights, momentum)]
        ys.append(mlp(weights, q[:, :, t], activation, residual))          # [B, H, d_v]
    return torch.stack(ys, dim=2), weights, momentum


# -- titans-pytorch (lucidrains, v0.5.5), from first principles ----------------------------------

def rmsnorm(x: Tensor, weight: Tensor, eps: float | None = None) -> Tensor:
    """torch.nn.RMSNorm: x / sqrt(mean(x^2) + eps) * weight, eps = finfo(dtype).eps when None
    (titans-pytorch builds nn.RMSNorm(dim) without an eps)."""
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def residual_norm_mlp(layers: Sequence[Tensor], gamma: Tensor | None, u: Tensor) -> Tensor:
    """titans-pytorch's memory: ResidualNorm(MemoryMLP), memory_models.py:

        M(u) = LayerNorm(W_L gelu(... gelu(W_1 u))) * (gamma + 1) + u

    LayerNorm without affine, eps 1e-5, biased variance; gamma (zeros at init) is a memory
    weight like the W's. gamma None: the bare MemoryMLP (mem_model_norm_add_residual=False)."""
    h = mlp(layers, u, F.gelu, residual=False)                             # [B, H, d]
    if gamma is None:
        return h
    return F.layer_norm(h, h.shape[-1:], eps=1e-5) * (gamma + 1) + u


def titans_pytorch_params(memory) -> dict:
    """The tensors of a `titans_pytorch.NeuralMemory` that `titans_pytorch_loop` takes, still
    attached to the module's parameters (gradients reach them). Matrices in [d_out, d_in] layout
    (torch Linear's; the memory's MemoryMLP weights [d_in, d_out] are transposed). Refuses the
    options the loop does not implement."""
    m = memory
    assert m.per_head_learned_parameters and m.momentum_order == 1 and m.num_kv_per_token == 1
    assert m.to_momentum is not None and m.to_learned_momentum_combine is None
    assert m.to_layer_modulation is None and m.to_learned_weight_residual_mix is None
    assert m.max_grad_norm is None and not m.spectral_norm_surprises and m.transition_gate is None
    assert not m.qkv_receives_diff_views and not m.store_with_lookahead_value
    assert m.retrieve_chunk_size == m.store_chunk_size
    for name in ("multihead_rmsnorm", "q_norm", "k_norm"):
        assert isinstance(getattr(m, name), torch.nn.Identity), name
    for name in ("to_queries", "to_keys", "to_values"):
        assert isinstance(getattr(m, name), torch.nn.Linear), f"{name}: an activation is set"
    assert type(m.reduce_to_chunk_rep).__name__ == "AveragePool"
    assert isinstance(m.adaptive_step_transform, functools.partial)
    named = dict(zip(m.memory_model_parameter_names, m.memory_model_parameters))
    layers = [named[f"model.weights.{i}"].transpose(-1, -2)
              for i in range(sum(n.startswith("model.weights.") for n in named))]
    if not layers:                                        # a bare MemoryMLP: names "weights.i"
        layers = [named[f"weights.{i}"].transpose(-1, -2) for i in range(len(named))]
    params = {
        "store_norm": m.store_norm.weight, "retrieve_norm": m.retrieve_norm.weight,
        "Wq": m.to_queries.weight, "Wk": m.to_keys.weight, "Wv": m.to_values.weight,
        "W_lr": m.to_adaptive_step[0].weight, "b_lr": m.to_adaptive_step[0].bias,
        "W_momentum": m.to_momentum[0].weight, "b_momentum": m.to_momentum[0].bias,
        "W_decay": m.to_decay_factor[0].weight, "b_decay": m.to_decay_factor[0].bias,
        "layers": layers, "gamma": named.get("norm.gamma"),
        "max_lr": m.adaptive_step_transform.keywords.get("max_lr", 1e-2),
    }
    if m.heads > 1:
        params["W_gate"] = m.retrieve_gate[0].weight
        params["W_out"] = m.combine_heads.weight
    return params


def titans_pytorch_loop(x: Tensor, p: dict, *, heads: int, chunk_size: int,
                        batch_size: int | None = None):
    """`titans_pytorch.NeuralMemory(dim, chunk_size, heads=heads, dim_head=d, batch_size=...)`
    with its defaults, forward(x) from an empty state (neural_memory.py of v0.5.5; the digest
    ../shared/research/titans-pytorch-semantics.md has the line references). With c the chunk
    size, N = floor(T / c) complete chunks, chunk n = tokens nc .. nc + c - 1 (0-based):

        xs_t = RMSNorm_store(x_t),  xr_t = RMSNorm_retrieve(x_t)      (eps = finfo(dtype).eps)
        k_t = Wk xs_t,  v_t = Wv xs_t,  q_t = Wq xr_t       (split into heads: (h d) channels)
        lr_t = max_lr sigmoid(W_lr xs_t + b_lr)                        (per token and head)
        xbar_n = mean_{t in n} xs_t
        eta_n = sigmoid(W_momentum xbar_n + b_momentum)                (per chunk and head)
        a_n = sigmoid(W_decay xbar_n + b_decay)
        G_n = sum_{t in n} lr_t grad_W [ mean_d (M_W(k_t) - v_t)^2 ]  at W = base(n)
        S_n = eta_n S_{n-1} - G_n,   S_{-1} = 0                        (momentum, per chunk)
        U_n = (1 - a_n) U_{n-1} + S_n,   U_{-1} = W_0                  (decay, per chunk)
        y_t = M_{U_{j-1}}(q_t),   j = floor((t + 1) / c)               (U after j chunks)
        out_t = W_out concat_h(sigmoid(W_gate xr_t)_h y_t^h)           (heads > 1)
        out_t = y_t                                                     (heads = 1)

    where M is `residual_norm_mlp` and W ranges over all memory weights (the MLP's matrices
    AND the LayerNorm gamma). base(n) = W_0, the learned initial weights, for every chunk by
    default (batch_size None: the memory never learns from its own writes within a call); with
    batch_size (a multiple of c) base(n) = U after the last multiple of batch_size tokens at or
    before the chunk's start, so batch_size = c is Titans eq. 16. Tokens after the last complete
    chunk write nothing (they read U_{N-1}). The last token of each chunk reads its own
    chunk's write; the others read the state before their chunk.

    x [B, T, dim]; p as `titans_pytorch_params` gives it. Returns (out [B, T, dim], the final
    memory U_{N-1} as {"layers": [B, H, d_out, d_in] per layer, "gamma": [B, H, d] or None}, the
    final momentum S_{N-1} in the same form)."""
    batch, steps, _ = x.shape
    c = chunk_size
    assert batch_size is None or batch_size % c == 0
    split = lambda a: a.unflatten(-1, (heads, -1)).transpose(1, 2)        # [B, T, H*d] -> [B, H, T, d]
    xs, xr = rmsnorm(x, p["store_norm"]), rmsnorm(x, p["retrieve_norm"])  # [B, T, dim]
    k, v, q = split(xs @ p["Wk"].T), split(xs @ p["Wv"].T), split(xr @ p["Wq"].T)
    lr = (torch.sigmoid(xs @ p["W_lr"].T + p["b_lr"]) * p["max_lr"]).transpose(1, 2)  # [B, H, T]
    n_chunks = steps // c
    pooled = xs[:, :n_chunks * c].unflatten(1, (n_chunks, c)).mean(2)    # [B, N, dim]
    eta = torch.sigmoid(pooled @ p["W_momentum"].T + p["b_momentum"]).transpose(1, 2)  # [B, H, N]
    decay = torch.sigmoid(pooled @ p["W_decay"].T + p["b_decay"]).transpose(1, 2)     # [B, H, N]

    has_gamma = p["gamma"] is not None
    init = list(p["layers"]) + ([p["gamma"]] if has_gamma else [])       # per head [H, ...]
    w0 = [w.unsqueeze(0).expand(batch, *w.shape) for w in init]          # [B, H, ...]
    model = lambda w, u: residual_norm_mlp(w[:len(p["layers"])], w[-1] if has_gamma else None, u)
    per_weight = lambda g, w: g.reshape(*g.shape, *([1] * (w.dim() - 2)))  # [B, H] -> [B, H, 1..]

    graph = _records(x, *[t for t in p.values() if isinstance(t, torch.Tensor)], *init)
    state, momentum = w0, [torch.zeros_like(w) for w in w0]
    after = [state]                                                       # U after n chunks
    base = w0
    for n in range(n_chunks):
        if batch_size is not None and (n * c) % batch_size == 0:
            base = state                                                  # a batch boundary
        total = [torch.zeros_like(w) for w in w0]                        # G_n
        for t in range(n * c, (n + 1) * c):
            grads = inner_grad(lambda w: (lr[:, :, t] * (model(w, k[:, :, t]) - v[:, :, t])
                                          .pow(2).mean(-1)).sum(), base, graph)
            total = [a + g for a, g in zip(total, grads)]
        momentum = [per_weight(eta[:, :, n], s) * s - g for s, g in zip(momentum, total)]
        state = [per_weight(1 - decay[:, :, n], w) * w + s for w, s in zip(state, momentum)]
        after.append(state)
    y = torch.stack([model(after[(t + 1) // c], q[:, :, t]) for t in range(steps)], dim=2)  # [B, H, T, d]
    if heads > 1:
        gate = torch.sigmoid(xr @ p["W_gate"].T).transpose(1, 2)          # [B, H, T]
        y = y * gate.unsqueeze(-1)
    out = y.transpose(1, 2).flatten(2)                                    # [B, T, H*d]
    if heads > 1:
        out = out @ p["W_out"].T                                          # [B, T, dim]
    n_layers = len(p["layers"])
    pack = lambda ws: {"layers": ws[:n_layers], "gamma": ws[-1] if has_gamma else None}
    return out, pack(state), pack(momentum)


# -- Miras (arXiv 2504.13173): Moneta, Yaad, Memora ----------------------------------------------
#
# Miras' own equation numbers were not available first-hand (../shared/research/paper-digest.md
# sec. 5.2: the formulas come from the NL paper's restatement and a secondary extraction), so the
# docstrings cite the model by name. All three are "gradient descent with a retention gate" on
# the attentional bias, chunk-parallel as Titans eq. 16 (gradients at the chunk-start state).

def _read_state(read: str, current: Weights, snapshot: Weights) -> Weights:
    """`read="own_write"`: y_t = M_t(q_t) (the state after token t's write, the papers'
    recurrences and the stdlib specs' `read y = W(q)`); `"chunk_start"`: y_t = M_{t'}(q_t) (the
    chunk-start state: a spec's `read y = W(q) before write` under chunk C; the secondary
    source says Miras applies its non-linear retention at chunk boundaries only in training)."""
    assert read in ("own_write", "chunk_start"), read
    return current if read == "own_write" else snapshot


def lq_normalize(a: Tensor, retention_q: float, eps: float) -> Tensor:
    """Moneta's map from the accumulated state to the memory, per weight matrix [..., o, i]:
    W = A / (||A||_q^{q-2} + eps), ||A||_q = (sum_ij |A_ij|^q)^{1/q} entrywise over the matrix."""
    norm = a.abs().pow(retention_q).sum(dim=(-2, -1), keepdim=True).pow(1 / retention_q)
    return a / (norm.pow(retention_q - 2) + eps)


def moneta_loop(k: Tensor, v: Tensor, q: Tensor, eta: Tensor, alpha: Tensor,
                weights0: Sequence[Tensor], chunk_size: int, *, bias_p: float = 3,
                retention_q: float = 4, eps: float = 1e-6, activation: Callable = F.gelu,
                residual: bool = True, read: str = "own_write"):
    """Moneta: l_p attentional bias (p = 3), l_q retention (q = 4), Miras sec. "Moneta":

        A_t = alpha_t A_{t-1} - eta_t grad_W l_p(W_{t'}; k_t, v_t),   l_p = 1/p ||M_W(k) - v||_p^p
        W_t = A_t / ||A_t||_q^{q-2}
        y_t = M_{W_t}(q_t)

    per weight matrix of the memory (A and W have the memory's shapes; the norm is entrywise
    over each matrix). The gradient is taken with respect to the memory W (not through the
    normalisation) at the chunk-start W_{t'} = normalize(A_{t'}), and accumulated in A.

    Choices: 1/p in l_p (the paper's ||.||_p^p has gradient p sign(r)|r|^{p-1}: the factor p is
    in eta, as nldsl's `lp`); eps in the denominator as moneta.nl writes it (the paper has none:
    at A = 0 it is 0/0); weights0 is A_0 (W_0 = normalize(A_0)). The secondary source's general
    l_q retention writes the dual exponent p = q/(q-1) and the Moneta equation q itself; this
    follows the Moneta equation, as the spec does. `read` as `_read_state`.

    k, v, q [B, H, T, d]; eta, alpha [B, H, T]. Returns (y [B, H, T, d_v], final W per layer,
    final A per layer)."""
    batch, _, steps, _ = k.shape
    dual = expand(weights0, batch)                                         # A_0
    norm = lambda a: [lq_normalize(x, retention_q, eps) for x in a]
    graph = _records(k, v, q, eta, alpha, *dual)
    ys, snapshot = [], norm(dual)
    for t in range(steps):
        if t % chunk_size == 0:
            snapshot = norm(dual)                                          # W_{t'}
        grads = inner_grad(
            lambda w: ((mlp(w, k[:, :, t], activation, residual) - v[:, :, t])
                       .abs().pow(bias_p).sum(-1) / bias_p).sum(), snapshot, graph)
        dual = [_gate(alpha, t) * a - _gate(eta, t) * g for a, g in zip(dual, grads)]
        ys.append(mlp(_read_state(read, norm(dual), snapshot), q[:, :, t], activation, residual))
    return torch.stack(ys, dim=2), norm(dual), dual


def yaad_loop(k: Tensor, v: Tensor, q: Tensor, eta: Tensor, alpha: Tensor, delta: Tensor,
              weights0: Sequence[Tensor], chunk_size: int, *, activation: Callable = F.gelu,
              residual: bool = True, read: str = "own_write"):
    """Yaad: Huber-type attentional bias ("smooth mixture" of l2 and l1), l2 retention, Miras
    sec. "Yaad":

        W_t = alpha_t W_{t-1} - eta_t grad l2(W_{t'}; k_t, v_t)            if ||r_t|| <= delta_t
        W_t = alpha_t W_{t-1} - eta_t delta_t grad l1(W_{t'}; k_t, v_t)    otherwise
        r_t = M_{W_{t'}}(k_t) - v_t,  l2 = 1/2 ||r||_2^2,  l1 = ||r||_1,  y_t = M_{W_t}(q_t)

    The branch is chosen per batch and head from the residual at the chunk-start state (the
    state the gradient is taken at). l1's gradient at r_i = 0 is 0 (sign(0) = 0).
    delta [B, H, T] > 0. Returns (y, final W per layer, None)."""
    batch, _, steps, _ = k.shape
    weights = expand(weights0, batch)
    graph = _records(k, v, q, eta, alpha, delta, *weights)

    def huber(w, t):
        r = mlp(w, k[:, :, t], activation, residual) - v[:, :, t]           # [B, H, d]
        d = delta[:, :, t]
        small = r.detach().norm(dim=-1) <= d.detach()                       # [B, H]
        return torch.where(small, 0.5 * r.pow(2).sum(-1), d * r.abs().sum(-1)).sum()

    ys, snapshot = [], weights
    for t in range(steps):
        if t % chunk_size == 0:
            snapshot = weights
        grads = inner_grad(lambda w: huber(w, t), snapshot, graph)
        weights = [_gate(alpha, t) * w - _gate(eta, t) * g for w, g in zip(weights, grads)]
        ys.append(mlp(_read_state(read, weights, snapshot), q[:, :, t], activation, residual))
    return torch.stack(ys, dim=2), weights, None


def memora_loop(k: Tensor, v: Tensor, q: Tensor, eta: Tensor, alpha: Tensor,
                weights0: Sequence[Tensor], chunk_size: int, *, c: float = 1.0,
                simplex: str = "row", activation: Callable = F.gelu, residual: bool = True,
                read: str = "own_write"):
    """Memora: l2 attentional bias, KL retention on the scaled simplex, Miras sec. "Memora":

        W_t = c Softmax(alpha_t log W_{t-1} - eta_t grad_W l2(W_{t'}; k_t, v_t)),
        l2 = 1/2 ||M_W(k) - v||^2,  y_t = M_{W_t}(q_t)

    written literally on W (no logits), per weight matrix. The retention is on the previous
    token's W_{t-1}; only the gradient is at the chunk-start W_{t'}.

    Choices: the simplex {W >= 0, ||W||_1 = c}: `simplex="row"` normalises each row of a
    [d_out, d_in] weight (softmax over d_in), as memora.nl chooses; `"matrix"` normalises the
    whole matrix (entrywise ||W||_1 = c, the paper's set read entrywise). weights0 must be on
    that simplex (positive, summing to c): e.g. c softmax(L_0).
    Returns (y, final W per layer, None)."""
    assert simplex in ("row", "matrix"), simplex
    batch, _, steps, _ = k.shape
    weights = expand(weights0, batch)
    graph = _records(k, v, q, eta, alpha, *weights)

    def project(logits):                                                  # c Softmax(.)
        if simplex == "row":
            return c * torch.softmax(logits, dim=-1)
        return c * torch.softmax(logits.flatten(-2), dim=-1).unflatten(-1, logits.shape[-2:])

    ys, snapshot = [], weights
    for t in range(steps):
        if t % chunk_size == 0:
            snapshot = weights
        grads = inner_grad(lambda w: l2(mlp(w, k[:, :, t], activation, residual),
                                        v[:, :, t]).sum(), snapshot, graph)
        weights = [project(_gate(alpha, t) * torch.log(w) - _gate(eta, t) * g)
                   for w, g in zip(weights, grads)]
        ys.append(mlp(_read_state(read, weights, snapshot), q[:, :, t], activation, residual))
    return torch.stack(ys, dim=2), weights, None


# -- Atlas (arXiv 2505.23735) ----------------------------------------------------------------------

def atlas_loop(k: Tensor, v: Tensor, q: Tensor, eta: Tensor, theta: Tensor, alpha: Tensor,
               gamma: Tensor, weights0: Sequence[Tensor], chunk_size: int, *, window: int,
               ns_steps: int = 5, ns_coefficients=MUON_COEFFICIENTS, ns_eps: float = 1e-7,
               feature_map: Callable | None = None, activation: Callable = F.gelu,
               residual: bool = True, momentum0: Sequence[Tensor] | None = None):
    """Atlas: the Omega rule optimised with Muon (Atlas eqs. 9, 32-33; via the paper digest sec.
    5.3, secondary extractions that agree):

        l_Omega(M; t) = sum_{i = t-c+1}^{t} gamma_i 1/2 ||M(phi(k_i)) - v_i||^2          (eq. 9)
        S_t = theta_t S_{t-1} + grad_M l_Omega(M_{t'}; t)                                 (eq. 33)
        M_t = alpha_t M_{t-1} - eta_t NewtonSchulz_k(S_t)                                 (eq. 32)
        y_t = M_t(phi(q_t))

    per weight matrix of the memory (S and the Newton-Schulz map are per matrix, `newton_schulz`);
    the window's terms are all evaluated at the chunk-start state M_{t'} (Atlas eq. 15: chunk-wise
    gradients at the chunk start), including those of tokens i < t' from the previous chunk.

    Choices: the descent signs (the secondary sources print S_t = theta S - grad with
    M_t = alpha M - eta NS(S), which ascends; NS is odd, so the form above is the intended one,
    as atlas.nl argues); gamma_i depends on token i only (Atlas' gamma_i^(t) may depend on t);
    the window is truncated at the first token of the call (i >= 0); 1/2 in the loss; phi
    (`feature_map`, e.g. `polynomial_features`) applies to keys and queries, identity by default
    (as atlas.nl); Newton-Schulz in the inputs' dtype.

    k, q [B, H, T, d_k]; v [B, H, T, d_v]; eta, theta, alpha, gamma [B, H, T].
    Returns (y [B, H, T, d_v], final M per layer, final S per layer)."""
    phi = feature_map or (lambda u: u)
    batch, _, steps, _ = k.shape
    fk, fq = phi(k), phi(q)                                               # [B, H, T, d_phi]
    weights = expand(weights0, batch)
    momentum = (expand(momentum0, batch) if momentum0 is not None
                else [torch.zeros_like(w) for w in weights])
    graph = _records(k, v, q, eta, theta, alpha, gamma, *weights, *momentum)

    def omega(w, t):
        return sum(gamma[:, :, i] * l2(mlp(w, fk[:, :, i], activation, residual), v[:, :, i])
                   for i in range(max(0, t - window + 1), t + 1)).sum()

    ys, snapshot = [], weights
    for t in range(steps):
        if t % chunk_size == 0:
            snapshot = weights
        grads = inner_grad(lambda w: omega(w, t), snapshot, graph)
        momentum = [_gate(theta, t) * s + g for s, g in zip(momentum, grads)]
        weights = [_gate(alpha, t) * w - _gate(eta, t) * newton_schulz(s, ns_steps, ns_coefficients,
                                                                       ns_eps)
                   for w, s in zip(weights, momentum)]
        ys.append(mlp(weights, fq[:, :, t], activation, residual))
    return torch.stack(ys, dim=2), weights, momentum
