"""`nldsl.compile(spec, schedule="chunked", **hparams) -> CompiledModule`, an `nn.Module`.

    y, state = m(x, state=None)        x, y: [B, T, dim]

The outer level's states are `nn.Parameter`s under the spec's names (`Wk`, `W_beta`, `Wo`); a
conv kernel is `<definition>_conv` ([channels, width]); a learned initial state is
`<state>_init` ([H, *shape] per head). The fast state is a dict, documented in docs/modules.md:

    state[level][name]        a fast state, [B, (H,) *shape]
    state[level][name + "_momentum"], [name + ".pending"], [name + ".chunk_start"]
    state["_stream"]["t"]     tokens seen so far; state["_stream"][<conv kernel>] its cache
    state["_stream"][<site> + ".keys"], [<site> + ".values"]   an attention site's cache,
                              [B, H, L, d]: every past position (attention), the last width - 1
"""
from __future__ import annotations

import torch
from torch import nn

from nldsl.graph import OUTER
from nldsl.lower.program import Program
from nldsl.lower.schedule import plan_schedule
from nldsl.lower.unsupported import compile_error
from nldsl.module import taskgrad
from nldsl.module.checks import check_input, check_state, reference_tensor
from nldsl.module.chunked import call_plan, fits, run_chunked
from nldsl.module.init import conv_kernel, draw
from nldsl.module.reference import STREAM, run_reference
from nldsl.module.state import to_internal, to_public
from nldsl.runtime import mlp
from nldsl.runtime.functions import SpecUseError

SCHEDULES = ("reference", "chunked")
#: The entries of an attention call site's cache in state["_stream"].
CACHES = (".keys", ".values")


