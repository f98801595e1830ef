"""A training run's configuration and the objects it builds: task, model, optimizer.

A `Config` is plain data (JSON in every checkpoint and in `report.md`). Each builder is a
function of it, so a resumed run, a second rank and a rerun all build the same objects.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch

from nldsl import tasks
from nldsl.tasks.languages import LANGUAGES


@dataclass(frozen=True)
class Config:
    spec: str                         # a module spec: stdlib name, path or text
    task: str                         # NAME[:option=value,...] (nldsl.tasks.make)
    steps: int = 200
    batch: int = 32                   # the global batch, split over the ranks
    seq: int | None = None            # training length: a language's longest word, else seq_len
    lr: float = 3e-3
    optimizer: str = "adamw"          # an optimizer spec NAME[:option=value,...]
    dim: int = 32
    depth: int = 2
    tied: bool = True
    schedule: str = "chunked"
    hparams: dict = field(default_factory=dict)  # the spec's hyper-parameters (and block_size)
    eval_every: int | None = None     # default: 10 evaluations per run
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/run"
    nproc: int = 1
    online: bool = True               # task levels learn through nldsl.stream (False: frozen)
    first_order: bool = False         # the outer gradient stops at their writes
    truncate: int = 0                 # >0: backward every so many tokens, states cut there

    @property
    def evaluation_period(self) -> int:
        return self.eval_every or max(self.steps // 10, 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def build_task(config: Config):
    """The task, with `seq` as its training length unless its options say otherwise."""
    name, _ = tasks.parse(config.task)
    length = {} if config.seq is None else {"hi" if name in LANGUAGES else "seq_len": config.seq}
    return tasks.make(config.task, **length)


def build_model(config: Config, vocab_size: int) -> torch.nn.Module:
    """`nldsl.lm` of the spec, its initial weights drawn from `seed`."""
    import nldsl

    torch.manual_seed(config.seed)
    return nldsl.lm(config.spec, vocab_size, config.dim, config.depth, tied=config.tied,
                    schedule=config.schedule, **config.hparams).to(config.device)


def build_optimizer(config: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The outer level: a compiled nldsl optimizer spec over the model's parameters."""
    import nldsl

    name, options = tasks.parse(config.optimizer)
    return nldsl.optimizer(name, model.parameters(), **{"lr": config.lr, **options})
