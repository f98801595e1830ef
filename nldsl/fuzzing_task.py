"""Valid-looking module specs of two families for differential fuzzing (hypothesis strategies):
levels that learn from the task loss (`minimize task by gd`, the CMS family) and self-modifying
levels in the snapshot chunk form; the first also with a token-mixing construct downstream of a
task read (`downstream_task_specs`, nldsl/fuzzing_task_mix.py). tests/test_fuzz_task.py
requires of each that it runs alike in both schedules or is refused with a located error.
Needs `hypothesis` (the `test` extra).
"""
from __future__ import annotations

from hypothesis import strategies as st

from nldsl.fuzzing_task_mix import KINDS, downstream

#: How a drawn CMS composes its task levels, as the stdlib writes them: a chain (cms.nl), the
#: blocks' initial states learned by the next slower block (cms_nested.nl), parallel blocks
#: aggregated by a learned weighted sum (cms_independent.nl).
COMPOSITIONS = ("sequential", "nested", "independent")
ACTIVATIONS = ("gelu", "silu", "relu", "tanh")


def _memory(draw, name: str, init: str) -> tuple[str, str]:
    """A task memory `dim -> dim`: a matrix, or an mlp of depth 1 or 2 (residual or not). Its
    declaration and how a read applies it (`{}` the input)."""
    kind = draw(st.sampled_from(["matrix", "mlp1", "mlp2", "mlp2"]))
    read = draw(st.sampled_from(["{m}({{}})", "{m}({{}})", "{m}({{}}) + {{}}", "tanh({m}({{}}))",
                                 "rmsnorm({m}({{}}))"])).format(m=name)
    if kind == "matrix":
        return f"state {name} : [dim, dim] {init}", read
    widths = "dim -> dim" if kind == "mlp1" else f"dim -> {draw(st.sampled_from(['dim', '2 * dim']))} -> dim"
    options = [draw(st.sampled_from(ACTIVATIONS))]
    options += ["residual"] if draw(st.booleans()) else []
    init = "" if init == "= eye()" else init
    return f"state {name} : mlp({widths}, {', '.join(options)}) {init}", read


@st.composite
def task_specs(draw, max_levels: int = 3) -> str:
    """The text of a module of levels that learn from the task loss (`_task_spec`)."""
    return _task_spec(draw, max_levels, None)[0]


@st.composite
def downstream_task_specs(draw, kind: str | None = None, max_levels: int = 3) -> dict:
    """A `_task_spec` whose `out` reads, downstream of a task level's read, a token-mixing
    construct of `kind` (one of nldsl.fuzzing_task_mix.KINDS; None: drawn), with every period
    above 1 (so that a call's end can cut a segment): dict(text, kind, period (the fastest),
    fast (whether the chunked schedule runs every level in a fast form))."""
    kind = kind or draw(st.sampled_from(KINDS))
    text, period, mix = _task_spec(draw, max_levels, kind)
    return dict(text=text, kind=kind, period=period, fast=mix.fast)


