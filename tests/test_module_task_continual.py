"""Continual learning through nldsl.stream (nldsl/module/task.py, NL sec. 7.1, eq. 71): a stream
of task A then task B, the CMS levels online (learn=True) against the same trained network with
them frozen (learn=False). The experiment is nldsl/train/continual.py's (docs/training.md,
"Continual learning"): `cms` as the block of nldsl.lm (dim 32, depth 1, expansion 4), periods
16/8/4 and rates 0.1 (hyper-parameters, the stdlib spec unchanged), 16 symbols, 4 labels, 8
sequences of 64 tokens per task, a 40-step first-order outer training on random labellings, float64,
seed 0.

Margins measured with `benchmarks/bench_continual.py --seeds 0,...,9` (per-token cross-entropy,
nats; the assertions take about half the smallest value seen, so they are not tuned to seed 0):

| margin                                              | min over seeds 0-9 | median | seed 0 | asserted |
|-----------------------------------------------------|-------------------:|-------:|-------:|---------:|
| split: frozen - online, A after B ("retained")       | 0.79               | 1.32   | 1.36   | > 0.4    |
| split: retained / (frozen - online, A after A)       | 0.52               | 0.87   | 0.96   | > 0.25   |
| split: frozen - online, loss area over B ("faster")  | 0.94               | 1.23   | 1.23   | > 0.45   |
| conflicting: online A after B - online A after A     | 1.61               | 1.95   | 2.18   | > 0.8    |
"""
from __future__ import annotations

import pytest
import torch

import nldsl
from _module_cases import assert_close
from test_module_deep_memories import deep_bound
from nldsl.train.continual import Setting, build, meta_train, trial

SETTING = Setting("cms", (("period_slow", 16), ("period_mid", 8), ("period_fast", 4),
                          ("lr_slow", 0.1), ("lr_mid", 0.1), ("lr_fast", 0.1)))
SEED = 0


@pytest.fixture(scope="module")
def trained():
    model = build(SETTING, SEED)
    losses = meta_train(model, SETTING, SEED)
    return model, losses


@pytest.fixture(scope="module")
def split(trained):
    return trial(trained[0], SETTING, SEED, conflict=False)


def test_the_outer_training_teaches_the_levels_to_learn(trained):
    """Every outer-training sequence has a labelling of its own, so the loss falls only as far
    as the online levels learn within a sequence: from log 16 (uniform over the vocabulary)
    to below log 4 = 1.39 (the best a network that cannot learn a new labelling does: the label
    marginal). Measured over seeds 0-4: first step 2.51-2.55, mean of the last five 0.56-0.62."""
    _, losses = trained
    assert losses[0] > 2.3 and sum(losses[-5:]) / 5 < 1.0


def test_frozen_levels_do_not_change(split):
    """With learn=False the CMS network is an ordinary network: B leaves A's loss as it was."""
    assert split[False]["a_after_a"] == split[False]["a_after_b"]


def test_online_cms_retains_a_better_than_frozen(split):
    """A and B label disjoint halves of the symbols; after the B stream the online network is
    still better on A than the frozen one, and keeps most of what it gained on A."""
    online, frozen = split[True], split[False]
    retained = frozen["a_after_b"] - online["a_after_b"]
    gained = frozen["a_after_a"] - online["a_after_a"]
    assert retained > 0.4
    assert retained / gained > 0.25


def test_online_cms_learns_b_faster(split):
    """The loss area over the B stream (mean per-token loss while B is read) is lower online."""
    assert split[False]["b_stream"] - split[True]["b_stream"] > 0.45


def test_a_conflicting_b_overwrites_a(trained):
    """The retention check can fail: when B labels A's own symbols differently, no function of
    the token serves both, and learning B takes A's gain away."""
    online = trial(trained[0], SETTING, SEED, conflict=True)[True]
    assert online["a_after_b"] - online["a_after_a"] > 0.8


