"""Shared fixtures of the module-compiler tests: the linear-family specs at small sizes, O(1)
parameters, and the float64 rounding bound every schedule comparison uses.

Why O(1) parameters: the specs draw projections from normal(0.02), so at dim 8 every gate sits
at sigmoid(0) = 1/2, every decay near its centre and every value near 0; a schedule bug that
mis-weights a gate or a decay by a few percent would hide under that. `randomize` redraws every
parameter so that gates spread over (0, 1), decays over roughly (0.2, 1) and values are O(1).
"""
from __future__ import annotations

import math

import torch

from nldsl.module import compile as compile_module

#: float64 unit roundoff u = 2^-53 (half of torch.finfo's eps, which is the spacing at 1).
U64 = torch.finfo(torch.float64).eps / 2

#: id -> (spec as compile takes it, small hyper-parameters). Dims are small on purpose: the
#: reference is a Python loop over tokens, and the algebra does not care about the size.
SPECS = {
    "linear_attention": ("linear_attention", dict(dim=8, head_dim=3, lr=0.7, decay=0.9)),
    "deltanet": ("deltanet", dict(dim=8, head_dim=3, conv_width=4)),
    "gated_deltanet": ("gated_deltanet", dict(dim=8, head_dim=3, head_v_dim=5, conv_width=3)),
    "deltanet_recurrence": ("examples/deltanet_recurrence.nl", dict(dim=8, head_dim=4)),
    "gated_deltanet_recurrence": ("examples/gated_deltanet_recurrence.nl",
                                  dict(dim=8, head_dim=4)),
}
#: The deep memories (MLP states) at small sizes; max_lr 0.5 so that writes move the memory by
#: far more than rounding.
DEEP_SPECS = {
    "titans": ("titans", dict(dim=8, head_dim=4, chunk_size=3, max_lr=0.5)),
    "yaad": ("yaad", dict(dim=8, head_dim=4, chunk_size=3, max_lr=0.5)),
    "atlas": ("atlas", dict(dim=8, head_dim=4, chunk_size=3, window_size=3, max_lr=0.5)),
    "atlas_polynomial": ("examples/atlas_polynomial.nl",
                         dict(dim=8, head_dim=3, chunk_size=3, window_size=3, max_lr=0.5)),
    "moneta": ("moneta", dict(dim=8, head_dim=4, chunk_size=3, max_lr=0.5)),
    "memora": ("memora", dict(dim=8, head_dim=4, chunk_size=3, max_lr=0.5)),
}


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Redraw every parameter with a fixed seed, at O(1) scale (see the module docstring):
    matrices ~ N(0, 1/fan_in) so that x @ W is O(1); per-head A_log ~ N(0, 0.5^2) and
    dt_bias ~ N(0, 1) so Mamba-2 decays spread over (0, 1); norm scales 1 + N(0, 0.3^2);
    conv kernels U(+-1/sqrt(width)) as drawn, redrawn from the seed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p)
            if name.endswith("_conv"):
                bound = 1 / math.sqrt(p.shape[1])
                p.copy_((torch.rand(p.shape, generator=generator, dtype=torch.float64).to(p)
                         * 2 - 1) * bound)
            elif name == "A_log":
                p.copy_(0.5 * noise)
            elif name == "dt_bias":
                p.copy_(noise)
            elif p.ndim == 1:
                p.copy_(1 + 0.3 * noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[0]))
    return module


def build(spec_id: str, schedule: str, block_size: int = 64, seed: int = 0, **overrides):
    """A float64 module of SPECS[spec_id] (or DEEP_SPECS') with randomized parameters (same
    seed, same values in both schedules)."""
    spec, hparams = {**SPECS, **DEEP_SPECS}[spec_id]
    torch.manual_seed(seed)
    module = compile_module(spec, schedule=schedule, block_size=block_size,
                            **{**hparams, **overrides}).to(torch.float64)
    return randomize(module, seed)


