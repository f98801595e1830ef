"""Data-parallel training on torch.distributed (issue 13 §4).

Every rank builds the same model from the same seed and draws the same global batch (a task's
batch is a function of seed and step); rank r takes rows `[r B/N, (r+1) B/N)`. The outer
level's parameters are synchronised by DistributedDataParallel, which averages gradients over
the ranks; fast weights and online levels are per-sequence state, computed inside each rank's
forward pass, so they never cross ranks. Each rank's loss is its share of the *global* mean,

    loss_r = N * sum_{positions of rank r} l / (positions of the global batch),

so DDP's average of gradients is the gradient of the global mean, and N processes take the
steps one process takes, up to the order of float sums. A network with levels that learn from
the task loss (nldsl/train/online.py) is called once per segment of `nldsl.stream` and takes
inner gradients in between, which DDP's one-forward-one-backward hooks do not allow: it is not
wrapped, and after the backward its gradients are averaged over the ranks by one all-reduce per
parameter (`average_gradients`), the same average DDP takes. Rank 0 evaluates, writes metrics,
checkpoints and the report. Backends: gloo on CPU, NCCL on CUDA (one device per rank).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, batch: int) -> tuple[int, int]:
        share = batch // self.world
        return self.rank * share, (self.rank + 1) * share

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The sum over ranks (in place), the values themselves on one rank."""
        if self.world > 1:
            dist.all_reduce(values)
        return values

    def wrap(self, model: torch.nn.Module, online: bool = False) -> torch.nn.Module:
        """DDP around the model; the model itself on one rank or when it learns online."""
        if self.world == 1 or online:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [model.embedding.weight.device.index] if torch.cuda.is_available() and \
            model.embedding.weight.is_cuda else None
        return DistributedDataParallel(model, device_ids=ids)


    def average_gradients(self, model: torch.nn.Module) -> None:
        """The mean over ranks of every parameter's gradient (what DDP's all-reduce gives)."""
        if self.world == 1:
            return
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world


def device_for(device: str, rank: int, world: int) -> str:
    """One CUDA device per rank; CPU ranks share the CPU."""
    return f"cuda:{rank % torch.cuda.device_count()}" if device == "cuda" and world > 1 else device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, config, resume: bool, results) -> None:
    from nldsl.train.loop import run

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    backend = "nccl" if config.device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        outcome = run(config, Group(rank, world), resume=resume)
        if rank == 0:
            results.put(outcome)
        # every rank leaves together: a rank that tears gloo down while rank 0 still writes
        # its evaluation and report can abort in gloo's threads
        dist.barrier()
    finally:
        dist.destroy_process_group()


def launch(config, resume: bool = False, progress: bool = True):
    """Run `config` on `config.nproc` local processes, or on the ranks `torchrun` started (its
    WORLD_SIZE and RANK in the environment); the Outcome of rank 0."""
    from nldsl.train.loop import run

    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        backend = "nccl" if config.device == "cuda" else "gloo"
        dist.init_process_group(backend)
        try:
            outcome = run(config, Group(dist.get_rank(), dist.get_world_size()), resume=resume,
                          progress=progress)
            dist.barrier()
            return outcome
        finally:
            dist.destroy_process_group()
    if config.nproc == 1:
        return run(config, Group(), resume=resume, progress=progress)
    import torch.multiprocessing as mp

    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_worker, args=(config.nproc, _free_port(), config, resume, results),
             nprocs=config.nproc)
    return results.get()
