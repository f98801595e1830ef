"""Generated training tasks, no downloads (issue 13 §2): formal languages (NL Table 5), MQAR,
a needle in a haystack, and a continual-learning stream.

    task = nldsl.tasks.make("parity")                  # defaults
    task = nldsl.tasks.make("mqar:pairs=4,seq_len=32")  # NAME[:option=value,...]
    batch = task.train_batch(seed, step, batch_size)    # a Batch: inputs, targets, mask
    splits = task.eval_batches(seed, step)              # {"bin0": Batch, "bin1": Batch}

Every task has `name`, `vocab_size`, `train_batch` and `eval_batches`, each a pure function
of its arguments (nldsl/tasks/batch.py).
"""
from __future__ import annotations

from functools import partial

from nldsl.tasks.batch import Batch, accuracy, correct, loss
from nldsl.tasks.continual import labelling_stream
from nldsl.tasks.formal import FormalTask
from nldsl.tasks.languages import LANGUAGES
from nldsl.tasks.mqar import MQARTask
from nldsl.tasks.needle import NeedleTask

FACTORIES = {**{name: partial(FormalTask, name) for name in LANGUAGES},
             "mqar": MQARTask, "needle": NeedleTask, "continual": labelling_stream}


def parse(text: str) -> tuple[str, dict[str, int | float]]:
    """`NAME[:key=value,...]` to the name and its options (numbers)."""
    name, _, rest = text.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"task option {item!r} is not key=value")
        options[key.strip()] = float(value) if "." in value else int(value)
    return name.strip(), options


def make(text: str, **defaults):
    """The task `NAME[:key=value,...]` names, `defaults` under its options; a ValueError lists
    the names when it is unknown."""
    name, options = parse(text)
    options = {**defaults, **options}
    if name not in FACTORIES:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(FACTORIES)}")
    try:
        return FACTORIES[name](**options)
    except TypeError as err:
        raise ValueError(f"task {name}: {err}") from None


__all__ = ["Batch", "FACTORIES", "accuracy", "correct", "loss", "make", "parse"]