def inputs(batch: int, steps: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(batch, steps, dim, generator=generator, dtype=torch.float64)


def rounding_bound(steps: int, width: int, block: int = 1, passes: int = 1) -> float:
    """A bound on |a - b| / max|reference| for two float64 evaluations of the same linear-memory
    recurrence that associate their sums differently.

    One token of M_t = a_t M_{t-1} - c_t (M_{t-1} k_t) k_t^T + w_t k_t^T forms inner products of
    length `width` (d_k or d_v) and three more roundings per entry: error <= (width + 3) u times
    the magnitude of its terms (Higham, gamma_n). The transition a (I - c k k^T) has norm <= 1
    for every spec here (unit keys, 0 < beta < 1, 0 < alpha <= 1, decay <= 1), so errors of
    earlier tokens are not amplified and T tokens add up to T (width + 3) u. The block form
    of delta_chunk.py replaces a block of L tokens by products and a unit-triangular solve of
    order L: (L + width + 3) u per token, plus one inter-block step per block. Hence
    (T + L) (L + width + 3) u, for each of the two evaluations, and times `passes` for
    gradients (the forward error feeds the backward recurrence, which has the same bound, and
    parameter gradients sum over the tokens). The factor 4 covers the few elementwise ops
    around the memory (conv, SiLU, l2norm, the norms, the output projection), each within a
    few u relative. The bound is loose by orders of magnitude in practice; a schedule bug
    (a decay applied at the wrong token, a block boundary off by one) gives errors of the
    order of 1 - alpha or beta, i.e. 1e-1, so it cannot hide below it.
    """
    return 2 * 4 * passes * (steps + block) * (block + width + 3) * U64


def assert_close(actual: torch.Tensor, expected: torch.Tensor, bound: float, what: str):
    """|actual - expected| <= bound * max(|expected|, tiny), elementwise, with a readable
    message. The scale is the tensor's largest magnitude: rounding errors of a recurrence are
    relative to the size of the terms it sums, not to each output entry (an output near 0 is
    a cancellation of O(max) terms)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != " \
                                           f"{tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert torch.isfinite(actual).all(), f"{what}: not finite"
    scale = expected.abs().max().item() if expected.numel() else 0.0
    error = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert error <= bound * max(scale, 1e-300), \
        f"{what}: max error {error:.3e} > {bound:.3e} x scale {scale:.3e}"


def assert_states_close(actual: dict, expected: dict, bound: float, what: str) -> None:
    """Two flat states (flat_state) hold the same entries: tensors within `bound` (assert_close),
    other entries (the stream's token count) equal."""
    assert actual.keys() == expected.keys()
    for key in expected:
        if isinstance(expected[key], torch.Tensor):
            assert_close(actual[key], expected[key], bound, f"{what} state {key}")
        else:
            assert actual[key] == expected[key], key


def stream_in_parts(m, x: torch.Tensor, cuts: tuple[int, ...]):
    """m run on x cut at `cuts` (end=False on every part), the state carried: (y, state)."""
    parts, state, start = [], None, 0
    for stop in cuts + (x.shape[1],):
        part, state = m(x[:, start:stop], state, end=False)
        parts.append(part)
        start = stop
    return torch.cat(parts, 1), state


def assert_cut_stream_is_one_call(m, x: torch.Tensor, cuts: tuple[int, ...], bound: float):
    """m on x in one call and cut at `cuts` (the state carried): the same outputs and final
    states, to `bound`."""
    with torch.no_grad():
        y, whole = m(x)
        streamed, state = stream_in_parts(m, x, cuts)
    assert_close(streamed, y, bound, "y")
    for key, value in flat_layers(whole).items():
        if isinstance(value, torch.Tensor):
            assert_close(flat_layers(state)[key], value, bound, key)


def flat_layers(state: dict) -> dict[str, object]:
    """state[level][name] -> {"level.name.i": tensor}, an MLP memory's layers (a tuple) each
    under its own index, any other entry as index 0."""
    out = {}
    for level, own in state.items():
        for name, value in own.items():
            for i, v in enumerate(value if isinstance(value, tuple) else (value,)):
                out[f"{level}.{name}.{i}"] = v
    return out


def flat_state(state: dict) -> dict[str, object]:
    """state[level][name] -> {"level.name": value}."""
    return {f"{level}.{name}": value for level, own in state.items() for name, value in own.items()}


def forbid_fallback(monkeypatch) -> None:
    """Make the chunked schedule's fallback to the token loop an error: `m.fast_paths` being
    non-empty does not prove the fast path ran (run_chunked falls back at call time when a
    gate turns out not to be one scalar per head)."""
    import nldsl.module.chunked as chunked

    def fallback(*args, **kwargs):
        raise AssertionError("the chunked schedule fell back to the reference")
    monkeypatch.setattr(chunked, "run_reference", fallback)
