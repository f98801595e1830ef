"""Valid-looking deep-memory module specs for differential fuzzing (a hypothesis strategy):
levels with one `mlp(...)` memory, in the shapes the chunked schedule's deep fast paths
recognise (nldsl/lower/{deep,periodic,derived,chain}_forms.py) and next to them. tests/
test_fuzz_deep.py requires of each that it runs alike in both schedules or is refused with a
located error. Needs `hypothesis` (the `test` extra).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

#: Objectives on the memory's forward pass m = M(k) (or a derived memory's), by kind. All use the
#: memory as M(u) for one u, but "two-inputs" (the deep forms refuse it: the reference runs).
LOSSES = {
    "l2": "l2({m}, v{i})",
    "lp3": "lp({m}, v{i}, 3)",
    "huber": "huber({m}, v{i}, 1.0)",
    "yaad": "l2({m}, v{i}) if norm({m} - v{i}) <= delta{i} else delta{i} * lp({m}, v{i}, 1)",
    "scaled": "theta{i} * l2({m}, v{i})",
    "autograd": "l2(tanh({m}), v{i})",
    "dot": "-dot({m}, v{i}) + 0.5 * l2({m}, 0)",
    "two-inputs": "l2({m}, v{i}) + 0.5 * l2({n}, v{i})",
}
#: Rules (or chains) on an MLP memory: name -> text with {lr} the step's gate, {decay} the decay,
#: {clip} the guard (docs/modules.md, "Stability") or nothing.
RULES = {
    "gd": "gd(lr = {lr}, decay = {decay}{clip})",
    "momentum": "momentum(lr = {lr}, beta = beta{i}, decay = {decay}{clip})",
    "dgd": "dgd(lr = {lr}, decay = {decay})",
    "dgd-precondition": "dgd(lr = {lr}, decay = {decay}, precondition = true)",
    "ema": "ema(beta{i})",
    "momentum-ns-gd": "momentum(lr = 1, beta = beta{i}) then newton_schulz({ns}) then "
                      "gd(lr = {lr}, decay = {decay})",
    "ema-cubic-ns-gd": "ema(beta{i}) then newton_schulz(steps = {ns}, polynomial = \"cubic\") "
                       "then gd(lr = {lr}, decay = {decay})",
    "ema-gd": "ema(beta{i}) then gd(lr = {lr}, decay = {decay})",
    "ns-gd": "newton_schulz({ns}) then gd(lr = {lr}, decay = {decay})",
    "momentum-gd": "momentum(lr = 1, beta = beta{i}) then gd(lr = {lr}, decay = {decay})",
}
#: Derived memories (lets of per-weight expressions, docs/language.md "MLP memories") of a state A.
DERIVED = {
    "row-norm": "A{i} / norm(A{i})",
    "moneta": "A{i} / (sum(transpose(sum(abs(A{i}) ** 4))) ** 0.5 + 1e-6)",
    "memora": "softmax(A{i})",
    "scaled": "0.5 * A{i}",
}


@dataclass(frozen=True)
class DeepDraw:
    """A drawn spec, the Newton-Schulz steps its chains take (the tolerance needs them), whether
    a read is rmsnorm-ed (likewise), and, for draws of a shape docs/modules.md says takes a fast
    path, level -> the class names of the forms it may take (`expect`; empty: no claim)."""
    text: str
    ns_steps: int = 0
    rmsnorm: bool = False
    expect: dict[str, tuple[str, ...]] = field(default_factory=dict)


@st.composite
def deep_module_specs(draw, max_levels: int = 2) -> DeepDraw:
    """A module of 1 or 2 levels, each one `mlp` memory per head (depth 1-3, widths 1-6,
    activations, `residual` where the widths allow, `layernorm`, learned or default initial
    weights), keys l2-normalised (through `silu` or a `conv`), values and queries projected from
    x, gates sigmoid/softplus of projections one per head or channel-wise, a loss of LOSSES, a
    rule or chain of RULES, `window(c, ...)`, `chunk C` (C often not dividing T), `every N`,
    `once` (the periodic form, with `period_mean` gates and `partial flush|drop`), `before
    write` reads, reads through derived memories of DERIVED (the straight-through loss of
    moneta/memora, or the chain rule through f), `backprop`, a second memory `like` the first
    (learned, or written from it per weight), a value of the second level made from the first
    one's `before write` read. `out` sums the projected reads.

    Magnitudes: keys unit vectors, values and queries O(1), learning rates <= 0.3, decays and
    momentum gates sigmoids in (0, 1): one write moves an O(1)-weight MLP by at most a few tenths
    and the step map has Lipschitz constant below 2 (tests/test_fuzz_deep.py's tolerance).
    Mostly valid, never guaranteed: "runs alike in both schedules, or a located NLDSLError"."""
    dim, heads, head_dim = draw(st.integers(1, 4)), draw(st.integers(1, 2)), draw(st.integers(1, 4))
    hparams = [f"dim: int = {dim} >= 1", f"heads: int = {heads} >= 1",
               f"head_dim: int = {head_dim} >= 1", "lr = 0.3 in (0, 1]"]
    params, levels, outs, expect, widths = [], [], [], {}, []
    ns_total, rmsnorm, fast_all = 0, False, True
    aim = draw(st.booleans())           # only what docs/modules.md says takes a fast path
    for i in range(draw(st.integers(1, max_levels))):
        per_head = draw(st.booleans())
        width, gate_width = ("heads * head_dim", "heads") if per_head else ("head_dim", "1")
        channel = not aim and draw(st.integers(0, 5)) == 0     # a channel-wise decay
        widths.append(width)
        params += [f"state Wk{i} : [dim, {width}] = normal(0.5)",
                   f"state Wv{i} : [dim, {width}] = normal(0.5)",
                   f"state Wq{i} : [dim, {width}] = normal(0.5)",
                   f"state Wo{i} : [{width}, dim] = normal(0.5)"] + \
                  [f"state W{g}{i} : [dim, {width if g == 'a' and channel else gate_width}]"
                   " = normal(1.0)" for g in "eabdt"]
        # the memory
        depth = draw(st.integers(1, 3))
        hidden = [draw(st.sampled_from(["head_dim", "2 * head_dim", "3", "head_dim + 1", "1"]))
                  for _ in range(depth - 1)]
        act = draw(st.sampled_from(["", ", gelu", ", silu", ", tanh", ", relu"]))
        once = draw(st.integers(0, 3)) == 0
        norm = (once or not aim) and draw(st.integers(0, 4)) == 0
        options = act + (", residual" if draw(st.booleans()) else "") + (", layernorm" if norm else "")
        # a later level's bare `init learned` is learned by the level before it (nldsl/build.py)
        init = draw(st.sampled_from(["", " init learned" if i == 0 else " init learned by outer"]))
        # a per-weight f acts on layernorm's gamma too, which may be 0: there row norms and
        # Moneta's q-norm are 0/0 or not differentiable (NaN in both schedules), so not drawn
        smooth = ["memora", "scaled"] if norm else sorted(DERIVED)
        derived = draw(st.sampled_from([None] * 6 + smooth))
        s = f"A{i}" if derived else f"M{i}"
        body = [f"state {s} : mlp({' -> '.join(['head_dim'] + hidden + ['head_dim'])}{options}){init}"]
        key = draw(st.sampled_from(["l2norm(x @ Wk{i})", "l2norm(silu(x @ Wk{i}))",
                                    "l2norm(silu(conv(x @ Wk{i}, 2)))"]))
        value = draw(st.sampled_from(["x @ Wv{i}", "silu(x @ Wv{i})", "conv(x @ Wv{i}, 3)"]))
        cross = bool(levels) and not aim and draw(st.integers(0, 2)) == 0
        if cross:
            # a value generated by the other level's `before write` read (as titans_mac's)
            first = levels[0][1]
            first.insert(len(first) - 1, f"  read z0 = {first[1].split()[1]}(k0) before write")
            params.append(f"state Wz{i} : [{widths[0]}, {width}] = normal(0.3)")
            value = "x @ Wv{i} + z0 @ Wz{i}"
        query = draw(st.sampled_from(["l2norm(x @ Wq{i})", "x @ Wq{i}"]))
        every = draw(st.sampled_from([2, 3] if once else [1] if aim else [1, 1, 1, 2]))
        pooled = once and draw(st.booleans())
        pool = (lambda e: f"period_mean({e})") if pooled else (lambda e: e)
        body += [f"key k{i} = {key.format(i=i)}", f"value v{i} = {value.format(i=i)}",
                 f"query q{i} = {query.format(i=i)}",
                 f"gate eta{i} = lr * sigmoid(x @ We{i})",
                 f"gate alpha{i} = {draw(st.sampled_from(['sigmoid({a})', '1 - 0.1 * sigmoid({a})']))}"
                 .format(a=pool(f"x @ Wa{i}")),
                 f"gate beta{i} = sigmoid({pool(f'x @ Wb{i}')})",
                 f"gate delta{i} = softplus(x @ Wd{i})", f"gate theta{i} = sigmoid(x @ Wt{i})",
                 f"gate g{i} = sigmoid(x @ Wq{i})"]
        # what the loss and reads apply
        trained, reader = s, s
        if derived:
            body.append(f"let W{i} = {DERIVED[derived].format(i=i)}")
            trained = draw(st.sampled_from([s, f"S{i}"] + ([] if aim else [f"W{i}"])))
            if trained == f"S{i}":
                body.append(f"let S{i} = A{i} + stopgrad(W{i} - A{i})")
            reader = draw(st.sampled_from([s, f"W{i}"]))
        loss_kind = draw(st.sampled_from([n for n in sorted(LOSSES) if not aim or n != "two-inputs"]))
        loss = LOSSES[loss_kind].format(m=f"{trained}(k{i})", n=f"{trained}(q{i})", i=i)
        window = None if once or (aim and derived) else draw(st.sampled_from([None, None, 1, 2, 3]))
        if window:
            loss = f"window({window}, {loss}, {draw(st.sampled_from(['1', f'theta{i}']))})"
        simple = ["gd", "momentum"] if not (aim and window) else []
        chains = [] if aim and (once or derived) else ["ema-gd", "momentum-gd", "momentum-ns-gd",
                                                       "ns-gd", "ema-cubic-ns-gd"]
        others = [] if aim else sorted(RULES)
        if once and not aim and draw(st.integers(0, 3)):
            chains, others = [], []
        rule_kind = draw(st.sampled_from(simple + chains + others))
        ns = draw(st.integers(1, 2))
        ns_total += ns if "ns" in rule_kind else 0
        clip = rule_kind in ("gd", "momentum") and draw(st.integers(0, 4)) == 0
        lr = draw(st.sampled_from([f"eta{i}", f"eta{i}", f"eta{i} * alpha{i}"])) if channel \
            else f"eta{i}"                                  # a channel-wise lr
        second = not aim and not derived and draw(st.integers(0, 3)) == 0
        body.append(("" if not second else f"{s}: ") + f"minimize {loss} by " + RULES[rule_kind]
                    .format(lr=lr, decay=f"alpha{i}", i=i, ns=ns, clip=", clip = 1.0" if clip else ""))
        if second:                  # a second memory of the layout, learned or written from M
            body += [f"state N{i} like {s}", draw(st.sampled_from([
                f"N{i}: minimize l2(N{i}(v{i}), k{i}) by gd(lr = eta{i}, decay = alpha{i})",
                f"N{i} <- 0.9 * N{i} + 0.1 * {s}"]))]
        read = draw(st.sampled_from(["{a}", "rmsnorm({a})", "{a} * g{i}", f"{{a}} - {reader}(k{i})"]
                                    + ([f"{{a}} + 0.5 * {s}(q{i})"] if derived else [])))
        rmsnorm = rmsnorm or read.startswith("rmsnorm")
        before = (not once or not aim) and draw(st.integers(0, 3)) == 0
        body.append(f"read y{i} = {read.format(a=f'{reader}(q{i})', i=i)}"
                    + (f" + N{i}(q{i})" if second else "") + (" before write" if before else ""))
        chunk = draw(st.sampled_from([2, 2, 3, 4, 5] if aim and not once else [1, 2, 2, 3, 4, 5])) * every
        level = f"every {every} {'token' if every == 1 else 'tokens'} chunk {chunk}" + \
            (" heads heads" if per_head else "") + (" backprop" if draw(st.booleans()) else "")
        if once:
            level += draw(st.sampled_from(["", " partial drop", " partial flush"])) + " once"
        elif every > 1:
            level += draw(st.sampled_from(["", " partial drop"]))
        levels.append((-every, [f"level mem{i} {level} {{"] +
                       [f"  {line}" for line in body] + ["}"]))
        outs.append(f"y{i} @ Wo{i}")
        form = _expected_form(once=once, every=every, chunk=chunk, norm=norm, channel=channel,
                              derived=derived, trained=trained, reader=reader, loss=loss_kind,
                              window=window, rule=rule_kind, before=before, heads=per_head,
                              clip=clip)
        form = None if second or cross else form     # docs/modules.md promises no form there
        fast_all = fast_all and form is not None
        if form:
            expect[f"mem{i}"] = form
    levels.sort(key=lambda level: level[0])                 # slower levels first
    lines = params + [line for _, level in levels for line in level] + [f"out = {' + '.join(outs)}"]
    text = (f"module fuzzed({', '.join(hparams)}) {{\n" + "".join(f"  {line}\n" for line in lines)
            + "}\n")
    return DeepDraw(text, ns_total, rmsnorm, expect if fast_all else {})


def _expected_form(*, once, every, chunk, norm, channel, derived, trained, reader, loss, window,
                   rule, before, heads, clip) -> tuple[str, ...] | None:
    """The fast forms docs/modules.md ("Schedules") says a level of this draw may take (their
    class names), or None where it says the level runs the reference (or says nothing)."""
    if channel or loss == "two-inputs" or (clip and (once or window)):
        return None
    if once:
        plain = rule in ("gd", "momentum") and not derived and not before
        return ("PeriodicForm",) if plain and chunk % every == 0 else None
    if every != 1 or chunk <= 1 or norm:
        return None
    if derived:
        straight = trained in (f"A{trained[1:]}", f"S{trained[1:]}")
        ok = rule in ("gd", "momentum") and straight and not window
        return ("DerivedForm",) if ok else None
    if rule in ("gd", "momentum") and not window:
        return ("DeepForm",)
    if rule in ("ema-gd", "momentum-gd") and not window and not heads:
        return ("ChainForm", "SnapshotForm")        # the snapshot form is asked first
    if rule in ("momentum-ns-gd", "ema-gd", "ns-gd", "momentum-gd", "ema-cubic-ns-gd") or (rule == "gd" and window):
        return ("ChainForm",)
    return None
