"""The demo's module part: every module spec of the standard library, compiled where the module
compiler supports it, run in both schedules on the same stream; the rest say what is missing."""
from __future__ import annotations

import time

import torch

from nldsl.errors import NLDSLCompileError
from nldsl.lower.chain_forms import ChainForm
from nldsl.lower.deep_forms import DeepForm
from nldsl.lower.derived_forms import DerivedForm
from nldsl.lower.periodic_forms import PeriodicForm
from nldsl.library import stdlib_names
from nldsl.lower.schedule import STATELESS
from nldsl.spec import load

SIZES = {"dim": 32, "heads": 2, "head_dim": 16}
BATCH, TOKENS, SLOW_TOKENS = 2, 256, 32


def module_rows() -> list[list[str]]:
    """[spec, fast path, |chunked - reference|, chunked tok/s, reference tok/s] per module spec."""
    from nldsl.module import compile as compile_module

    rows = []
    for name in stdlib_names():
        spec = load(name)
        if spec.decl.kind != "module":
            continue
        sizes = {k: v for k, v in SIZES.items() if k in {h.name for h in spec.decl.hparams}}
        if "head_v_dim" in {h.name for h in spec.decl.hparams}:
            sizes["head_v_dim"] = 2 * SIZES["head_dim"]
        try:
            torch.manual_seed(0)
            chunked = compile_module(spec, **sizes)
        except NLDSLCompileError as err:
            rows.append([name, "not yet: " + err.problems[0].message.split(": ", 1)[-1][:60], "", "", ""])
            continue
        reference = compile_module(spec, schedule="reference", **sizes)
        reference.load_state_dict(chunked.state_dict())
        # a spec with no fast form runs token by token in both schedules: a shorter stream
        tokens = TOKENS if chunked.fast_paths else SLOW_TOKENS
        x = torch.randn(BATCH, tokens, SIZES["dim"], generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            y_fast, fast_seconds = _timed(chunked, x)
            y_ref, ref_seconds = _timed(reference, x)
        rows.append([name, _fast_path(chunked.fast_paths),
                     f"{(y_fast - y_ref).abs().max().item():.1e}",
                     f"{BATCH * tokens / fast_seconds:,.0f}", f"{BATCH * tokens / ref_seconds:,.0f}"])
    return rows


def _fast_path(forms: dict) -> str:
    """The chunked schedule's path in words: by the forms its levels take."""
    if not forms:
        return "token by token"
    kinds = {"deep memory (chunk form)" if isinstance(f, (DeepForm, ChainForm)) else
             "derived memory (chunk form)" if isinstance(f, DerivedForm) else
             "once memory (periodic form)" if isinstance(f, PeriodicForm) else
             "attention (whole call)" if f == STATELESS else "linear memory (WY/UT)"
             for f in forms.values()}
    return " + ".join(sorted(kinds))


def _timed(module, x):
    start = time.perf_counter()
    y, _ = module(x)
    return y, time.perf_counter() - start
