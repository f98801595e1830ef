"""The demo's training part: a small MLP regression trained by every optimizer spec of the
standard library, compiled by nldsl, beside its PyTorch twin where there is one."""
from __future__ import annotations

import torch

from nldsl.optim.optimizer import optimizer

#: spec name -> (hyper-parameters, the torch.optim twin and its keyword arguments, or None)
RUNS = {
    "sgd": (dict(lr=0.05, momentum=0.9, nesterov=True), ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True))),
    "adam": (dict(lr=1e-2), ("Adam", dict(lr=1e-2))),
    "adamw": (dict(lr=1e-2, weight_decay=0.01), ("AdamW", dict(lr=1e-2, weight_decay=0.01))),
    "adagrad": (dict(lr=0.1), ("Adagrad", dict(lr=0.1))),
    "rmsprop": (dict(lr=1e-2, centered=True), ("RMSprop", dict(lr=1e-2, centered=True))),
    "muon": (dict(lr=0.02), ("Muon", dict(lr=0.02))),
    "momentum": (dict(lr=0.05), None),
    "dgd": (dict(lr=0.05), None),
    "delta_momentum": (dict(lr=0.05), None),
    "dmgd": (dict(inner_lr=0.05), None),
    "m3": (dict(lr=1e-2, f=5), None),
}
STEPS = 100


def _model(matrices_only: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    bias = not matrices_only
    return torch.nn.Sequential(torch.nn.Linear(8, 32, bias=bias), torch.nn.Tanh(),
                               torch.nn.Linear(32, 1, bias=bias))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=gen)                                   # [N, 8]
    return x, torch.sin(x.sum(-1, keepdim=True))                            # [N, 1]


def initial_loss() -> float:
    x, y = _data()
    with torch.no_grad():
        return ((_model(False)(x) - y) ** 2).mean().item()


def _train(make_optimizer, matrices_only: bool) -> tuple[float, list[torch.Tensor]]:
    model = _model(matrices_only)
    opt = make_optimizer(model.parameters())
    x, y = _data()
    for _ in range(STEPS):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
    return loss.item(), [p.detach().clone() for p in model.parameters()]


def training_rows() -> list[list[str]]:
    """[spec, final loss, twin, twin's final loss, max relative parameter difference]."""
    rows = []
    for name, (hparams, twin) in RUNS.items():
        matrices_only = name in ("muon", "m3")
        loss, params = _train(lambda ps: optimizer(name, ps, **hparams), matrices_only)
        row = [name, f"{loss:.4f}", "", "", ""]
        if twin is not None:
            cls, kwargs = getattr(torch.optim, twin[0]), twin[1]
            twin_loss, twin_params = _train(lambda ps: cls(ps, **kwargs), matrices_only)
            diff = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
                       for a, b in zip(params, twin_params))
            row[2:] = [f"torch.optim.{twin[0]}", f"{twin_loss:.4f}", f"{diff:.1e}"]
        rows.append(row)
    return rows
