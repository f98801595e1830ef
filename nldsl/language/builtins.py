"""The fixed vocabulary of the language: built-in names, functions, objectives and learning rules.

Expressions may call only these functions (plus a memory state applied to an input, `M(k)`).
The validator checks names and arities against these tables; the compilers interpret them.
Each entry says what it computes, so this file doubles as the reference for docs/language.md.
"""
from __future__ import annotations

from dataclasses import dataclass

#: Names every spec of a kind may use without declaring them.
IMPLICIT_NAMES = {
    "optimizer": {
        "W": "the parameter tensor being optimized (one per tensor the optimizer is given)",
        "step": "the 1-based count of optimizer steps, including the current one",
    },
    "module": {
        "x": "the input token stream [B, T, dim]; `dim` must be a hyper-parameter",
        "t": "the 1-based index of the current token",
    },
}


#: The places an expression can sit in a spec: an ordinary expression (contexts, gates, rule
#: arguments, updates, reads, `out`, shapes, periods, defaults), a `minimize` loss, or a
#: state's initial value. Every built-in usable in expressions may also appear in the others.
EXPRESSION, OBJECTIVE, INIT = "expression", "objective", "init"
PLACES = frozenset({EXPRESSION, OBJECTIVE, INIT})
KINDS = frozenset({"optimizer", "module"})

#: What each role means for where a built-in may be used: (kinds, places).
_ROLE_USE = {
    "math": (KINDS, PLACES),
    "context": (KINDS, PLACES),
    "objective": (KINDS, PLACES),   # a loss is also a value: `dot(S(k), k)` in an update
    "window": (KINDS, frozenset({OBJECTIVE})),
    "init": (KINDS, frozenset({INIT})),
    "sequence": (frozenset({"module"}), PLACES),
    "aggregate": (frozenset({"module"}), PLACES),
    "period": (frozenset({"module"}), frozenset({EXPRESSION})),
}

#: Why a role is limited to some kinds or places: the validator's message for a use outside.
ROLE_LIMITS = {
    "window": "sums a loss over past units (Atlas' Omega rule): it can only appear in a "
              "`minimize` loss",
    "init": "is an initial-value built-in: it can only be a state's initial value",
    "sequence": "is a sequence built-in: optimizers have no token axis",
    "aggregate": "joins a module's parallel branches (eq. 74): optimizers have no branches",
    "period": "averages over a token level's period: optimizers have no token axis",
}


#: What a built-in does to the value dims of its arguments (one unit's dims: no batch, time or
#: head dims), the `shape` column of FUNCTIONS. The shape checker (validation/shapes.py), the head
#: rules (lower/heads.py), the fast-form recogniser (lower/forms.py), the runtime
#: (runtime/functions.py) and the fuzzers read their lists of built-ins from this column.
SHAPES = {
    "elementwise": "f(a) entry by entry, a number for a number: [..] -> [..]",
    "broadcast": "entry by entry over its operands broadcast together: [..], [..] -> [..]",
    "identity": "the value itself (what differs is its gradient): [..] -> [..]",
    "last_dim_keep": "a function of each vector along the last dim: [.., n] -> [.., n]",
    "last_dim_reduce": "the last dim reduced, kept with size 1: [.., n] -> [.., 1]",
    "transpose": "the last two dims swapped: [.., n, m] -> [.., m, n]",
    "trace": "the last two dims reduced: [.., n, n] -> [..]",
    "outer": "two vectors to a matrix: [n], [m] -> [n, m]",
    "flatten": "the last two dims as one, row by row: [.., n, m] -> [.., n m]",
    "matrix": "a matrix to one of its shape: [n, m] -> [n, m]",
    "reduce_all": "every element reduced (a loss): [..] -> []",
    "number": "a Python number about the tensor's shape",
    "concat": "vectors joined along the last dim: [.., n], [.., m] -> [.., n + m]",
    "sequence_keep": "mixes tokens, keeps the width: [T, n] -> [T, n]",
    "positional": "a function of each vector and its token's position, keeps the width: "
                  "[T, n] -> [T, n]",
    "attention": "mixes tokens, to the width of the values: [T, n], [T, n], [T, m] -> [T, m]",
    "branches": "the shape of its branches: weights, [..], .., [..] -> [..]",
    "gradient": "the shape of the state it is the gradient of",
    "init": "not a value of an expression: the shape of the state it initialises",
}

