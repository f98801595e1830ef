"""Valid-looking spec texts for differential fuzzing (hypothesis strategies): optimizer specs
drawn from the vocabulary tables (nldsl.language.builtins FUNCTIONS and RULES) and linear-family module
specs. tests/test_fuzz_optim.py and tests/test_fuzz_module.py require of each that it runs alike
in every schedule or is refused with a located error. Needs `hypothesis` (the `test` extra).
"""
from __future__ import annotations

from hypothesis import strategies as st

from nldsl.language.builtins import shaped
from nldsl.testing import names


# ---------------------------------------------------------------- valid-looking optimizer specs

#: Names that collide with Python or with the generated code's own names (issue 8, §5), beside
#: ordinary ones. Grammar keywords are left out (they are not names), `int` & co. are not.
FUZZ_NAMES = ("int", "float", "zip", "any", "len", "range", "x", "st", "c", "writing", "spec",
              "schedule", "lambda", "class", "None", "self", "torch", "math", "kernels", "group",
              "p", "g", "m", "v", "k", "lr", "beta", "eps", "__debug__", "W_2", "_h", "sum_")

#: Built-ins (nldsl.language.builtins.FUNCTIONS) by how an optimizer expression can call them on
#: W-shaped tensors [r, c], from the table's shape column; `optimizer_specs` asserts it covers
#: the table. POINTWISE ones also take a number.
POINTWISE = shaped("elementwise")
ELEMENTWISE = POINTWISE + shaped("last_dim_keep", "identity")    # [r, c] -> [r, c]
LAST_DIM_REDUCTIONS = shaped("last_dim_reduce")                 # [r, 1], broadcasts with [r, c]
MODULE_ONLY = ("conv", "attention", "window_attention", "segment_attention", "rope", "concat",
               "wsum", "flatten")
INITIALISERS = shaped("init")


def fuzz_names() -> st.SearchStrategy[str]:
    """A user name: one of FUZZ_NAMES, or a short identifier (never a grammar keyword)."""
    return st.one_of(st.sampled_from(FUZZ_NAMES), names().filter(lambda n: len(n) <= 3))


#: Constructs `optimizer_specs(exclude=...)` can leave out, each a family the fuzzer finds broken.
CONSTRUCTS = frozenset({"python-names", "rule-chains", "tensor-conditionals", "clamp-stopgrad",
                        "odd"})


