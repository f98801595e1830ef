"""`nldsl.freeze(model)`: the network with every level frozen, an ordinary network.

    frozen = nldsl.freeze(model)       # a compiled module, or an nldsl.lm network
    y, state = frozen(x, state)        # no level writes: the states pass as they came

`nldsl.stream(..., learn=False)` freezes the levels that learn from the task loss; a module's
own in-context memories (Titans', Hope's self-modifying levels) still write as they read. A
frozen model writes nothing: every fast state stays at the value it is given (the initial or
learned one for `state=None`), so y_t is the outer network's function of x_t, the tokens a conv
or an attention sees, and those constant states (lower/freeze.py). It shares the model's
parameters and buffers (training one trains the other) and takes and returns the same state
structure, so a stream can go on frozen from where a learning one stopped.
"""
from __future__ import annotations

import copy

from torch import nn

from nldsl.lower.freeze import freeze as freeze_program
from nldsl.module.module import CompiledModule


def freeze(model):
    """A compiled module or nldsl.lm network whose levels never write (docstring above)."""
    from nldsl.train.model import LanguageModel

    if isinstance(model, CompiledModule):
        return _frozen_module(model)
    if isinstance(model, LanguageModel):
        frozen = copy.copy(model)
        frozen._modules = dict(model._modules)
        frozen.blocks = nn.ModuleList(_frozen_module(block) for block in model.blocks)
        return frozen
    raise TypeError(f"nldsl.freeze takes a compiled module or an nldsl.lm network, got "
                    f"{type(model).__name__}")


def _frozen_module(module: CompiledModule) -> CompiledModule:
    frozen = CompiledModule(module.spec, freeze_program(module.program), module.schedule,
                            module.block_size, module.checkpoint)
    # the same tensors, not copies: the frozen network is a view of the learning one
    frozen._parameters = dict(module._parameters)
    frozen._buffers = dict(module._buffers)
    return frozen
