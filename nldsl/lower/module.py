"""Lower a module spec to a `Program` for concrete hyper-parameter values. Pure data, no torch.

What the module compiler does not support yet is a located `NLDSLCompileError` naming the
construct, raised here, before any tensor exists (`unsupported.py` says which constructs).
"""
from __future__ import annotations

from dataclasses import replace

from nldsl.language import ast
from nldsl.language.builtins import MLP_ACTIVATIONS
from nldsl.language.consteval import calls_in, evaluate
from nldsl.lower.heads import Unknown, head_steps
from nldsl.lower.program import ConvSite, FastState, MLPLayout, ModuleWrite, Param, Program, \
    TokenLevel
from nldsl.lower.sequence import attention_sites
from nldsl.lower.task import is_task, nest_inits, task_write
from nldsl.lower.timing import period, placements
from nldsl.lower.unsupported import check_supported, compile_error
from nldsl.lower.derive import NoClosedForm, chain_steps, closed_grad, loss_key, num, rate, \
    rule_arguments
from nldsl.lower.windows import own_contexts, window_calls, windowed_contexts
from nldsl.graph import OUTER
from nldsl.language.memories import memory_layouts, state_layouts


def lower_module(spec, values: dict) -> Program:
    """Spec + complete hyper-parameter values -> Program (`values` already checked)."""
    decl, graph = spec.decl, spec.graph
    check_supported(spec)
    const = _shapes_of(graph, lambda e: evaluate(e, values))
    params: dict[str, Param] = {}
    for state in graph.levels[OUTER].states.values():
        params[state.name] = Param(state.name, _shape(state.decl.shape, const),
                                   _init_value(state.decl.init))
    levels = []
    for name in graph.update_order():
        info = graph.levels[name]
        if name == OUTER:
            continue
        levels.append(_level(info, const, params, spec))
    levels = nest_inits(levels, spec)
    convs = _conv_sites(spec, const, params)
    program = Program(decl.name, int(values["dim"]), dict(values), params,
                      {c.name: c.value for c in graph.levels[OUTER].contexts.values()},
                      levels, graph.output, convs, attention_sites(spec, const, params))
    return replace(program, levels=[_explicit(level, program, spec) for level in levels])


def _explicit(level: TokenLevel, program: Program, spec) -> TokenLevel:
    """The level with its head split and merge and its evaluation stages made explicit."""
    try:
        splits, merges = head_steps(level, program)
    except Unknown as err:
        info = spec.graph.levels[level.name]
        raise compile_error(info.decl, f"the head split of level {level.name!r} cannot follow "
                            f"{err}", "values whose widths the lowering can follow",
                            "docs/language.md, Heads, lists the rules", spec.source) from None
    return replace(level, splits=splits, merges=merges,
                   placements=placements(level, program.levels, program.outer_contexts))


def _level(info, const, params: dict, spec) -> TokenLevel:
    """Period, chunk and heads are evaluated from the values passed (not the defaults): a
    period or chunk must be a positive whole number, a chunk a multiple of the period (its
    default), heads a positive whole number."""
    every = _whole(info.every, const(info.every), "period", spec)
    chunk = _whole(info.chunk, const(info.chunk), "chunk", spec) if info.chunk is not None \
        else every
    if chunk % every:
        raise compile_error(info.chunk, f"chunk {chunk} of level {info.name!r} is not a multiple "
                            f"of its period {every}", "a chunk that is a multiple of the period",
                            "all gradients of a chunk are taken at its start: it spans whole "
                            "periods", spec.source)
    heads = _whole(info.heads, const(info.heads), "heads", spec) if info.heads is not None \
        else None
    states = {}
    per_head = (heads,) if heads is not None else ()
    for state in info.states.values():
        learned = None
        mlp = _mlp_layout(state.decl.shape, const)
        if isinstance(state.decl.init, ast.InitLearned):
            learned = f"{state.name}_init"
            owner = state.learned_by or OUTER
            if mlp is None:
                params[learned] = Param(learned, per_head + _shape(state.decl.shape, const), None,
                                        "initial", owner)
            for suffix, part in zip(mlp.part_names, mlp.parts) if mlp else ():
                init = _normal(part[1] ** -0.5) if len(part) == 2 else ast.Number(value=0)
                params[learned + suffix] = Param(learned + suffix, per_head + part, init,
                                                 "initial", owner)
        states[state.name] = FastState(state.name, _shape(state.decl.shape, const),
                                       _init_value(state.decl.init), learned, mlp)
    own = _own_contexts(info)
    layouts = memory_layouts(spec.graph)
    memories = {name: _mlp_layout(layouts[name], const) for name in info.contexts
                if name in layouts}
    writes, hidden, task = [], {}, []
    for objective in info.objectives:
        target = objective.state or next(iter(info.states))
        if is_task(objective):
            task.append(task_write(objective, target))
            continue
        write = _derive(objective, target, own, spec, set(memories))
        for step in write.chain:
            if step.buffer is not None:
                hidden[step.buffer] = states[target].shape
        if write.kind == "momentum":
            hidden[f"{target}_momentum"] = states[target].shape
        writes.append(write)
    window, windowed = _window(info, writes, const, spec)
    writes += [ModuleWrite(u.target, "explicit", value=u.value) for u in info.updates]
    # a task level is frozen inside the module: no chunk-start snapshots to keep
    return TokenLevel(info.name, every, 1 if task else chunk, heads, info.backprop, info.partial,
                      states, {c.name: c.value for c in info.contexts.values()}, writes,
                      {r.name: (r.value, r.before_write) for r in info.reads.values()}, hidden,
                      task=tuple(task), window=window, windowed=windowed, memories=memories,
                      once=info.once)