#: The shape classes that act along the last dim(s): where a per-head level holds one scalar
#: per head, such a function sees a vector of width 1 (docs/language.md, "Heads").
LAST_DIM_SHAPES = ("last_dim_keep", "last_dim_reduce", "transpose", "trace")


@dataclass(frozen=True)
class Builtin:
    """A built-in function: its parameter names (those after `min_args` are optional), what it
    does to value dims (`shape`, a key of SHAPES), the spec kinds that may use it and where
    (`kinds`, `places`, from its role), and whether the optimizer compiler computes it in both
    schedules (`optimizer_ok`: the validator rejects an optimizer's use of a built-in whose flag
    is False, so flip it when both schedules compute it)."""

    params: tuple[str, ...]
    min_args: int
    shape: str
    doc: str
    role: str = "math"  # math | objective | window | init | context | sequence | aggregate
    variadic: bool = False
    optimizer_ok: bool = True

    @property
    def kinds(self) -> frozenset[str]:
        return _ROLE_USE[self.role][0]

    @property
    def places(self) -> frozenset[str]:
        return _ROLE_USE[self.role][1]


def _f(params: str, min_args: int | None, shape: str, doc: str, role: str = "math",
       variadic: bool = False, optimizer_ok: bool = True):
    names = tuple(p for p in params.split() if p)
    return Builtin(names, len(names) if min_args is None else min_args, shape, doc, role,
                   variadic, optimizer_ok)


