"""The optimizer compiler: spec -> Plan (derived update rules) -> torch.optim.Optimizer."""
from nldsl.optim.optimizer import SpecOptimizer, optimizer

__all__ = ["SpecOptimizer", "optimizer"]
