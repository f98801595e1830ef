"""The optimizer compiler: spec -> Plan (derived update rules) -> torch.optim.Optimizer.

`import nldsl` stays free of torch: the compiler is imported on the first call.
"""


def optimizer(spec, params, schedule=None, /, **hparams):
    """Compile an optimizer spec for `params`; see `nldsl.optim.optimizer.optimizer`."""
    from nldsl.optim.optimizer import optimizer as compile_optimizer

    return compile_optimizer(spec, params, schedule, **hparams)


__all__ = ["optimizer"]