FUNCTIONS: dict[str, Builtin] = {
    # elementwise and reductions
    "sqrt": _f("a", None, "elementwise", "elementwise square root"),
    "exp": _f("a", None, "elementwise", "elementwise exponential"),
    "log": _f("a", None, "elementwise", "elementwise natural logarithm"),
    "abs": _f("a", None, "elementwise", "elementwise absolute value"),
    "sign": _f("a", None, "elementwise", "elementwise sign"),
    "tanh": _f("a", None, "elementwise", "elementwise tanh"),
    "sigmoid": _f("a", None, "elementwise", "elementwise logistic sigmoid"),
    "softplus": _f("a", None, "elementwise", "elementwise log(1 + exp(a))"),
    "relu": _f("a", None, "elementwise", "elementwise max(a, 0)"),
    "gelu": _f("a", None, "elementwise", "elementwise GELU (erf form)"),
    "silu": _f("a", None, "elementwise", "elementwise a * sigmoid(a)"),
    "max": _f("a b", None, "broadcast", "elementwise maximum"),
    "min": _f("a b", None, "broadcast", "elementwise minimum"),
    "clamp": _f("a low high", None, "broadcast", "elementwise clamp to [low, high]"),
    "softmax": _f("a", None, "last_dim_keep", "softmax over the last dim"),
    "norm": _f("a", None, "last_dim_reduce", "Euclidean norm over the last dim (keeps the dim, "
               "size 1)"),
    "l2norm": _f("a", None, "last_dim_keep", "a / ||a||_2 over the last dim"),
    "rmsnorm": _f("a eps", 1, "last_dim_keep", "a / sqrt(mean(a^2) + eps) over the last dim, eps "
                  "1e-5 unless given (\"machine\": the dtype's machine epsilon, torch's "
                  "nn.RMSNorm default); no learned scale: multiply by a state", optimizer_ok=False),
    "layernorm": _f("a", None, "last_dim_keep", "(a - mean) / std over the last dim (no learned "
                    "scale)", optimizer_ok=False),
    "sum": _f("a", None, "last_dim_reduce", "sum over the last dim (keeps the dim, size 1)"),
    "mean": _f("a", None, "last_dim_reduce", "mean over the last dim (keeps the dim, size 1)"),
    "transpose": _f("a", None, "transpose", "swap the last two dims"),
    "outer": _f("a b", None, "outer", "outer product a b^T over the last dims"),
    "flatten": _f("a", None, "flatten", "the last two dims as one, row by row (vec of a matrix: "
                  "entry (i, j) at i m + j), e.g. Atlas' polynomial features "
                  "`concat(k, flatten(outer(k, k)) / 2)`", optimizer_ok=False),
    "trace": _f("a", None, "trace", "trace of a matrix"),
    "size": _f("a dim", None, "number", "the size of dim `dim` of a tensor (a number; negative "
               "dims count from the end), e.g. Muon's shape-dependent learning-rate scale"),
    "ndim": _f("a", None, "number", "the number of dims of a tensor (a number), e.g. "
               "`ndim(W) == 2`"),
    # sequence mixing (modules)
    "conv": _f("a width", None, "sequence_keep", "causal depthwise 1-D convolution over tokens "
               "with a learned kernel of `width` taps per channel (a parameter of the outer "
               "level)", role="sequence"),
    "attention": _f("q k v prefix", 3, "attention", "causal softmax attention over the "
                    "sequence: the non-parametric memory of eq. 62 (frequency infinity); token t "
                    "attends to every token s <= t. `k`, `v` may be tuples of streams at the "
                    "same positions, `prefix = (P_k, P_v)` learned keys and values every token "
                    "sees (persistent memory, Titans sec. 4)", role="sequence"),
    "window_attention": _f("q k v width prefix", 4, "attention", "causal sliding-window "
                           "softmax attention (eq. 63): token t attends to t - width < s <= t; "
                           "streams and `prefix` as for attention", role="sequence"),
    "segment_attention": _f("q k v size prefix", 4, "attention", "causal softmax attention "
                            "within segments of `size` tokens (t = 1..size, size+1..2 size, ...): "
                            "Titans MAC's segment-local attention; streams and `prefix` as for "
                            "attention", role="sequence"),
    "rope": _f("a base", 1, "positional", "rotary position embedding, rotate-half form: pairs "
               "(a_i, a_{i+n/2}) rotated by the angle (t - 1) base^(-2i/n), base 10000 by "
               "default (RoFormer eq. 34; per head in a `heads` level)", role="sequence"),
    "period_mean": _f("a", None, "identity", "the mean of `a` over the units of the current "
                      "period of its level so far (at the level's write: over the whole period); "
                      "only in a context of a token level, e.g. titans-pytorch's chunk-pooled "
                      "gates", role="period"),
    "concat": _f("a", 1, "concat", "concatenate along the last dim", variadic=True,
                 optimizer_ok=False),
    # gradients and gradient flow
    "grad": _f("state", None, "gradient", "the gradient of the task loss with respect to a state "
               "(for an optimizer, `grad(W)`: the gradient it is given)", role="context"),
    "stopgrad": _f("a", None, "identity", "a, with no gradient flowing back through it"),
    "newton_schulz": _f("a steps polynomial eps precision", 1, "matrix", "orthogonalize a matrix "
                        "with `steps` Newton-Schulz iterations (polynomial \"cubic\", \"quintic\" "
                        "or a tuple of quintic coefficients (a, b, c)) after dividing by "
                        "max(||a||_F, eps), computed in `precision` (\"float32\" or \"bfloat16\"), "
                        "eq. 44"),
    # objectives (internal losses of a level)
    "dot": _f("a b", None, "reduce_all", "<a, b> summed over all elements", role="objective"),
    "l2": _f("a b", None, "reduce_all", "1/2 ||a - b||_2^2 (the 1/2 makes `l2` + `gd` the delta "
             "rule)", role="objective"),
    "lp": _f("a b p", None, "reduce_all", "1/p sum |a - b|^p (Miras' l_p attentional bias, its "
             "factor p folded into the learning rate)", role="objective"),
    "huber": _f("a b delta", None, "reduce_all", "coordinate-wise Huber: 1/2 r^2 if |r| <= delta "
                "else delta (|r| - delta/2), r = a - b", role="objective", optimizer_ok=False),
    "window": _f("width loss gamma", 2, "reduce_all", "Atlas' Omega rule: sum over the last "
                 "`width` units of gamma_i * loss evaluated on unit i's context at the current "
                 "state", role="window"),
    "orthogonality": _f("a", None, "reduce_all", "1/2 ||a^T a - I||_F^2 (eq. 43)",
                        role="objective"),
    # initial values
    "zeros": _f("", None, "init", "all zeros", role="init", optimizer_ok=False),
    "ones": _f("", None, "init", "all ones", role="init", optimizer_ok=False),
    "eye": _f("", None, "init", "the identity matrix", role="init", optimizer_ok=False),
    "normal": _f("std", 0, "init", "independent normal entries with standard deviation std "
                 "(default 1 / sqrt(fan_in))", role="init", optimizer_ok=False),
    "uniform": _f("bound", 0, "init", "uniform entries in [-bound, bound] (default 1 / "
                  "sqrt(fan_in))", role="init", optimizer_ok=False),
    # aggregation of parallel branches (CMS independent variant, eq. 74)
    "wsum": _f("weights a", 2, "branches", "sum_i weights[i] * a_i: a (learnable) weighted sum "
               "of branches", role="aggregate", variadic=True),
}