def _task_spec(draw, max_levels: int, kind: str | None):
    """The text of a module `dim -> dim` with 1 to `max_levels` levels `every N tokens` that
    `minimize task by gd(lr = lr_i[, decay = ...])` (the fastest period N in 1..5, the others
    multiples: periods nest), each a matrix or mlp memory (depth 1 or 2) with `init learned`
    (plain or by outer; by the next slower task level in the nested composition, whose period
    is then a strict multiple), a fixed `eye()` or the default start, read plainly, through
    tanh or rmsnorm or with a residual; `backprop` or not, `partial flush|drop` or neither,
    rates 0 too; composed sequentially, nested or independently (COMPOSITIONS); optionally a
    key context `x @ Wg` (or its `period_mean`) read by the first block, a Hope-style
    self-modifying level whose `before write` read the first block reads (hope.nl), or a
    non-task Hebbian level beside them, whose read is added to `out`. With a `kind`, the
    fastest period is 2..5 and a construct of that kind mixes a task read downstream
    (nldsl.fuzzing_task_mix.downstream), read into `out` or by one more task level (of the
    fastest period). The text, the fastest period and the construct.

    The rates are small (0.01 to 0.05, and the decays in [0.9, 1]) so that a write moves the
    memories by a step of norm below 1 for unit-norm inputs: a stream's rounding is amplified
    by at most a factor 2 per write (tests/test_fuzz_task.py derives its bound from it)."""
    composition = draw(st.sampled_from(COMPOSITIONS))
    count = draw(st.integers(1, max_levels))
    # fastest first; periods nest (docs/language.md); above 1 where a cut must split a period
    periods = [draw(st.integers(2 if kind else 1, 5))]
    for _ in range(count - 1):
        periods.append(periods[-1] * draw(st.sampled_from([2, 3] if composition == "nested"
                                                           else [1, 1, 2, 3])))
    periods.reverse()                           # listed slow -> fast
    rates = [draw(st.sampled_from(["0.01", "0.03", "0.05", "0"])) for _ in range(count)]
    hparams = ["dim: int = 3 >= 1"] + [f"lr{i} = {r} >= 0" for i, r in enumerate(rates)]
    lines: list[str] = []
    context = draw(st.sampled_from([None, None, "x @ Wg", "period_mean(x @ Wg)"]))
    # Hope (hope.nl): the first block reads a self-modifying memory's `before write` read
    hope = context is None and draw(st.integers(0, 3)) == 0
    if context:
        lines.append("state Wg : [dim, dim] = normal(0.5)")
    if composition == "independent":
        lines.append(f"state mix : [{count}] = {draw(st.sampled_from(['1 / 3', '0.5', '1']))}")
    reads = []
    for i, period in enumerate(periods):
        name = f"theta{i}"
        learned = f"init learned by c{i - 1}" if composition == "nested" and i > 0 else \
            draw(st.sampled_from(["init learned", "init learned by outer", "init learned",
                                  "= eye()", ""]))
        declaration, apply = _memory(draw, name, learned)
        source = ("o" if hope else "x") if composition == "independent" or i == 0 else reads[-1]
        body = [declaration]
        if i == 0 and context:
            body.append(f"key u = {context}")
            source = "u"
        decay = draw(st.sampled_from([None, None, "1", "0.95"]))
        rule = f"gd(lr = lr{i}" + (f", decay = {decay})" if decay else ")")
        body.append(f"minimize task by {rule}")
        read = f"h{i}"
        body.append(f"read {read} = {apply.replace('{}', source)}")
        reads.append(read)
        options = f"every {period} {'token' if period == 1 else 'tokens'}"
        options += " backprop" if draw(st.booleans()) or composition == "nested" else ""
        partial = draw(st.sampled_from([None, "flush", "drop"]))
        options += f" partial {partial}" if partial else ""
        lines += [f"level c{i} {options} {{"] + [f"  {b}" for b in body] + ["}"]
    slow = len(lines)                           # the task levels end: listed slow to fast
    out = reads[-1] if composition != "independent" else f"wsum(mix, {', '.join(reads)})"
    if count == 1 and composition == "independent":
        out = f"mix * {reads[0]}"
    if hope:
        lines += [f"level memory every 1 token chunk {draw(st.integers(2, 4))} backprop {{",
                  "  state M_memory : mlp(dim -> dim -> dim, gelu, residual) init learned by outer",
                  "  key k = l2norm(M_memory(x))", "  value v = stopgrad(M_memory(x))",
                  "  minimize l2(M_memory(k), v) by dgd(lr = 0.1, decay = 0.9)",
                  "  read o = M_memory(x) before write", "}"]
    elif draw(st.integers(0, 3)) == 0:            # a non-task level beside the task levels
        lines += ["state Wk : [dim, dim] = normal(0.5)",
                  "level beside every 1 token {", "  state M : [dim, dim] = 0",
                  "  key k = l2norm(x @ Wk)", "  minimize -dot(M(k), x) by gd(lr = 0.1, decay = 0.9)",
                  "  read r = M(k)", "}"]
        out = f"{out} + r"
    mix = downstream(draw, kind, reads, out) if kind else None
    if mix:
        lines = [f"{line} before write" if line.strip().split(" = ")[0] in
                 {f"read {r}" for r in mix.before} else line for line in lines] + mix.lines
        out = mix.out
        if draw(st.integers(0, 3)) == 0:        # a task level learns from the mixed value too
            lines[slow:slow] = [f"level cpost every {periods[-1]} tokens {{",
                                "  state Tp : [dim, dim] init learned",
                                "  minimize task by gd(lr = 0.03)", f"  read hp = Tp({out})", "}"]
            out = "hp"
    lines.append(f"out = {out}")
    return (f"module fuzzed({', '.join(hparams)}) {{\n" + "".join(f"  {line}\n" for line in lines)
            + "}\n"), periods[-1], mix