@st.composite
def optimizer_specs(draw, max_levels: int = 3, exclude: frozenset = frozenset()) -> str:
    """The text of an optimizer spec drawn from the vocabulary tables (nldsl.language.builtins FUNCTIONS
    and RULES): hyper-parameters of every type (float, int, bool, str choice, tuple), levels
    `every N steps` with keys/lets (also used before they are defined), states `like W` (initial
    values 0, W, grad(W), an expression, another state, themselves, or an initialiser) and MLP
    states, objectives `minimize ... by` every rule with positional and keyword arguments and
    `then` chains, explicit updates, reads (also `before write`), every built-in (also the
    module-only ones, the objectives used as values and `grad` of a non-parameter, which
    nldsl must reject with a located error), conditionals on bools, strings, `step`, shapes
    and tensors (`not` included), and names from FUZZ_NAMES. Mostly shape-correct for matrix
    parameters, never guaranteed valid: the property is "runs alike in both schedules, or
    fails with a located NLDSLError".

    `exclude` leaves out constructs (CONSTRUCTS): "python-names" (FUZZ_NAMES: only short
    generated names), "rule-chains" (`then`), "tensor-conditionals" (`a if tensor > x else b`,
    `not tensor`), "clamp-stopgrad", "odd" (module-only built-ins, `grad` of a non-parameter,
    initialisers and out-of-range numbers inside expressions, built-ins on numbers)."""
    unknown = set(exclude) - CONSTRUCTS
    if unknown:
        raise ValueError(f"unknown constructs {sorted(unknown)}; known: {sorted(CONSTRUCTS)}")
    pool = names().filter(lambda n: len(n) <= 3) if "python-names" in exclude else fuzz_names()
    elementwise = tuple(f for f in ELEMENTWISE if f != "stopgrad" or "clamp-stopgrad" not in exclude)
    from nldsl.language.builtins import FUNCTIONS, RULES

    used: set[str] = {"W", "step"}

    def fresh() -> str:
        name = draw(pool.filter(lambda n: n not in used and n not in FUNCTIONS
                                        and n not in RULES and n != "task"))
        used.add(name)
        return name

    # hyper-parameters
    lr = fresh()
    hp_lines = [f"{lr} = {draw(st.sampled_from(['0.01', '1e-3', '0.1']))} > 0"]
    floats, bools, strs, ints, tuples = [lr], [], [], [], []
    for _ in range(draw(st.integers(0, 3))):
        kind, name = draw(st.sampled_from(["float", "bool", "str", "int", "tuple"])), fresh()
        if kind == "float":
            hp_lines.append(f"{name} = {draw(st.sampled_from(['0.5', '0.9', '2.0', '1e-8']))}"
                            + draw(st.sampled_from(["", " >= 0", " in [0, 10]"])))
            floats.append(name)
        elif kind == "bool":
            hp_lines.append(f"{name} = {draw(st.sampled_from(['true', 'false']))}")
            bools.append(name)
        elif kind == "str":
            hp_lines.append(f'{name} = "{draw(st.sampled_from(["a", "b"]))}" in {{"a", "b"}}')
            strs.append(name)
        elif kind == "int":
            hp_lines.append(f"{name}: int = {draw(st.integers(1, 3))} >= 1")
            ints.append(name)
        else:
            hp_lines.append(f"{name} = (0.9, 0.99) in [0, 1]")
            tuples.append(name)

    def scalar() -> str:
        options = [draw(st.sampled_from(["0", "1", "0.5", "2", "0.001", "3.5", "1e-3"]))]
        options += floats + [f"{t}[{draw(st.integers(0, 1))}]" for t in tuples]
        options += ["step", "size(W, 0)", "size(W, -1)", "ndim(W)"] + ints
        return draw(st.sampled_from(options))

    def condition(tensors, depth) -> str:
        options = ["step > 1", "step == 2", "ndim(W) == 2", "size(W, 0) >= size(W, 1)"]
        options += bools + [f'{s} == "a"' for s in strs] + [f"{s} != \"b\"" for s in strs]
        extra = ["and"] if "tensor-conditionals" in exclude else ["tensor", "not", "and"]
        choice = draw(st.sampled_from(options + extra))
        if choice == "tensor":
            return f"{expr(tensors, depth - 1)} > {scalar()}"
        if choice == "not":
            return f"not ({condition(tensors, depth - 1)})"
        if choice == "and":
            return f"{condition(tensors, depth - 1)} and {condition(tensors, depth - 1)}"
        return choice

    def expr(tensors, depth=2) -> str:
        """A W-shaped tensor (mostly)."""
        leaves = ["W", "grad(W)"] + tensors
        if depth <= 0:
            return draw(st.sampled_from(leaves))
        kinds = ["leaf", "leaf", "unary", "binary", "binary", "scaled", "maxmin", "clamp", "if",
                 "ns", "reduce", "matmul", "scalar_of", "neg", "odd"]
        kind = draw(st.sampled_from([k for k in kinds if k not in exclude
                                     and not (k == "clamp" and "clamp-stopgrad" in exclude)]))
        sub = lambda: expr(tensors, depth - 1)
        if kind == "leaf":
            return draw(st.sampled_from(leaves))
        if kind == "unary":
            return f"{draw(st.sampled_from(elementwise))}({sub()})"
        if kind == "binary":
            return f"({sub()} {draw(st.sampled_from(['+', '-', '*', '/']))} {sub()})"
        if kind == "scaled":
            return f"({scalar()} {draw(st.sampled_from(['*', '/', '+', '-', '**']))} {sub()})" \
                if draw(st.booleans()) else f"({sub()} ** {draw(st.sampled_from(['2', '0.5', '3']))})"
        if kind == "maxmin":
            return f"{draw(st.sampled_from(['max', 'min']))}({sub()}, {draw(st.sampled_from([scalar(), sub()]))})"
        if kind == "clamp":
            return f"clamp({sub()}, {draw(st.sampled_from(['0 - 1', '0', '-0.5']))}, {draw(st.sampled_from(['1', '2']))})"
        if kind == "if":
            return f"({sub()} if {condition(tensors, depth)} else {sub()})"
        if kind == "ns":
            args = [sub()]
            positional = draw(st.integers(0, 4))
            values = [str(draw(st.integers(1, 5))), draw(st.sampled_from(['"cubic"', '"quintic"',
                      "(3.4445, -4.7750, 2.0315)"])), draw(st.sampled_from(["1e-7", "1000.0"])),
                      draw(st.sampled_from(['"float32"', '"bfloat16"', '"float64"']))]
            keys = ["steps", "polynomial", "eps", "precision"]
            args += values[:positional]
            args += [f"{k} = {v}" for k, v in zip(keys[positional:], values[positional:])
                     if draw(st.booleans())]
            return f"newton_schulz({', '.join(args)})"
        if kind == "reduce":
            return f"({sub()} - {draw(st.sampled_from(LAST_DIM_REDUCTIONS))}({sub()}))"
        if kind == "matmul":
            return draw(st.sampled_from([f"(outer({sub()}, {sub()}) @ {sub()})",
                                         f"({sub()} @ transpose({sub()}) @ {sub()})",
                                         f"transpose(transpose({sub()}))"]))
        if kind == "scalar_of":                            # a number times a tensor
            return draw(st.sampled_from([
                f"trace({sub()} @ transpose({sub()})) * {sub()}",
                f"dot({sub()}, {sub()}) * {sub()}", f"l2({sub()}, {sub()}) * {sub()}",
                f"lp({sub()}, {sub()}, 3) * {sub()}", f"huber({sub()}, {sub()}, 1.0) * {sub()}",
                f"orthogonality({sub()}) * {sub()}"]))
        if kind == "neg":
            return f"-{sub()}" if draw(st.booleans()) else f"(0 - {sub()})"
        # odd: what nldsl must reject with a located error, or run alike
        return draw(st.sampled_from([
            f"grad({draw(st.sampled_from(tensors + [lr, '3', 'W * 2', 'step']))})",
            f"conv({sub()}, 2)", f"attention({sub()}, {sub()}, {sub()})",
            f"window_attention({sub()}, {sub()}, {sub()}, 2)", f"concat({sub()}, {sub()})",
            f"segment_attention({sub()}, {sub()}, {sub()}, 2)", f"rope({sub()})", f"flatten({sub()})",
            f"wsum((0.5, 0.5), {sub()}, {sub()})", f"{draw(st.sampled_from(INITIALISERS))}()",
            f"{draw(st.sampled_from(['1e400', '10 ** 1000', '1e-400']))} * {sub()}",
            f"{draw(st.sampled_from(POINTWISE))}({scalar()}) * {sub()}",
            f"(not {sub()}) * {sub()}", f"({sub()} if {sub()} > 0 else 0 - {sub()})",
        ]))

    # levels: declare names first so expressions can refer to states and reads anywhere
    count = draw(st.integers(1, max_levels))
    plans = []
    for _ in range(count):
        plans.append(dict(name=fresh(), every=draw(st.sampled_from(["1", "1", "2"] + ints)),
                          states=[fresh() for _ in range(draw(st.integers(0, 2)))],
                          mlp=fresh() if draw(st.integers(0, 5)) == 0 else None,
                          contexts=[fresh() for _ in range(draw(st.integers(0, 2)))],
                          reads=[fresh() for _ in range(draw(st.integers(0, 1)))]))
    states = [s for plan in plans for s in plan["states"]]
    reads = [r for plan in plans for r in plan["reads"]]

    def rule_call(state_tensors) -> str:
        name = draw(st.sampled_from(sorted(RULES)))
        spec = RULES[name]
        values = {"lr": draw(st.sampled_from([lr, "0.1", f"1 - {draw(st.sampled_from(floats))}"])),
                  "decay": draw(st.sampled_from(["1", "0.9", "0"])),
                  "normalized": draw(st.sampled_from(["true", "false"])),
                  "precondition": draw(st.sampled_from(["false", "true"])),
                  "beta": draw(st.sampled_from(["0.9", "0.5"] + [f"{t}[0]" for t in tuples])),
                  "steps": str(draw(st.integers(1, 5))),
                  "polynomial": draw(st.sampled_from(['"cubic"', '"quintic"'])),
                  "eps": draw(st.sampled_from(["1e-7", "0.5"])),
                  "precision": draw(st.sampled_from(['"float32"', '"float64"', '"bfloat16"']))}
        required = [p for p in spec.params if p not in spec.defaults]
        # `clip` (default None) guards module memories only: an optimizer refuses it
        optional = [p for p in spec.params if spec.defaults.get(p, 0) is not None and
                    p in spec.defaults and draw(st.booleans())]
        positional = draw(st.integers(0, len(required)))
        args = [values[p] for p in required[:positional]]
        args += [f"{p} = {values[p]}" for p in required[positional:] + optional]
        if not args and draw(st.booleans()):
            return name
        return f"{name}({', '.join(args)})"

    def objective(state, tensors) -> str:
        e = lambda: expr(tensors, 1)
        loss = draw(st.sampled_from([
            f"-dot({state}, {e()})", f"dot({state}, {e()})", f"l2({state}, {e()})",
            f"l2({state} @ {draw(st.sampled_from(tensors))}, 0)",
            f"orthogonality({state})", f"lp({state}, {e()}, 3)", f"huber({state}, {e()}, 1.0)",
            f"l2({state}, {e()}) + 0.5 * orthogonality({state})",
            f"window(step, l2({state} * {e()}, {e()}), 0.9) + 0.1 * l2({state}, 0)",
            f"window(1, l2({state}, {e()}), 1)",
            f"-dot({state}, {e()}) if {condition(tensors, 1)} else l2({state}, 0)",
        ]))
        links = 1 if "rule-chains" in exclude else draw(st.integers(1, 2))
        chain = [rule_call(tensors) for _ in range(links)]
        return f"{state}: minimize {loss} by {' then '.join(chain)}"

    lines = []
    for plan in plans:
        body = []
        visible = states + reads + plan["contexts"]
        for name in plan["contexts"]:
            role = draw(st.sampled_from(["key", "value", "gate", "let", "let"]))
            body.append(f"{role} {name} = {expr([t for t in visible if t != name], 1)}")
        for name in plan["states"]:
            init = draw(st.sampled_from(["0", "0", "W", "grad(W)", "expr", "other", "self",
                                         "init", "none"]))
            if init == "expr":
                init = expr([], 1)
            elif init == "other":
                init = draw(st.sampled_from(states))
            elif init == "self":
                init = name
            elif init == "init":
                fn = draw(st.sampled_from(INITIALISERS))
                init = f"{fn}({'0.1' if fn in ('normal', 'uniform') and draw(st.booleans()) else ''})"
            body.append(f"state {name} like W" + ("" if init == "none" else f" = {init}"))
            if draw(st.booleans()):
                body.append(objective(name, visible))
            else:
                body.append(f"{name} <- {expr(visible, 2)}")
        if plan["mlp"]:
            m = plan["mlp"]
            act = draw(st.sampled_from(["silu", "gelu", "relu", "tanh", "linear", "bogus"]))
            extra = ", residual" if draw(st.booleans()) else ""
            body.append(f"state {m} : mlp(size(W, -1) -> 2 * size(W, -1) -> size(W, -1), {act}{extra})")
            body.append(f"{m}: minimize {draw(st.sampled_from(['dot', 'l2']))}({m}(grad(W)), grad(W)) by "
                        f"gd({lr}, decay = 0.9)")
            body.append(f"read {plan['reads'][0] if plan['reads'] else fresh()} = {m}(grad(W))")
            reads_here = plan["reads"][1:]
        else:
            reads_here = plan["reads"]
        for name in reads_here:
            before = " before write" if draw(st.booleans()) else ""
            body.append(f"read {name} = {expr(visible, 1)}{before}")
        body = draw(st.permutations(body))
        lines.append(f"  level {plan['name']} every {plan['every']} steps {{")
        lines += [f"    {line}" for line in body] + ["  }"]
    update = draw(st.sampled_from([f"W - {lr} * {expr(states + reads, 2)}",
                                   f"W - {lr} * tanh({expr(states + reads, 2)})",
                                   expr(states + reads, 2)]))
    weights = [f"  level {fresh()} every 1 step {{", f"    W <- {update}", "  }"]
    lines = weights + lines if draw(st.booleans()) else lines + weights
    return (f"optimizer {fresh()}({', '.join(hp_lines)}) {{\n" + "\n".join(lines) + "\n}\n")


