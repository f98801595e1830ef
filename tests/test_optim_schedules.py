"""The fused schedule (generated code) computes what the reference interpreter computes."""
import copy

import pytest
import torch

import nldsl

CASES = {
    "sgd nesterov": ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
    "momentum": ("momentum", {}),
    "adam (fused kernel)": ("adam", dict(lr=1e-2, weight_decay=0.1)),
    "adam amsgrad (foreach)": ("adam", dict(amsgrad=True)),
    "adamw": ("adamw", {}),
    "adagrad": ("adagrad", dict(lr_decay=0.01)),
    "rmsprop centered": ("rmsprop", dict(centered=True, momentum=0.5)),
    "muon": ("muon", {}),
    "dgd": ("dgd", {}),
    "delta_momentum": ("delta_momentum", {}),
    "dmgd": ("dmgd", {}),
    "m3": ("m3", dict(f=3)),
    "m3 ema": ("m3", dict(form="ema", f=3)),
}
MATRICES_ONLY = {"muon", "m3"}


def run(name, hparams, schedule, steps=12):
    torch.manual_seed(0)
    bias = name not in MATRICES_ONLY
    model = torch.nn.Sequential(torch.nn.Linear(5, 7, bias=bias), torch.nn.Tanh(),
                                torch.nn.Linear(7, 2, bias=bias))
    torch.manual_seed(1)
    opt = nldsl.optimizer(name, model.parameters(), schedule=schedule, **hparams)
    x, y = torch.randn(16, 5), torch.randn(16, 2)
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("name, hparams", CASES.values(), ids=CASES.keys())
def test_fused_equals_reference(name, hparams):
    reference, _ = run(name, hparams, "reference")
    fused, _ = run(name, hparams, "fused")
    for a, b in zip(reference.parameters(), fused.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, hparams", CASES.values(), ids=CASES.keys())
def test_state_dict_resume_is_bit_identical(name, hparams):
    straight, _ = run(name, hparams, "fused", steps=8)
    model, opt = run(name, hparams, "fused", steps=4)
    resumed = nldsl.optimizer(name, model.parameters(), **hparams)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    x, y = torch.randn(16, 5), torch.randn(16, 2)
    torch.manual_seed(1)
    x, y = torch.randn(16, 5), torch.randn(16, 2)
    for _ in range(4):
        resumed.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        resumed.step()
    for a, b in zip(straight.parameters(), model.parameters()):
        assert torch.equal(a, b)