# ---------------------------------------------------------------- self-modifying (snapshot) specs

#: The adaptive projections a drawn self-modifying spec may give memories of their own (NL
#: eq. 83): the key, the value, the rate and the decay; the others are fixed projections of x.
PROJECTIONS = ("M_k", "M_v", "M_eta", "M_alpha")


@st.composite
def snapshot_specs(draw) -> str:
    """The text of a self-modifying module (NL sec. 8; self_modifying_titans.nl, hope.nl,
    examples/self_modifying_titans_momentum.nl): a `chunk C` level every token (`memory`, an mlp
    memory M_memory read `before write` by a query x @ Wq) and, optionally, a `projections` level
    before it with some of the memories M_k, M_v, M_eta, M_alpha (chunk C' of its own; without
    it the memory level computes the contexts). Each memory is an mlp of depth 1 or 2 (out
    width dim, or 1 for the gates; residual or not; `init learned` or the default draw), learns
    an objective of X(k) (l2, huber, lp, -dot, or a sum with a second application X(v)) and a
    named target, its self-generated `stopgrad(X(v))` (eq. 84) or v, by gd or dgd (normalized,
    precondition drawn), after up to two momentum / ema transforms (rule chains), `clip` drawn
    (on the transforms too). Keys are l2-normalised (through a conv or not: NL's Hope), values
    through a conv or not; the rate eta = softplus(M_eta(x)) * eta_scale, sigmoid(x @ We) *
    eta_scale or eta_scale; the decay alpha = sigmoid(M_alpha(x)), sigmoid(x @ Wa) or a
    constant in (0, 1]. The read is M_memory(q), through rmsnorm, a gate or a conv; `out` is y,
    y + x or tanh(y) @ Wq. Chunks are 2..5, `backprop` drawn. Mostly the snapshot chunk form
    (lower/snapshot_forms.py); the property is "runs alike in both schedules, or fails with a
    located NLDSLError"."""
    eta_scale = draw(st.sampled_from(["0.05", "0.1", "0.3"]))
    hparams = ["dim: int = 3 >= 1", f"eta_scale = {eta_scale} > 0", "beta = 0.5 >= 0"]
    adaptive = [p for p in PROJECTIONS if draw(st.booleans())]
    split = bool(adaptive) and draw(st.integers(0, 3)) > 0      # a projections level of its own
    conv = lambda a: f"conv({a}, {draw(st.integers(1, 3))})" if draw(st.integers(0, 3)) == 0 else a
    params = ["state Wq : [dim, dim] = normal(0.5)"]

    def fixed(name: str, width: str = "dim") -> str:
        params.append(f"state {name} : [dim, {width}] = normal(0.5)")
        return f"x @ {name}"

    def memory(name: str, out: str) -> str:
        hidden = draw(st.sampled_from([None, "dim", "2 * dim"]))
        widths = f"dim -> {hidden} -> {out}" if hidden else f"dim -> {out}"
        options = [draw(st.sampled_from(ACTIVATIONS))]
        options += ["residual"] if out == "dim" and draw(st.booleans()) else []
        init = draw(st.sampled_from([" init learned by outer", " init learned", ""]))
        return f"state {name} : mlp({widths}, {', '.join(options)}){init}"

    k = f"l2norm({conv('M_k(x)' if 'M_k' in adaptive else fixed('Wk'))})"
    v = conv("M_v(x)" if "M_v" in adaptive else fixed("Wv"))
    eta = "softplus(M_eta(x)) * eta_scale" if "M_eta" in adaptive else \
        draw(st.sampled_from([f"sigmoid({fixed('We', '1')}) * eta_scale", "eta_scale"]))
    alpha = "sigmoid(M_alpha(x))" if "M_alpha" in adaptive else \
        draw(st.sampled_from([f"sigmoid({fixed('Wa', '1')})", "1", "0.9"]))
    contexts = [f"key k = {k}", f"value v = {v}", f"gate eta = {eta}", f"gate alpha = {alpha}"]
    clip = draw(st.sampled_from([None, None, "0.5", "2"]))

    def rule() -> str:
        base = draw(st.sampled_from(["gd", "dgd", "dgd"]))
        args = ["lr = eta", "decay = alpha"]
        if base == "dgd":
            for option in ("normalized", "precondition"):
                if draw(st.booleans()):
                    args.append(f"{option} = {draw(st.sampled_from(['true', 'false']))}")
        if clip:
            args.append(f"clip = {clip}")
        chain = "".join(draw(st.lists(st.sampled_from([
            "momentum(lr = 1, beta = beta) then ", "ema(beta) then ",
            f"momentum(lr = 1, beta = beta, clip = {clip or 1}) then "]), max_size=2)))
        return f"{chain}{base}({', '.join(args)})"

    def learns(name: str, out: str, own_v: bool = True) -> list[str]:
        """`own_v`: v is a context of the same level (another level's is read per token: not
        the snapshot form, unless under the memory's own application)."""
        target = f"stopgrad({name}(v))" if out == "1" or not own_v or draw(st.booleans()) else "v"
        loss = draw(st.sampled_from([
            "l2({m}(k), t_{m})", "l2({m}(k), t_{m})", "huber({m}(k), t_{m}, 0.5)",
            "l2({m}(k), t_{m}) + 0.5 * l2({m}(v), t_{m})", "lp({m}(k), t_{m}, 3)",
            "-dot({m}(k), t_{m})"])).format(m=name)
        if loss.startswith("lp(") and name == "M_v":
            # lp 3's gradient grows with the error squared: with v = M_v(x) as its own target
            # nothing holds the write back (its weights reached 1e254, then NaN, in both
            # schedules), so the step bound in the docstring needs the target held fixed
            target = f"stopgrad({name}(v))"
        return [f"value t_{name} = {target}", f"{name}: minimize {loss} by {rule()}"]

    levels = []
    own = []
    for name in adaptive:
        own += [memory(name, "1" if name in ("M_eta", "M_alpha") else "dim")] + \
            learns(name, "1" if name in ("M_eta", "M_alpha") else "dim")
    backprop = lambda: " backprop" if draw(st.booleans()) else ""
    chunk = lambda: draw(st.integers(2, 5))
    body = [memory("M_memory", "dim"), f"query q = l2norm({conv('x @ Wq')})"] + \
        learns("M_memory", "dim", own_v=not split) + [draw(st.sampled_from([
            "read y = M_memory(q) before write", "read y = rmsnorm(M_memory(q)) before write",
            "read y = M_memory(q) * alpha before write", "read y = conv(M_memory(q), 2) before write"]))]
    if split:
        levels.append((f"level projections every 1 token chunk {chunk()}{backprop()}",
                       own + contexts))
        levels.append((f"level memory every 1 token chunk {chunk()}{backprop()}", body))
    else:
        levels.append((f"level memory every 1 token chunk {chunk()}{backprop()}",
                       own + contexts + body))
    lines = list(params)
    for head, items in levels:
        lines += [f"{head} {{"] + [f"  {item}" for item in items] + ["}"]
    lines.append(draw(st.sampled_from(["out = y", "out = y + x", "out = tanh(y) @ Wq"])))
    return (f"module fuzzed({', '.join(hparams)}) {{\n" + "".join(f"  {line}\n" for line in lines)
            + "}\n")
