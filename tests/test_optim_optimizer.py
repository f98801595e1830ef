"""`nldsl.optimizer` is a real torch.optim.Optimizer: param groups, zero_grad, closures,
state_dict round trips, lr schedulers, and hyper-parameter mistakes reported as NLDSLErrors."""
import copy

import pytest
import torch

import nldsl

PLAIN = """optimizer plain(lr > 0, mode = "sgd" in {"sgd", "sign"}) {
  level weights every 1 step {
    W <- W - lr * grad(W) if mode == "sgd" else W - lr * sign(grad(W))
  }
}"""


def network(matrices_only=False) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7, bias=not matrices_only), torch.nn.Tanh(),
                               torch.nn.Linear(7, 3, bias=not matrices_only))


def loss_of(model):
    torch.manual_seed(1)
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    return ((model(x) - y) ** 2).mean()


def train(model, opt, steps):
    for _ in range(steps):
        opt.zero_grad()
        loss_of(model).backward()
        opt.step()


def test_param_groups_take_their_own_hyperparameters():
    """Each group steps with its own lr and momentum: the same as torch's SGD with those groups,
    bit for bit, since the plan runs torch SGD's operations (mul_, add_ with alpha) on the same
    tensors."""
    model, twin = network(), network()
    groups = lambda m: [{"params": m[0].parameters(), "lr": 0.1, "momentum": 0.5},
                        {"params": m[2].parameters()}]
    opt = nldsl.optimizer("sgd", groups(model), lr=0.01, momentum=0.9)
    torch_opt = torch.optim.SGD(groups(twin), lr=0.01, momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    train(model, opt, 5)
    train(twin, torch_opt, 5)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_per_group_choice_compiles_its_own_plan():
    """A bool/str hyper-parameter is folded into the plan: two values, two plans. The numbers
    are dyadic (W - 0.5 g and W - 0.5 sign(g) exact in any float arithmetic), so == holds on
    every arithmetic path."""
    a, b = torch.nn.Parameter(torch.tensor([1.0, -2.0])), torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = nldsl.optimizer(PLAIN, [{"params": [a]}, {"params": [b], "mode": "sign"}], lr=0.5)
    a.grad, b.grad = torch.tensor([4.0, -0.5]), torch.tensor([4.0, -0.5])
    opt.step()
    assert a.tolist() == [1.0 - 0.5 * 4.0, -2.0 + 0.5 * 0.5]
    assert b.tolist() == [1.0 - 0.5, -2.0 + 0.5]
    assert len(opt._plans) == 2


def test_zero_grad_clears_the_gradients_and_params_without_one_keep_their_value():
    model = network()
    opt = nldsl.optimizer("adam", model.parameters())
    loss_of(model).backward()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert not opt.state


def test_step_with_a_closure_returns_its_loss_and_steps_on_its_gradients():
    """The closure's loss is returned (the same computation as `expected`, so equal), and the
    step is torch's SGD step on the closure's gradients: bit for bit against torch.optim.SGD
    run on a copy with the same closure (the same operations), and within two float32
    roundings of W (2^-23 |W|, the product lr g and the sum each rounded once, or fused into
    one) of the formula W - lr g with the gradients taken beforehand."""
    model = network()
    twin = copy.deepcopy(model)
    opt = nldsl.optimizer("sgd", model.parameters(), lr=0.1)
    torch_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    expected = loss_of(model).item()
    grads = torch.autograd.grad(loss_of(model), list(model.parameters()))
    before = [p.detach().clone() for p in model.parameters()]

    def closure_of(model, opt):
        def closure():
            opt.zero_grad()
            loss = loss_of(model)
            loss.backward()
            return loss
        return closure

    assert opt.step(closure_of(model, opt)).item() == expected
    torch_opt.step(closure_of(twin, torch_opt))
    for p, q, b, g in zip(model.parameters(), twin.parameters(), before, grads):
        assert torch.equal(p, q)
        assert ((p - (b - 0.1 * g)).abs() <= 2 ** -23 * (b.abs() + 0.1 * g.abs())).all()


ROUND_TRIPS = {
    "sgd nesterov": ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
    "adam (fused kernel)": ("adam", dict(lr=1e-2, weight_decay=0.1)),
    "adam amsgrad (foreach)": ("adam", dict(amsgrad=True)),
    "rmsprop centered": ("rmsprop", dict(centered=True, momentum=0.5)),
    "muon (foreach by shape)": ("muon", {}),
    "dmgd (loop, MLP memory)": ("dmgd", {}),
    "m3 (slow level mid-period)": ("m3", dict(f=3)),
}


@pytest.mark.parametrize("schedule", ["fused", "reference"])
@pytest.mark.parametrize("name, hparams", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_state_dict_round_trip_resumes_bit_identically(name, hparams, schedule):
    """8 straight steps == 4 steps, save, a fresh optimizer loads the state, 4 more steps
    (M3 saves after step 4 of f = 3: with a pending slow-level accumulator). Bit for bit: both
    runs are the same operations on the same machine."""
    matrices_only = name in ("muon", "m3")
    straight = network(matrices_only)
    train(straight, nldsl.optimizer(name, straight.parameters(), schedule=schedule, **hparams), 8)
    model = network(matrices_only)
    opt = nldsl.optimizer(name, model.parameters(), schedule=schedule, **hparams)
    train(model, opt, 4)
    saved = copy.deepcopy(opt.state_dict())
    resumed = nldsl.optimizer(name, model.parameters(), schedule=schedule, **hparams)
    resumed.load_state_dict(saved)
    train(model, resumed, 4)
    for a, b in zip(straight.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_lr_scheduler_changes_the_step_size_of_every_group():
    model = network()
    opt = nldsl.optimizer("sgd", [{"params": model[0].parameters(), "lr": 1e-2},
                                  {"params": model[2].parameters()}], lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        opt.zero_grad()
        loss_of(model).backward()
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == [1e-2 / 8, 1e-3 / 8]
    before = model[2].weight.detach().clone()
    opt.zero_grad()
    loss_of(model).backward()
    opt.step()
    # W - lr g, rounded once or twice (a fused multiply-add or not): within 2^-23 (|W| + lr |g|).
    grad = model[2].weight.grad
    tolerance = 2 ** -23 * (before.abs() + 1e-3 / 8 * grad.abs())
    assert ((model[2].weight - (before - 1e-3 / 8 * grad)).abs() <= tolerance).all()


def test_none_means_the_default():
    opt = nldsl.optimizer("muon", network(True).parameters(), adjust_lr_fn=None)
    assert opt.defaults["adjust_lr_fn"] == "original"


@pytest.mark.parametrize("spec, hparams, message, caret_line", [
    pytest.param("adam", dict(momentum=0.9), "adam has no hyper-parameter 'momentum'",
                 "optimizer adam(", id="unknown-name"),
    pytest.param(PLAIN, {}, "plain needs a value for lr", "optimizer plain(lr > 0", id="missing-required"),
    pytest.param("muon", dict(adjust_lr_fn="bogus"),
                 "adjust_lr_fn = 'bogus' is not one of ['original', 'match_rms_adamw']",
                 'adjust_lr_fn = "original" in', id="choice-violation"),
])
def test_hyperparameter_mistakes_are_user_errors_at_the_declaration(spec, hparams, message, caret_line):
    with pytest.raises(nldsl.NLDSLError) as info:
        nldsl.optimizer(spec, network(True).parameters(), **hparams)
    text = str(info.value)
    assert message in text and caret_line in text and "^" in text and "hint:" in text
    assert info.value.line > 0


PERIODIC = """optimizer periodic(lr = 0.1 >= 0, n = 2) {
  level slow every n steps {
    state m like W = 0
    m <- m + grad(W)
  }
  level weights every 1 step {
    W <- W - lr * m
  }
}"""


@pytest.mark.parametrize("spec, hparams, message, caret_line", [
    pytest.param("adam", dict(lr=-1), "adam: lr = -1 is outside its declared range (>= 0)",
                 "optimizer adam(lr = 1e-3 >= 0", id="negative-lr"),
    pytest.param("adam", dict(lr=float("nan")), "adam: lr = nan is outside its declared range (>= 0)",
                 "optimizer adam(lr = 1e-3 >= 0", id="nan-lr"),
    pytest.param("adam", dict(betas=(0.9, 1.5)),
                 "adam: betas = (0.9, 1.5) is outside its declared range (in [0, 1))",
                 "betas = (0.9, 0.999) in [0, 1)", id="beta-above-range"),
    pytest.param("adam", dict(betas=[0.9, 1.0]),
                 "adam: betas = [0.9, 1.0] is outside its declared range (in [0, 1))",
                 "betas = (0.9, 0.999) in [0, 1)", id="beta-list-at-open-end"),
    pytest.param("adam", dict(eps=-1), "adam: eps = -1 is outside its declared range (>= 0)",
                 "eps = 1e-8 >= 0", id="negative-eps"),
    pytest.param("adam", dict(betas=(0.9, 0.99, 0.9)),
                 "adam: betas = (0.9, 0.99, 0.9) is not a tuple of 2 numbers (its default is (0.9, 0.999))",
                 "betas = (0.9, 0.999)", id="three-betas"),
    pytest.param("adam", dict(betas=0.9),
                 "adam: betas = 0.9 is not a tuple of 2 numbers", "betas = (0.9, 0.999)", id="one-beta"),
    pytest.param("adam", dict(lr="0.1"), "adam: lr = '0.1' is not a number (its default is 0.001)",
                 "optimizer adam(lr = 1e-3", id="string-lr"),
    pytest.param("adam", dict(lr=True), "adam: lr = True is not a number", "optimizer adam(lr = 1e-3",
                 id="bool-lr"),
    pytest.param("adam", dict(amsgrad=1), "adam: amsgrad = 1 is not a bool (its default is False)",
                 "amsgrad = false", id="int-for-a-flag"),
    pytest.param("adam", dict(lr=torch.tensor(-0.1)),
                 "adam: lr = tensor(-0.10000000149011612) is outside its declared range (>= 0)",
                 "optimizer adam(lr = 1e-3 >= 0", id="tensor-lr"),
    pytest.param("m3", dict(f=-1), "m3: f = -1 is outside its declared range (>= 1)", "f = 10 >= 1",
                 id="period-below-range"),
    pytest.param(PERIODIC, dict(n="2"), "periodic: n = '2' is not a number (its default is 2)",
                 "optimizer periodic(lr = 0.1 >= 0, n = 2)", id="period-string"),
    pytest.param(PERIODIC.replace("n = 2", "n"), dict(n="2"), "periodic: a level's period "
                 "(`every n steps` in level 'slow') must be a positive integer, got '2' (from n = '2')",
                 "level slow every n steps", id="period-string-without-a-default"),
] + [pytest.param(PERIODIC, dict(n=n), f"periodic: a level's period (`every n steps` in level "
                  f"'slow') must be a positive integer, got {n!r} (from n = {n!r})",
                  "level slow every n steps", id=f"period-{n!r}") for n in (-1, 0, 2.7)])
def test_a_passed_value_must_meet_its_declaration(spec, hparams, message, caret_line):
    """torch.optim.Adam raises ValueError for lr=-1; the value is never run (it gave NaN, and
    `every n steps` with n=0 a ZeroDivisionError, n=2.7 a period of 2)."""
    with pytest.raises(ValueError) as info:
        nldsl.optimizer(spec, network(True).parameters(), **hparams)
    assert isinstance(info.value, nldsl.NLDSLError)
    text = str(info.value)
    assert message in text and caret_line in text and "^" in text and "hint:" in text


def test_every_bad_value_is_reported_at_once():
    with pytest.raises(nldsl.NLDSLError) as info:
        nldsl.optimizer("adam", network(True).parameters(), lr=-1, eps=-1, betas=(0.9, 1.5))
    assert [p.message.split(" is ")[0] for p in info.value.problems] == [
        "adam: lr = -1", "adam: betas = (0.9, 1.5)", "adam: eps = -1"]


def test_torch_refuses_the_same_lr():
    with pytest.raises(ValueError, match="Invalid learning rate"):
        torch.optim.Adam(network(True).parameters(), lr=-1)


@pytest.mark.parametrize("hparams", [
    dict(lr=0.0), dict(betas=[0.9, 0.99]), dict(lr=torch.tensor(0.01)), dict(weight_decay=float("inf")),
    dict(lr=1), dict(amsgrad=True),
], ids=["zero-lr", "betas-list", "tensor-lr", "inf-where-the-range-allows", "int-for-a-float", "flag"])
def test_values_inside_their_declaration_are_taken(hparams):
    nldsl.optimizer("adam", network(True).parameters(), **hparams)


def test_a_bad_value_in_a_param_group_is_refused_with_the_group():
    model = network(True)
    with pytest.raises(nldsl.NLDSLError, match="adjust_lr_fn = 'bogus'"):
        nldsl.optimizer("muon", [{"params": model.parameters(), "adjust_lr_fn": "bogus"}])


def test_a_group_added_later_with_a_bad_value_leaves_the_optimizer_unchanged():
    first, second = network(True), network(True)
    opt = nldsl.optimizer("adam", first.parameters())
    with pytest.raises(ValueError, match=r"adam: lr = -0.5 is outside its declared range"):
        opt.add_param_group({"params": second.parameters(), "lr": -0.5})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": second.parameters(), "lr": 0.5})
    assert len(opt.param_groups) == 2


def _set_lr(group):
    group["lr"] = -0.1


def _set_betas(group):
    group["betas"] = (0.9, 1.0)


def _change_a_list_in_place(group):
    group["betas"][1] = 1.0


@pytest.mark.parametrize("change, betas, message", [
    (_set_lr, (0.9, 0.999), "adam: lr = -0.1 is outside its declared range (>= 0)"),
    (_set_betas, (0.9, 0.999), "adam: betas = (0.9, 1.0) is outside its declared range (in [0, 1))"),
    (_change_a_list_in_place, [0.9, 0.999],
     "adam: betas = [0.9, 1.0] is outside its declared range (in [0, 1))"),
], ids=["lr", "betas", "list-changed-in-place"])
def test_a_value_changed_in_a_group_is_checked_at_the_next_step(change, betas, message):
    model = network(True)
    opt = nldsl.optimizer("adam", model.parameters(), betas=betas)
    loss_of(model).backward()
    opt.step()
    change(opt.param_groups[0])
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError) as info:
        opt.step()
    assert message in str(info.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_unknown_schedule_is_a_user_error():
    with pytest.raises(nldsl.NLDSLError, match="schedule must be one of"):
        nldsl.optimizer("sgd", network().parameters(), schedule="fast")
