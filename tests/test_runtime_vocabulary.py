"""Every built-in of the vocabulary is computed by the module runtime or rejected, located, by
the module compiler: nothing validates and then fails inside a module's forward pass."""
import pytest

from nldsl.builtins import FUNCTIONS
from nldsl.lower.unsupported import UNSUPPORTED_CALLS
from nldsl.runtime import functions as fn
from nldsl.runtime.evaluate import SPECIAL


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_builtin_is_computed_or_rejected(name):
    computed = set(fn.ELEMENTWISE) | set(fn.LAST_DIM) | set(SPECIAL)
    is_init = FUNCTIONS[name].role == "init"
    assert (name in computed) + (name in UNSUPPORTED_CALLS) + is_init == 1
