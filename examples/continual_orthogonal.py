"""The continual-learning problem of eq. (45): two regression tasks whose gradients live in
orthogonal subspaces, learned one after the other. How much of task 1 survives task 2?

    .venv/bin/python examples/continual_orthogonal.py [--out examples/continual_orthogonal.png]

L_i(W) = E[(W^T x - y)^2], task i's inputs x span its own d/2-dim subspace. Printed: task-1 loss
after task 1 and after task 2 for SGD+momentum, Adam and M3 (loss at init for reference), and a
plot of the task-1 loss along training. Sizes, steps and learning rates are ours.
"""
from __future__ import annotations

import argparse

import torch

import nldsl

D, OUT, N, STEPS = 16, 4, 256, 150


def tasks(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D, D, generator=gen))[0]            # [D, D] orthonormal
    made = []
    for i in range(2):
        sub = basis[:, i * D // 2:(i + 1) * D // 2]                          # [D, D/2]
        x = torch.randn(N, D // 2, generator=gen) @ sub.T                    # [N, D]
        y = x @ torch.randn(D, OUT, generator=gen)                           # [N, OUT]
        made.append((x, y))
    return made


def run(name: str, **hparams) -> list[float]:
    (x1, y1), (x2, y2) = tasks()
    w = torch.nn.Parameter(torch.zeros(OUT, D))
    opt = nldsl.optimizer(name, [w], **hparams)
    task1 = []
    for x, y in ((x1, y1), (x2, y2)):
        for _ in range(STEPS):
            opt.zero_grad()
            ((x @ w.T - y) ** 2).mean().backward()
            opt.step()
            with torch.no_grad():
                task1.append(((x1 @ w.T - y1) ** 2).mean().item())
    return task1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples/continual_orthogonal.png")
    args = parser.parse_args()
    (x1, y1), _ = tasks()
    initial = (y1 ** 2).mean().item()
    runs = {"SGD + momentum": run("sgd", lr=0.02, momentum=0.9),
            "Adam": run("adam", lr=0.02),
            "M3": run("m3", lr=0.002, f=10, betas=(0.9, 0.999, 0.9), form="ema")}
    print(f"task-1 loss at init: {initial:.4f}")
    print(f"{'optimizer':16} {'after task 1':>13} {'after task 2':>13} {'kept':>6}")
    for name, curve in runs.items():
        after1, after2 = curve[STEPS - 1], curve[-1]
        kept = 1 - (after2 - after1) / max(initial - after1, 1e-12)
        print(f"{name:16} {after1:13.4f} {after2:13.4f} {kept:6.1%}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in runs.items():
        ax.semilogy(curve, label=name)
    ax.axvline(STEPS, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("step (task 2 starts at the dashed line)")
    ax.set_ylabel("task-1 loss")
    ax.set_title("eq. (45): orthogonal tasks learned in sequence")
    ax.legend()
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