def _whole(expr: ast.Expr, value, what: str, spec) -> int:
    try:
        return period(value)
    except ValueError:
        raise compile_error(expr, f"the level's {what} is {value!r} with these hyper-parameters",
                            f"a positive whole number for the {what}", "check the value passed "
                            "to nldsl.compile", spec.source) from None


def _derive(objective: ast.Objective, target: str, own: dict, spec,
            memories: set[str] = frozenset()) -> ModuleWrite:
    """One objective + rule (chain) -> a ModuleWrite. Contexts that use the level's own states
    are inlined into the loss, so its gradient sees them (a matrix `let W = f(A)`); a derived
    MLP memory applied in the loss (`W(k)`, `let W = f(A)` per weight) is evaluated by the
    runtime at the state the gradient is taken at, and differentiated by autograd. A chain's
    transforms and its last rule are lower/derive.py's, as for optimizers (`chain_steps`,
    `rate`); its buffers are hidden states `S_momentum`, `S_ema` (`S_momentum1`: the rule at
    place 1, when two rules of the chain keep a buffer of one name)."""
    loss = _inline(objective.loss, own)
    steps, last = chain_steps(objective, _buffer_names(target, objective.rules), spec.source)
    # DGD's rate eta / (1 + eta ||k||^2) names the key as the spec does (the context k_t, eqs.
    # 56-57), not inlined: a gate then sees the key the context computed, not the state again
    lr, decay = rate(last, rule_arguments(last), objective.loss, target)
    deep = target in state_layouts(spec.graph)        # an `mlp(...)` state, also through `like`
    kind = "momentum" if last.name == "momentum" else "gradient"
    beta = rule_arguments(last).get("beta") if kind == "momentum" else None
    name = " then ".join(r.name for r in objective.rules)
    key = _precondition_key(rule_arguments(last), loss, target) if last.name == "dgd" else None
    name = name + " preconditioned" if key is not None else name
    clip = rule_arguments(last).get("clip")
    try:
        if any(c.func in memories for c in calls_in(loss)):
            raise NoClosedForm(target)
        grad = closed_grad(loss, target, deep)
        return ModuleWrite(target, kind, grad=grad, lr=lr, decay=decay, beta=beta,
                           precondition=key, derivation=f"{name} closed form",
                           chain=tuple(steps), clip=clip)
    except NoClosedForm:
        return ModuleWrite(target, kind, loss=loss, lr=lr, decay=decay, beta=beta,
                           precondition=key, derivation=f"{name} autograd",
                           chain=tuple(steps), clip=clip)


def _buffer_names(target: str, rules: list[ast.Rule]):
    kept = [r.name for r in rules[:-1] if r.name != "newton_schulz"] + \
        (["momentum"] if rules[-1].name == "momentum" else [])
    return lambda rule, position: f"{target}_{rule}" + (str(position) if kept.count(rule) > 1
                                                        else "")


def _window(info, writes: list[ModuleWrite], const, spec) -> tuple[int, tuple[str, ...]]:
    """The longest window of the level's objectives (c tokens, 1 without one) and the contexts
    the windows see at past tokens (lower/windows.py)."""
    width, named = 1, set()
    contexts = {c.name: c.value for c in info.contexts.values()}
    for write in writes:
        loss = write.loss if write.loss is not None else num(0)
        for call in window_calls(loss):
            c = const(call.args[0])
            if isinstance(c, bool) or not isinstance(c, (int, float)) or c < 1 or c != int(c):
                raise compile_error(call.args[0], f"the window's width is {c!r} with these "
                                    "hyper-parameters", "a positive whole number of tokens",
                                    "check the value passed to nldsl.compile", spec.source)
            width = max(width, int(c))
        named.update(windowed_contexts(loss, contexts))
    return width, tuple(name for name in contexts if name in named)