# ---------------------------------------------------------------- valid-looking module specs

#: How a drawn level writes its memory: derived (objective + rule) or explicit, by kind.
MODULE_UPDATES = ("hebbian", "delta", "dgd", "ema", "momentum", "autograd", "gated_delta",
                  "explicit_hebbian")


@st.composite
def module_specs(draw, max_levels: int = 2, min_head_dim: int = 1) -> str:
    """The text of a module spec from the linear family (docs/modules.md, "What compiles"):
    small `dim`, `heads`, `head_dim`; per level a matrix memory `[head_dim, head_dim]` (or a
    vector `[head_dim]`, written elementwise), keys, values and queries projected from `x`
    (l2-normalised or not, through `silu` or a `conv`), gates `sigmoid(x @ W)` (one per head,
    or channel-wise), constants or hyper-parameters, and a write that is derived (`-dot` or
    `l2` objectives by gd, dgd, ema or momentum; an objective outside the derivation table) or
    explicit (Gated DeltaNet's update, a Hebbian sum); `every N tokens`, `chunk C`,
    `heads heads`, `backprop`, `partial flush|drop`; reads `M(q)`, normalised or gated, also
    `before write`; `out` the sum of the levels' projected reads.

    Mostly valid, never guaranteed: the property is "compiles and runs alike in both
    schedules, or fails with a located NLDSLError". Keys of erasing rules (delta, dgd, Gated
    DeltaNet) are l2-normalised and their rates sigmoid gates or constants in (0, 1], so every
    transition a (I - c k k^T) has norm <= 1: rounding is not amplified along the stream, which
    is what lets a comparison of the schedules use a tolerance derived from the arithmetic
    (tests/test_fuzz_module.py). `min_head_dim` > 1 leaves out head_dim = 1, where the head
    width heads * head_dim equals the gate width heads."""
    dim, heads = draw(st.integers(2, 5)), draw(st.integers(1, 3))
    head_dim = draw(st.integers(min_head_dim, 4))
    hparams = [f"dim: int = {dim} >= 1", f"heads: int = {heads} >= 1",
               f"head_dim: int = {head_dim} >= 1", "lr = 0.5 in (0, 1]", "decay = 0.9 in [0, 1]"]
    params, levels, outs = [], [], []
    for i in range(draw(st.integers(1, max_levels))):
        per_head = draw(st.booleans())
        width = "heads * head_dim" if per_head else "head_dim"
        gate_width = "heads" if per_head else "1"
        vector = draw(st.integers(0, 4)) == 0
        update = draw(st.sampled_from(MODULE_UPDATES))
        erasing = update in ("delta", "dgd", "gated_delta", "momentum", "autograd")
        std = draw(st.sampled_from(["0.3", "0.5", "1.0"]))
        params += [f"state Wk{i} : [dim, {width}] = normal({std})",
                   f"state Wv{i} : [dim, {width}] = normal({std})",
                   f"state Wq{i} : [dim, {width}] = normal({std})",
                   f"state Wb{i} : [dim, {draw(st.sampled_from([gate_width, gate_width, width]))}] = normal(1.0)",
                   f"state Wa{i} : [dim, {gate_width}] = normal(1.0)",
                   f"state Wo{i} : [{width}, dim] = normal(0.5)"]
        keys = ["l2norm(x @ Wk{i})", "l2norm(silu(x @ Wk{i}))", "l2norm(conv(x @ Wk{i}, 2))"]
        if not erasing:
            keys += ["x @ Wk{i}", "silu(x @ Wk{i})"]
        key = draw(st.sampled_from(keys)).format(i=i)
        value = draw(st.sampled_from(["x @ Wv{i}", "silu(x @ Wv{i})", "conv(x @ Wv{i}, 3)"])).format(i=i)
        query = draw(st.sampled_from(["l2norm(x @ Wq{i})", "x @ Wq{i}"])).format(i=i)
        beta = draw(st.sampled_from(["sigmoid(x @ Wb{i})", "lr", "0.5", "lr * sigmoid(x @ Wb{i})"])).format(i=i)
        alpha = draw(st.sampled_from(["1", "decay", "sigmoid(x @ Wa{i})",
                                      "exp(-softplus(x @ Wa{i}))"])).format(i=i)
        m = f"M{i}"
        apply = f"{m} * k{i}" if vector else f"{m}(k{i})"
        body = [f"state {m} : [{'head_dim' if vector else 'head_dim, head_dim'}] = 0",
                f"key k{i} = {key}", f"value v{i} = {value}", f"query q{i} = {query}",
                f"gate beta{i} = {beta}", f"gate alpha{i} = {alpha}"]
        rules = {
            "hebbian": f"minimize -dot({apply}, v{i}) by gd(lr = beta{i}, decay = alpha{i})",
            "delta": f"minimize l2({apply}, v{i}) by gd(lr = beta{i}, decay = alpha{i})",
            "dgd": f"minimize l2({apply}, v{i}) by dgd(lr = beta{i}, decay = alpha{i}, "
                   f"normalized = {draw(st.sampled_from(['true', 'false']))})",
            "ema": f"minimize -dot({apply}, v{i}) by ema(alpha{i})",
            "momentum": f"minimize l2({apply}, v{i}) by momentum(lr = beta{i}, beta = 0.5, decay = alpha{i})",
            "autograd": f"minimize l2(tanh({apply}), v{i}) by gd(lr = beta{i}, decay = alpha{i})",
            "gated_delta": (f"{m} <- alpha{i} * {m} - beta{i} * " + (
                f"(alpha{i} * {apply} - v{i}) * k{i}" if vector else
                f"outer(alpha{i} * {apply} - v{i}, k{i})")),
            "explicit_hebbian": f"{m} <- alpha{i} * {m} + beta{i} * " + (
                f"v{i} * k{i}" if vector else f"outer(v{i}, k{i})"),
        }
        body.append(rules[update])
        body.append(f"gate g{i} = sigmoid(x @ Wv{i})")
        read = draw(st.sampled_from(["{a}", "rmsnorm({a})", "{a} * g{i}"]))
        read = read.format(a=f"{m} * q{i}" if vector else f"{m}(q{i})", i=i)
        before = " before write" if draw(st.booleans()) else ""
        body.append(f"read y{i} = {read}{before}")
        every = draw(st.sampled_from([1, 1, 1, 2, 3]))
        options = f"every {every} {'token' if every == 1 else 'tokens'}"
        chunk = draw(st.sampled_from([None, None, every, 2 * every, 4 * every]))
        options += f" chunk {chunk}" if chunk else ""
        options += " heads heads" if per_head else ""
        options += " backprop" if draw(st.booleans()) else ""
        partial = draw(st.sampled_from([None, "flush", "drop"]))
        options += f" partial {partial}" if partial else ""
        levels.append((-every, [f"level mem{i} {options} {{"] +
                       [f"  {line}" for line in draw(st.permutations(body))] + ["}"]))
        outs.append(f"y{i} @ Wo{i}")
    levels.sort(key=lambda level: level[0])                 # slower levels first
    lines = params + [line for _, level in levels for line in level] + [f"out = {' + '.join(outs)}"]
    return (f"module fuzzed({', '.join(hparams)}) {{\n" + "".join(f"  {line}\n" for line in lines)
            + "}\n")