class CompiledModule(nn.Module):
    def __init__(self, spec, program: Program, schedule: str, block_size: int,
                 checkpoint: bool = False):
        super().__init__()
        self.spec, self.program, self.schedule, self.block_size = spec, program, schedule, block_size
        self.checkpoint = checkpoint
        _check_names(spec, program)
        for param in program.params.values():
            if param.role == "conv":
                continue
            tensor = draw(param.init, param.shape, program.hparams)
            self.register_parameter(param.name, nn.Parameter(tensor))
        for level in program.levels:
            for state in level.states.values():
                if state.learned is None and state.mlp is not None and state.init is None:
                    self.register_buffer(f"{state.name}_start",
                                         mlp.flatten(state.mlp, mlp.initial(state.mlp, ())))
                elif state.learned is None and _random(state.init):
                    self.register_buffer(f"{state.name}_start", draw(state.init, state.shape,
                                                                     program.hparams))
        self._probe()
        self.fast_paths = plan_schedule(program) if schedule == "chunked" else {}
        # what each call needs of the program alone (run order, chunk cuts), computed once
        self.call_plan = call_plan(program)
        if self.fast_paths and not fits(program, dict(self.named_parameters()),
                                        torch.zeros(1, 1, program.dim), self.initial_state(1),
                                        self.fast_paths, self.call_plan):
            self.fast_paths = {}
        # a task level's states whose gradient its frozen products record (nldsl.stream's)
        self.recordable = {level.name: taskgrad.recordable(program, level, self.fast_paths)
                           for level in program.levels if level.task}

    def _probe(self) -> None:
        """One token through the reference, no gradient, nothing kept. It finds the channel
        counts of conv kernels, which follow from the data flow (unit.py's conv creates a zero
        kernel of the width that flows in when the kernel does not exist yet), and checks the
        Program's head splits and merges against the runtime's frames (unit.py raises on a
        mismatch), whatever the schedule."""
        params = dict(self.named_parameters())
        try:
            with torch.no_grad():
                _, probed = run_reference(self.program, params, torch.zeros(1, 1, self.program.dim),
                                          self.initial_state(1, probing=True))
        except SpecUseError as err:
            raise compile_error(err.node, err.message, err.expected, err.hint,
                                self.spec.source) from None
        # each attention cache's heads and widths: [B, H, L, d_k] keys, [B, H, L, d_v] values
        self._caches = {name: (value.shape[1], value.shape[3])
                        for name, value in probed[STREAM].items() if name.endswith(CACHES)}
        for site in self.program.convs.values():
            channels = params[site.param].shape[0]
            self.register_parameter(site.param, nn.Parameter(conv_kernel(channels, site.width)))

    # -- state -------------------------------------------------------------------------
    def initial_state(self, batch: int, probing: bool = False, t: int = 0,
                      like: torch.Tensor | None = None) -> dict:
        """The state at the start of a stream: every fast state at its initial value, expanded
        to the batch (and heads); conv and attention caches zero; t = 0. (With `t`, the shapes
        of a state at that position: a full attention's cache holds t positions.) Its dtype
        and device are the parameters' (checks.reference_tensor); a module without parameters
        or buffers takes those of `like`, the input."""
        ref = reference_tensor(self, like)
        state: dict = {STREAM: {"t": 0}}
        for site in self.program.convs.values():
            if not probing:
                channels = self.get_parameter(site.param).shape[0]
                state[STREAM][site.param] = ref.new_zeros(batch, site.width - 1, channels)
        for site in self.program.attention.values():
            length = (t if site.kept is None else site.kept) * site.streams
            for suffix in CACHES if not probing else ():
                heads, width = self._caches[site.name + suffix]
                state[STREAM][site.name + suffix] = ref.new_zeros(batch, heads, length, width)
        for level in self.program.levels:
            own = {}
            per_head = (level.heads,) if level.heads is not None else ()
            for s in level.states.values():
                if s.learned is not None and s.mlp is not None:
                    start = mlp.flatten(s.mlp, [self.get_parameter(s.learned + suffix)
                                                for suffix in s.mlp.part_names])
                elif s.learned is not None:
                    start = self.get_parameter(s.learned)
                elif (s.mlp is not None and s.init is None) or _random(s.init):
                    start = self.get_buffer(f"{s.name}_start")
                else:
                    start = draw(s.init, s.shape, self.program.hparams, ref.dtype).to(ref.device)
                if s.learned is None:
                    start = start.expand(per_head + s.shape)
                own[s.name] = start.expand((batch,) + per_head + s.shape)
            for name, shape in level.hidden.items():
                own[name] = ref.new_zeros((batch,) + per_head + shape)
            state[level.name] = own
        return state

    def forward(self, x: torch.Tensor, state: dict | None = None, end: bool = True):
        check_input(self, x)
        state = self.initial_state(x.shape[0], like=x) if state is None else \
            check_state(self, to_internal(self.program, state), x)
        params = dict(self.named_parameters())
        if self.schedule == "reference":
            y, state = run_reference(self.program, params, x, state, end)
        else:
            y, state = run_chunked(self.program, params, x, state, end, self.fast_paths,
                                   self.block_size, self.checkpoint, self.call_plan)
        return y, to_public(self.program, state)

    def extra_repr(self) -> str:
        values = ", ".join(f"{k}={v!r}" for k, v in self.program.hparams.items())
        return f"spec={self.program.name}({values}), schedule={self.schedule!r}"


def _check_names(spec, program: Program) -> None:
    """A parameter is an attribute of the module: its name must not be one of nn.Module's."""
    states = spec.graph.levels[OUTER].states
    for name in program.params:
        if hasattr(nn.Module, name) or name in ("training", "spec", "program", "schedule",
                                                "block_size", "checkpoint", "fast_paths",
                                                "call_plan", "recordable"):
            where = states[name].decl if name in states else spec.decl
            raise compile_error(where, f"the parameter name {name!r} is taken by the module "
                                "itself", "a name that is not an attribute of torch.nn.Module",
                                f"rename {name!r} (e.g. {name}_w)", spec.source)


def _random(init) -> bool:
    return init is not None and getattr(init, "func", None) in ("normal", "uniform")
