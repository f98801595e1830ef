"""The training loop of one rank: steps, evaluations, checkpoints, Ctrl-C and divergence.

A step draws the global batch of its index (the data position is the step), takes this rank's
rows, and minimises the task loss (nldsl/tasks/batch.py) with the outer optimizer. Every
`evaluation_period` steps and at the end, rank 0 evaluates every split of the task, appends a
line to `metrics.jsonl` and writes a checkpoint; a run stopped by Ctrl-C writes one at once.
A non-finite training loss stops the run before the optimizer takes the step, keeping the
last good checkpoint. A spec whose levels learn from the task loss runs through `nldsl.stream`
in training and evaluation (nldsl/train/online.py) unless the run freezes them. Whatever the ending, rank 0 writes `report.md`.
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from nldsl.tasks.batch import accuracy, correct, loss
from nldsl.train import checkpoint
from nldsl.train.config import Config, build_model, build_optimizer, build_task
from nldsl.train.distributed import Group, device_for
from nldsl.train.online import backward_in_windows, forward, learns_online

METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class Outcome:
    status: str   # "done", "interrupted" or "diverged"
    step: int
    message: str


class StopRequest:
    """The first Ctrl-C asks the loop to stop after the current step (a step cut in half
    would leave the weights half-updated); a second one aborts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@torch.no_grad()
def evaluate(model: torch.nn.Module, splits: dict, device: str, online: bool = False
             ) -> dict[str, float]:
    """Loss and accuracies of every split: `{"bin0/loss": ..., "bin0/sequence": ...}`; with
    `online`, the task levels learn as they read each sequence (test-time learning)."""
    out = {}
    for name, batch in splits.items():
        batch = batch.to(device)
        logits = forward(model, model, batch, online=online)  # [B, T, V]
        out[f"{name}/loss"] = loss(logits, batch).item()
        out.update({f"{name}/{k}": v for k, v in accuracy(logits, batch).items()})
    return out


def _write_metrics(out: Path, history: list[dict]) -> None:
    (out / METRICS).write_text("".join(json.dumps(record) + "\n" for record in history))


def _append_metrics(out: Path, record: dict) -> None:
    with (out / METRICS).open("a") as f:
        f.write(json.dumps(record) + "\n")


def run(config: Config, group: Group = Group(), *, resume: bool = False,
        progress: bool = True) -> Outcome:
    from tqdm import tqdm

    if config.batch % group.world:
        raise ValueError(f"--batch {config.batch} does not split over {group.world} processes")
    out, device = Path(config.out), device_for(config.device, group.rank, group.world)
    out.mkdir(parents=True, exist_ok=True)
    task = build_task(config)
    model = build_model(replace(config, device=device), task.vocab_size)
    optimizer = build_optimizer(config, model)
    step, history = 0, []
    window = torch.zeros(3, dtype=torch.float64)  # since `start`: loss sum, hits, positions
    start = 0
    if resume:
        state = checkpoint.load(out, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        window, start = state["window"]["sums"].clone(), state["window"]["start"]
        checkpoint.set_rng_state(state["rng"])
    if group.main:
        _write_metrics(out, history)  # drops evaluations after the checkpoint's step
    online = config.online and learns_online(model)
    net = group.wrap(model, online)
    period = config.evaluation_period
    clock, tokens, status = time.perf_counter(), 0, "done"  # tokens since `clock`
    bar = tqdm(total=config.steps, initial=step, disable=not (progress and group.main),
               dynamic_ncols=True, desc=f"{Path(config.out).name}")
    saved = step if resume else None  # the step of the last checkpoint
    with StopRequest() as stop:
        while step < config.steps:
            batch = task.train_batch(config.seed, step, config.batch)
            count = batch.mask.sum().to(device)
            local = batch.slice(*group.rows(config.batch)).to(device)
            optimizer.zero_grad(set_to_none=True)
            if online and config.truncate:
                logits = backward_in_windows(model, local, config.truncate,
                                             group.world / count.item(),
                                             through_writes=not config.first_order)
                share = loss(logits, local, count=count)
            else:
                logits = forward(model, net, local, online=online,
                                 through_writes=not config.first_order)  # [B / N, T, V]
                share = loss(logits, local, count=count)
                (share * group.world).backward()
            if online:
                group.average_gradients(model)
            stats = torch.stack([share.detach().double(),
                                 correct(logits.detach(), local).sum().double(),
                                 torch.tensor(float(stop.requested), device=device,
                                              dtype=torch.float64)])
            stats = group.sum(stats).cpu()
            if not math.isfinite(stats[0].item()):
                status = "diverged"
                break
            optimizer.step()
            step += 1
            window += torch.tensor([stats[0].item(), stats[1].item(), count.item()],
                                   dtype=torch.float64)
            tokens += batch.inputs.numel()
            speed = tokens / max(time.perf_counter() - clock, 1e-9)
            bar.set_postfix(loss=f"{stats[0].item():.4f}", acc=f"{window[1] / window[2]:.3f}",
                            tok_s=f"{speed:.0f}")
            bar.update()
            if step % period == 0 or step == config.steps:
                if group.main:
                    history.append({"step": step, "train/loss": window[0].item() / (step - start),
                                    "train/token": (window[1] / window[2]).item(),
                                    "tokens_per_s": speed,
                                    **evaluate(model, task.eval_batches(config.seed, step),
                                               device, online)})
                    _append_metrics(out, history[-1])
                window.zero_()
                start, clock, tokens = step, time.perf_counter(), 0
                if group.main:
                    checkpoint.save(out, model=model, optimizer=optimizer, step=step,
                                    config=config.to_dict(), history=history,
                                    window={"sums": window, "start": start})
                    saved = step
            if stats[2].item() > 0:
                status = "interrupted"
                break
    bar.close()
    if status == "interrupted" and group.main:
        checkpoint.save(out, model=model, optimizer=optimizer, step=step,
                        config=config.to_dict(), history=history,
                        window={"sums": window, "start": start})
    return _finish(config, group, step, history, status, saved)


def _finish(config, group, step, history, status, saved) -> Outcome:
    out = Path(config.out)
    if group.main:
        from nldsl.train.report import write_report

        write_report(out, config, history, status, step)
    last = out / checkpoint.NAME
    kept = "none (no evaluation had been reached)" if saved is None else f"{last} (step {saved})"
    messages = {
        "done": f"trained {step} steps; report: {out / 'report.md'}",
        "interrupted": f"interrupted at step {step}; checkpoint saved to {last}; continue "
                       "with --resume",
        "diverged": f"the training loss is not finite at step {step + 1}: stopped before "
                    f"that step; the last good checkpoint is {kept}; try a smaller --lr",
    }
    return Outcome(status, step, messages[status])
