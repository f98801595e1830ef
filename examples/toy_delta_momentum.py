"""The toy problem of eq. (53): momentum vs delta momentum from (r, theta) = (-3.5, 2).

    psi(r, theta) = r^2 + k (r - theta + alpha sin(omega r))^2

    .venv/bin/python examples/toy_delta_momentum.py [--out examples/toy_delta_momentum.png]

Prints the distance to the minimum (0, 0) after each optimizer's steps and draws both
trajectories over the contours of psi. k, alpha, omega, lr and beta are ours (the paper gives none).
"""
from __future__ import annotations

import argparse
import math

import torch

import nldsl

K, ALPHA, OMEGA = 1.0, 0.5, 3.0
START = (-3.5, 2.0)


def psi(w: torch.Tensor) -> torch.Tensor:
    r, theta = w[0], w[1]
    return r ** 2 + K * (r - theta + ALPHA * torch.sin(OMEGA * r)) ** 2


def trajectory(name: str, steps: int, **hparams) -> list[tuple[float, float]]:
    w = torch.nn.Parameter(torch.tensor(START, dtype=torch.float64))
    opt = nldsl.optimizer(name, [w], **hparams)
    path = [tuple(w.tolist())]
    for _ in range(steps):
        opt.zero_grad()
        psi(w).backward()
        opt.step()
        path.append(tuple(w.tolist()))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples/toy_delta_momentum.png")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    runs = {"momentum": trajectory("momentum", args.steps, lr=0.003, beta=0.9),
            "delta momentum": trajectory("delta_momentum", args.steps, lr=0.003, beta=0.9)}
    for name, path in runs.items():
        r, theta = path[-1]
        print(f"{name:15} after {args.steps} steps: distance to (0, 0) = {math.hypot(r, theta):.4f}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rs, ts = torch.meshgrid(torch.linspace(-4, 2, 200), torch.linspace(-3, 3, 200), indexing="ij")
    zs = rs ** 2 + K * (rs - ts + ALPHA * torch.sin(OMEGA * rs)) ** 2
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.contour(rs, ts, zs.log1p(), levels=25, cmap="Greys", linewidths=0.6)
    for name, path in runs.items():
        ax.plot([p[0] for p in path], [p[1] for p in path], marker=".", ms=3, label=name)
    ax.plot(*START, "ks")
    ax.set_xlabel("r")
    ax.set_ylabel("theta")
    ax.set_title("eq. (53): momentum vs delta momentum")
    ax.legend()
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