def _precondition_key(args: dict, loss: ast.Expr, target: str):
    """k of `dgd(..., precondition = true)` (the key of the loss's l2(S(k), v) term: eq. 88's
    k k^T), None without the flag; check_supported has refused a flag that is not a literal
    and a loss without the term."""
    flag = args["precondition"]
    return loss_key(loss, target) if isinstance(flag, ast.Bool) and flag.value else None


def _own_contexts(info) -> dict[str, ast.Expr]:
    """The level's contexts whose value depends on its own states (transitively)."""
    return own_contexts({c.name: c.value for c in info.contexts.values()}, info.states)


def _inline(expr: ast.Expr, own: dict[str, ast.Expr], depth: int = 0) -> ast.Expr:
    if isinstance(expr, ast.Name) and expr.id in own and depth < len(own) + 1:
        return _inline(own[expr.id], own, depth + 1)
    if not isinstance(expr, ast.Node):
        return expr
    updates = {}
    for field, value in expr:
        if isinstance(value, ast.Node):
            updates[field] = _inline(value, own, depth)
        elif isinstance(value, list):
            updates[field] = [_inline(v, own, depth) if isinstance(v, ast.Node) else v for v in value]
    return expr.model_copy(update=updates) if updates else expr


class _Const:
    """Evaluates constant expressions, and knows every state's declaration so that
    `state N like M` takes M's shape (the validator has refused unknown names and loops)."""

    def __init__(self, evaluate, states: dict):
        self.evaluate, self.states = evaluate, states

    def __call__(self, expr):
        return self.evaluate(expr)


def _shapes_of(graph, evaluate) -> _Const:
    return _Const(evaluate, {s.name: s.decl.shape for s in graph.states()})


def _shape(shape: ast.Shape, const: _Const) -> tuple[int, ...]:
    if isinstance(shape, ast.ScalarShape):
        return ()
    if isinstance(shape, ast.LikeShape):
        return _shape(const.states[shape.name], const)
    if isinstance(shape, ast.MLPShape):
        return (_mlp_layout(shape, const).size,)
    return tuple(int(const(d)) for d in shape.dims)


def _mlp_layout(shape: ast.Shape, const: _Const) -> MLPLayout | None:
    """The layout of an `mlp(...)` state (through `like`), None for any other shape."""
    if isinstance(shape, ast.LikeShape):
        return _mlp_layout(const.states[shape.name], const)
    if not isinstance(shape, ast.MLPShape):
        return None
    activation = next((o for o in shape.options if o in MLP_ACTIVATIONS), "gelu")
    return MLPLayout(tuple(int(const(w)) for w in shape.widths), activation,
                     "residual" in shape.options, "layernorm" in shape.options)


def _normal(std: float) -> ast.Expr:
    return ast.Call(func="normal", args=[ast.Number(value=std)])


def _init_value(init) -> ast.Expr | None:
    return init.value if isinstance(init, ast.InitValue) else None


def _conv_sites(spec, const, params: dict) -> dict:
    """One kernel per `conv` call, named after the definition it sits in: `k_conv` for
    `key k = conv(...)`, `k_conv2` for a second call in the same definition. Its channel count
    is known once a tensor flows (module.py fills the Param's shape at construction)."""
    graph = spec.graph
    sites = {}
    definitions = []
    for level in graph.levels.values():
        definitions += [(c.name, c.value) for c in level.contexts.values()]
        definitions += [(r.name, r.value) for r in level.reads.values()]
        definitions += [(u.target, u.value) for u in level.updates]
    if graph.output is not None:
        definitions.append(("out", graph.output))
    for owner, value in definitions:
        calls = sorted((c for c in calls_in(value) if c.func == "conv"),
                       key=lambda c: (c.span.line, c.span.col))
        for index, call in enumerate(calls):
            name = f"{owner}_conv" + (str(index + 1) if index else "")
            if name in params or name in graph.levels[OUTER].contexts:
                raise compile_error(call, f"the conv kernel's name {name!r} is taken",
                                    "names free for the implicit parameters",
                                    f"rename {name!r}: the kernel of this conv is called {name}",
                                    spec.source)
            width = const(call.args[1])
            if not isinstance(width, int) or isinstance(width, bool) or width < 1:
                raise compile_error(call.args[1], f"conv width {width!r} is not a positive "
                                    "integer", "a width >= 1", "the width counts taps", spec.source)
            sites[(call.span.line, call.span.col)] = ConvSite(name, width, call.span.line,
                                                              call.span.col)
            params[name] = Param(name, (0, width), None, "conv")
    return sites

