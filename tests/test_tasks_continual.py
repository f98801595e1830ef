"""The continual stream: tasks by step, conflicting labellings, evaluation of earlier tasks."""
import pytest
import torch

from nldsl.tasks.continual import LabellingTask, Stream, labelling_stream


def test_targets_are_the_task_s_labelling():
    task = LabellingTask(1)
    batch = task.train_batch(0, 0, 4)
    table = task.labelling()
    assert torch.equal(batch.targets, torch.from_numpy(table[batch.inputs.numpy()]))
    assert batch.mask.all() and batch.inputs.shape == (4, 32)


def test_tasks_conflict():
    a, b = LabellingTask(0).labelling(), LabellingTask(1).labelling()
    assert (a != b).mean() > 0.5


@pytest.mark.parametrize("step,task", [(0, 0), (9, 0), (10, 1), (99, 2)],
                         ids=["first", "last-of-first", "second", "past-the-end"])
def test_the_task_of_a_step(step, task):
    stream = labelling_stream(tasks=3, steps_per_task=10)
    assert stream.task_at(step) == task
    expected = stream.tasks[task].train_batch(0, step, 2)
    assert torch.equal(stream.train_batch(0, step, 2).targets, expected.targets)


@pytest.mark.parametrize("steps,seen", [(0, ["task0"]), (10, ["task0"]),
                                        (11, ["task0", "task1"]),
                                        (99, ["task0", "task1", "task2"])],
                         ids=["start", "end-of-first", "into-second", "past-the-end"])
def test_evaluation_after_steps_covers_the_tasks_trained(steps, seen):
    stream = labelling_stream(tasks=3, steps_per_task=10)
    assert list(stream.eval_batches(0, steps)) == seen


def test_a_stream_needs_one_vocabulary():
    with pytest.raises(ValueError, match="vocabulary"):
        Stream((LabellingTask(0, symbols=8), LabellingTask(1, symbols=16)), 5)
