"""`nldsl.lm`: any module spec as the block of a small language model (issue 11 §2, 13 §1).

    model = nldsl.lm("deltanet", vocab_size=3, dim=64, depth=2, heads=4, head_dim=16)
    logits, state = model(tokens)            # tokens [B, T] long -> logits [B, T, V]
    logits2, state = model(more, state)      # continue the stream

The network is the usual pre-norm residual stack (GPT-2, Radford et al. 2019; the layout of
DeltaNet's and Titans' language models, with the spec as the token mixer):

    h_0     = E[tokens]                                   E: [V, dim]
    h_l     = h_{l-1} + block_l(RMSNorm_l(h_{l-1}))       l = 1 .. depth
    logits  = RMSNorm(h_depth) @ W_out^T                  W_out = E when tied

Each `block_l` is its own `nldsl.compile(spec, schedule, dim=dim, **hparams)`, so it has its
own parameters and its own fast state; the state of the network is the list of the blocks'
states, and a stream cut in segments (`end=False` on all but the last) computes what one call
does (docs/modules.md, "The call").
"""
from __future__ import annotations


def lm(spec, vocab_size: int, dim: int, depth: int, *, tied: bool = True,
       schedule: str = "chunked", **hparams):
    """Embedding, `depth` pre-norm residual blocks of `spec` (a stdlib name, a path, spec text
    or a Spec), final RMSNorm and a tied or untied head. `hparams` go to every block's
    `nldsl.compile` (the spec's hyper-parameters, and `block_size`)."""
    from nldsl.train.model import LanguageModel

    return LanguageModel(spec, vocab_size, dim, depth, tied, schedule, hparams)