def shaped(*shapes: str) -> tuple[str, ...]:
    """The built-ins of these shape classes (SHAPES), in table order."""
    unknown = set(shapes) - set(SHAPES)
    if unknown:
        raise ValueError(f"unknown shape classes {sorted(unknown)}")
    return tuple(name for name, f in FUNCTIONS.items() if f.shape in shapes)


#: The activations an `mlp(...)` state may name between its layers, and its other options.
MLP_ACTIVATIONS = {"gelu": "GELU (erf form), the default", "silu": "a * sigmoid(a)",
                   "relu": "max(a, 0)", "tanh": "tanh"}
MLP_OPTIONS = {"residual": "adds the input to the output, M(u) = u + MLP(u) (eq. 89); needs the "
                           "first and last widths equal",
               "layernorm": "normalises the last layer's output, LN(MLP(u)) * (gamma + 1) (+ u with "
                            "`residual`): LayerNorm without affine, eps 1e-5, gamma a learned "
                            "weight of the memory of width d_L (initially 0), updated by the rule "
                            "like the matrices (titans-pytorch's ResidualNorm, from TTT)"}

#: The options the optimizer compiler does not compute (the validator refuses them there).
MODULE_ONLY_MLP_OPTIONS = frozenset({"layernorm"})

#: Name of the objective that stands for the outer (task) loss.
TASK = "task"


@dataclass(frozen=True)
class RuleSpec:
    """A learning rule: its parameters (positional order) with defaults (None: optional, absent
    unless given), and its update."""

    params: tuple[str, ...]
    defaults: dict
    doc: str
    extra_state: tuple[str, ...] = ()


#: The guard of a module memory's write (docs/modules.md, "Stability"); default None: none.
CLIP_DOC = ("; clip = c (module memories): every unit's gradient is clipped per weight matrix, "
            "G <- G min(1, c / ||G||_F)")

RULES: dict[str, RuleSpec] = {
    "gd": RuleSpec(("lr", "decay", "clip"), {"decay": 1, "clip": None},
                   "S <- decay * S - lr * grad L(S) (eq. 2; decay = retention / weight decay)"
                   + CLIP_DOC),
    "dgd": RuleSpec(("lr", "decay", "normalized", "precondition", "clip"),
                    {"decay": 1, "normalized": True, "precondition": False, "clip": None},
                    "delta gradient descent: S <- decay S - lr' grad L(S), lr' = lr / (1 + lr ||k||^2) "
                    "(lr if not normalized), k the key of the objective's l2(S(k), v) term; for "
                    "that objective this is S (decay I - lr' k k^T) + lr' v k^T, the exact "
                    "minimiser of eq. 56 by Sherman-Morrison (eq. 57). With precondition = true, "
                    "NL eq. 88 as printed: S <- S_prev (decay I - lr' k k^T) - lr' grad L(S), the "
                    "preconditioner on the weight that multiplies k (an MLP's first layer) of the "
                    "previous token's state, the gradient at the chunk start (eq. 90)" + CLIP_DOC),
    "momentum": RuleSpec(("lr", "beta", "decay", "clip"), {"decay": 1, "clip": None},
                         "Titans eqs. 13-14: m <- beta m - lr grad L(S); S <- decay S + m"
                         + CLIP_DOC,
                         extra_state=("momentum",)),
    "ema": RuleSpec(("beta",), {},
                    "S <- beta S - (1 - beta) grad L(S): with L = -dot(S, g) an exponential "
                    "moving average of g"),
    "newton_schulz": RuleSpec(("steps", "polynomial", "eps", "precision"),
                              {"steps": 5, "polynomial": "quintic", "eps": 1e-7,
                               "precision": "float32"},
                              "S starts from its initial value each unit and takes `steps` "
                              "Newton-Schulz steps on the orthogonality objective, eq. 44 "
                              "(cubic: zeta = 1/4 GD; quintic: Muon's (3.4445, -4.7750, 2.0315))"),
    "solve": RuleSpec((), {}, "the exact minimiser in closed form (e.g. Adam's eqs. 102-105); the "
                      "compiler must know a closed form for the objective"),
}

#: In a chain `r1 then r2 ... then rn`, every rule but the last transforms the update direction
#: u (starting from the gradient of the objective) and the last applies it to the state.
TRANSFORM_RULES = {"momentum", "ema", "newton_schulz"}
