"""nldsl: a declarative language and compiler for nested learning.

    spec = nldsl.load("adam")          # a stdlib name, a path to a .nl file, or spec text
    print(spec)                        # canonical text
    opt = nldsl.optimizer("adam", model.parameters())
    m = nldsl.compile("deltanet", dim=256)  # an nn.Module: y, state = m(x)
    y, state = nldsl.stream(nldsl.lm("cms", vocab_size=V, dim=64, depth=2), tokens, next_tokens)
"""
from nldsl.errors import NLDSLError
from nldsl.lm import lm
from nldsl.module import compile, freeze, stream, stream_windows
from nldsl.optim import optimizer
from nldsl.render import render
from nldsl.spec import Spec, load

__all__ = ["NLDSLError", "Spec", "compile", "freeze", "lm", "load", "optimizer", "render",
           "stream", "stream_windows"]
