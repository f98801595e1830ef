"""`report.md`: a run's configuration, final numbers, curves and the spec's nesting diagram.

Written by rank 0 at the end of every run (done, interrupted or diverged) from the
evaluations recorded so far, so an interrupted run's report shows where it stopped. The curves
are matplotlib PNGs (loss.png, accuracy.png); the diagram is `nldsl.render`'s SVG, or its DOT
text when Graphviz's `dot` program is missing.
"""
from __future__ import annotations

from pathlib import Path

from nldsl.errors import NLDSLError

STATUS = {"done": "finished at step {step} of {steps}.",
          "interrupted": "interrupted (Ctrl-C) at step {step} of {steps}; continue with --resume.",
          "diverged": "stopped before step {next}: the training loss was not finite; the "
                      "checkpoint is the last good one."}


def plot(history: list[dict], suffix: str, path: Path, ylabel: str) -> Path | None:
    """Every recorded series whose name ends in `suffix`, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k for record in history for k in record if k.endswith(suffix)})
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [record["step"] for record in history]
    for name in names:
        ax.plot(steps, [record.get(name, float("nan")) for record in history], marker=".",
                label=name, linestyle="--" if name.endswith("/sequence") else "-")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def diagram(spec: str, out: Path) -> Path:
    import nldsl

    try:
        return nldsl.render(spec, out / "spec.svg")
    except NLDSLError:  # no Graphviz: the DOT text still draws it elsewhere
        return nldsl.render(spec, out / "spec.dot")


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def write_report(out: Path, config, history: list[dict], status: str, step: int) -> Path:
    out = Path(out)
    loss_png = plot(history, "loss", out / "loss.png", "loss")
    acc_png = plot(history, "/token", out / "accuracy.png", "accuracy (positions)")
    seq_png = plot(history, "/sequence", out / "sequence_accuracy.png", "sequence accuracy")
    picture = diagram(config.spec, out)
    settings = [(k, f"`{v}`") for k, v in config.to_dict().items()]
    final = history[-1] if history else {}
    numbers = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in final.items()]
    lines = [f"# {Path(config.spec).stem} on {config.task}", "",
             "Status: " + STATUS[status].format(step=step, steps=config.steps, next=step + 1), "",
             "## Configuration", "", _table(settings), "",
             "## Final evaluation", "",
             _table(numbers) if numbers else "No evaluation was reached.", "", "## Curves", ""]
    lines += [f"![{p.stem}]({p.name})" for p in (loss_png, acc_png, seq_png) if p]
    lines += ["", "## The spec", "",
              f"![nesting diagram]({picture.name})" if picture.suffix == ".svg"
              else f"Nesting diagram (DOT text; install Graphviz to draw it): {picture.name}",
              "", "Evaluations per line: `metrics.jsonl`. Checkpoint: `checkpoint.pt`.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
