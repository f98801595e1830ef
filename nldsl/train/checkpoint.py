"""Checkpoints: everything a run needs to continue bit for bit.

A checkpoint holds the model's and the optimizer's state dicts, the step (the data position:
a task's batch is a function of seed and step, nldsl/tasks/batch.py), the random number
generators' states (torch, numpy, Python), the configuration, the evaluations so far and the
training sums since the last one. It is
written to a temporary file and renamed, so a crash while writing leaves the previous one.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

NAME = "checkpoint.pt"


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(out: Path, *, model, optimizer, step: int, config: dict, history: list,
         window: dict) -> Path:
    """`window`: the training sums since the last evaluation (a run stopped between two
    evaluations reports, after resuming, the averages it would have reported)."""
    path = Path(out) / NAME
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "rng": rng_state(), "config": config, "history": history, "window": window},
               tmp)
    os.replace(tmp, path)
    return path


def load(out: Path, device: str = "cpu") -> dict:
    """The checkpoint in `out`; FileNotFoundError says where it looked."""
    path = Path(out) / NAME
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint to resume: {path} does not exist")
    # weights_only=False: the checkpoint holds numpy's and Python's RNG states; it is our own
    # file, written by `save`.
    return torch.load(path, map_location=device, weights_only=False)