def test_frozen_hope_freezes_its_cms_levels_only():
    """What "frozen" means for Hope (docs/training.md, "Hope"): learn=False freezes the levels
    that learn from the task loss, Hope's three CMS blocks; its self-modifying memories learn
    from their own l2 objective on the inputs in both conditions, never from a label, so the
    online and the frozen network read and write them alike, and differ in the CMS blocks
    alone. Alike to rounding, not to the bit: the online stream cuts the call at the CMS
    periods, and the snapshot form sums a chunk that a cut splits in two parts."""
    torch.manual_seed(0)
    model = nldsl.lm("hope", vocab_size=8, dim=8, depth=1, period_slow=8, period_mid=4,
                     period_fast=2, chunk_memory=4, chunk_projections=4, lr_slow=0.1,
                     lr_mid=0.1, lr_fast=0.1).double()
    inputs, targets = torch.randint(0, 8, (2, 12)), torch.randint(0, 4, (2, 12))
    with torch.no_grad():
        states = {learn: nldsl.stream(model, inputs, targets, learn=learn, end=False)[1][0]
                  for learn in (True, False)}
    for level in ("projections", "memory"):
        for name, online in states[True][level].items():
            frozen = states[False][level][name]
            for a, b in zip(online, frozen):
                assert_close(a, b, deep_bound(12, 4 * 8), f"{level}.{name}")
    for level, name in (("cms_slow", "theta_slow"), ("cms_mid", "theta_mid"),
                        ("cms_fast", "theta_fast")):
        online, frozen = states[True][level][name], states[False][level][name]
        assert max((a - b).abs().max() for a, b in zip(online, frozen)) > 1e-6, level


def test_hope_cms_first_write_is_the_task_gradient_step():
    """Hope's task levels get their inner loss through nldsl.stream as `cms`'s do (eq. 71): after
    one period of `cms_fast` (2 tokens) its state is theta_0 - lr dL/dtheta, L the summed
    next-label cross-entropy of those tokens, the gradient taken here by plain autograd on the
    network called directly; the slower blocks have not written. To rounding: the stream sums
    the tokens' gradient factors in one GEMM per layer (module/taskgrad.py), autograd here per
    product."""
    torch.manual_seed(0)
    lr = 0.2
    model = nldsl.lm("hope", vocab_size=8, dim=8, depth=1, period_slow=4, period_mid=4,
                     period_fast=2, chunk_memory=4, chunk_projections=4, lr_fast=lr).double()
    inputs, targets = torch.randint(0, 8, (2, 2)), torch.randint(0, 4, (2, 2))
    with torch.no_grad():
        streamed = nldsl.stream(model, inputs, targets, end=False)[1][0]
    _, state = model(inputs[:, :0], None, end=False)
    leaves = tuple(w.detach().clone().requires_grad_(True)
                   for w in state[0]["cms_fast"]["theta_fast"])
    state[0]["cms_fast"]["theta_fast"] = leaves
    logits, _ = model(inputs, state, end=False)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                             reduction="sum")
    grads = torch.autograd.grad(loss, leaves)
    for written, theta, grad in zip(streamed["cms_fast"]["theta_fast"], leaves, grads):
        assert_close(written, (theta - lr * grad).detach(), deep_bound(2, 4 * 8), "theta_fast")
    for level, name in (("cms_slow", "theta_slow"), ("cms_mid", "theta_mid")):
        assert all(torch.equal(a, b) for a, b in zip(streamed[level][name],
                                                     state[0][level][name]))


# Hope with the CMS protocol above and two hyper-parameters changed for reasons of its own
# (docs/training.md, "Hope: why the check fails at its defaults"): conv width 1, since a
# label depends on the current token only and the conv mixes the last 4 into q; chunk_memory 16,
# since at 64 (the training length) the outer training never reads a written memory. Chosen on
# seed 0 before seeds 1-3 were run, dim 32 (benchmarks/bench_continual.py --spec hope):
#   seed        0     1     2     3
#   retained  0.33  0.92  0.30  0.47
#   faster    0.27  0.48  0.52  0.14
# The assertions take about half the smallest value seen.
HOPE = Setting("hope", SETTING.hparams + (("conv_width", 1), ("chunk_memory", 16)))


@pytest.fixture(scope="module")
def hope_split():
    model = build(HOPE, SEED)
    meta_train(model, HOPE, SEED)
    return trial(model, HOPE, SEED, conflict=False)


def test_online_hope_retains_a_better_than_frozen(hope_split):
    """Hope's CMS blocks online keep A better through the B stream than frozen (the
    self-modifying memories learn in both conditions: test_frozen_hope_freezes_its_cms_levels_only)."""
    online, frozen = hope_split[True], hope_split[False]
    assert frozen["a_after_b"] - online["a_after_b"] > 0.15


def test_online_hope_learns_b_faster(hope_split):
    assert hope_split[False]["b_stream"] - hope_split[True]["b_stream"] > 0.07
