"""The evaluation schedule: one rule for when an evaluation, and a task evaluation, is due."""

from localdpo.trainer.config import EvalConfig
from localdpo.trainer.evaluation import evaluation_due


def _due(steps, **fields):
    config = EvalConfig(**fields)
    return [tuple(evaluation_due(config, step)) for step in steps]


def test_every_and_task_every_schedule_evaluations_and_task_evaluations():
    # every=2, task_every=3: evaluations on 2, 3, 4, 6; the task runs on 3 and 6 only
    assert _due(range(1, 7), every=2, task="addition", task_every=3) == [
        (False, False),
        (True, False),
        (True, True),
        (True, False),
        (False, False),
        (True, True),
    ]
    # without a task, task_every schedules nothing
    assert _due([3, 4], every=4, task=None, task_every=3) == [(False, True), (True, False)]
    # step 0 and the final evaluation always include the task
    assert tuple(evaluation_due(EvalConfig(), 0)) == (True, True)
    assert tuple(evaluation_due(EvalConfig(), 5, final=True)) == (True, True)
