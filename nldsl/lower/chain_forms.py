"""Recognise a deep memory written through a rule chain and/or the Omega rule's window (Atlas), by
structure, never by spec name. Pure, no torch.

The form (module/chain_chunk.py computes it): a deep memory as in deep_forms.py (one `mlp(...)`
memory M per head without `layernorm`, chunk C > 1, written every token, gates one number per
head and token, the loss using M only as M(u)), whose objective is either that loss or a window
of it, and whose rule is `gd(lr, decay)` after at most one linear transform and at most one
Newton-Schulz:

    G_t = sum_{i = max(1, t-c+1)}^{t} gamma_i grad_M loss_i(M(u_i)) at M_{t'}   (Atlas eqs. 9, 15)
    S_t = beta_t S_{t-1} + c_t G_t        momentum(lr, beta): c = lr; ema(beta): c = 1 - beta
    N_t = NewtonSchulz_k(S_t)             per weight matrix (Muon's iteration)
    M_t = decay_t M_{t-1} - lr_t N_t      (Atlas eqs. 32-33)

(c = 1 without a window; without a transform S_t = G_t; without Newton-Schulz N_t = S_t). The
window's width and the Newton-Schulz arguments must be constants (hyper-parameters), gamma may
not name a fast state. Atlas (`atlas`, examples/atlas_polynomial.nl) and any spec of this
structure take it; a guard (`clip`), `dgd`, two transforms, or a window inside a larger loss are
refused (the reference then runs the level).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from nldsl.language import ast
from nldsl.language.consteval import calls_in, names_in
from nldsl.lower.deep_forms import DeepForm, deep_form
from nldsl.lower.derive import ChainStep, mentions
from nldsl.lower.program import Program, TokenLevel
from nldsl.lower.windows import WINDOW

#: transforms whose buffer is linear in the gradients (the buffer per token is a masked matmul)
LINEAR = ("momentum", "ema")


@dataclass(frozen=True)
class ChainForm:
    deep: DeepForm                 # the memory, its inner loss (no window), gd's lr and decay
    width: ast.Expr | None         # the window's c; None: no window (c = 1)
    gamma: ast.Expr | None         # the window's weights gamma_i; None: 1
    transform: ChainStep | None    # momentum or ema; None: S_t = G_t
    newton_schulz: ChainStep | None


def chain_form(level: TokenLevel, program: Program) -> ChainForm | None:
    """The level's form, or None (the level then needs another form or the reference)."""
    if len(level.writes) != 1 or level.once or level.task:
        return None
    write = level.writes[0]
    if write.kind != "gradient" or write.loss is None or write.clip is not None:
        return None
    steps = list(write.chain)
    transform = steps.pop(0) if steps and steps[0].rule in LINEAR else None
    schulz = steps.pop(0) if steps and steps[0].rule == "newton_schulz" else None
    if steps:
        return None                              # two transforms, or one after Newton-Schulz
    loss, width, gamma = write.loss, None, None
    if isinstance(loss, ast.Call) and loss.func == WINDOW:
        parts = dict(zip(("width", "loss", "gamma"), loss.args)) | {k.name: k.value
                                                                    for k in loss.kwargs}
        loss, width, gamma = parts.get("loss"), parts.get("width"), parts.get("gamma")
        if loss is None or width is None:
            return None
    if transform is None and schulz is None and width is None:
        return None                              # deep_forms.py's form, not this one
    if any(c.func == WINDOW for c in calls_in(loss)) or \
            (gamma is not None and any(c.func == WINDOW for c in calls_in(gamma))):
        return None
    hidden = {transform.buffer} if transform is not None else set()
    if set(level.hidden) != hidden:
        return None
    constants = [width] + (list(schulz.args.values()) if schulz is not None else [])
    if any(n.id not in program.hparams for e in constants if e is not None for n in names_in(e)):
        return None                              # a per-token window or step count
    plain = replace(level, writes=[replace(write, chain=(), loss=loss)], hidden={}, window=1,
                    windowed=())        # the same level written by gd on the inner loss
    deep = deep_form(plain, replace(program, levels=[plain if lv is level else lv
                                                     for lv in program.levels]))
    if deep is None:
        return None
    fast = {n for lv in program.levels for n in list(lv.states) + list(lv.reads) + list(lv.hidden)}
    gates = ([gamma] if gamma is not None else []) + \
        (list(transform.args.values()) if transform is not None else [])
    if any(mentions(g, n) for g in gates for n in fast):
        return None
    return ChainForm(deep, width, gamma, transform, schulz)
