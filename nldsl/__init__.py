"""nldsl: a declarative language and compiler for nested learning.

    spec = nldsl.load("adam")          # a stdlib name, a path to a .nl file, or spec text
    print(spec)                        # canonical text
"""
from nldsl.errors import NLDSLError
from nldsl.optim import optimizer
from nldsl.render import render
from nldsl.spec import Spec, load

__all__ = ["NLDSLError", "Spec", "load", "optimizer", "render"]
