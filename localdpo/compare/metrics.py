"""The metrics a comparison reports, which one is primary, and the order hyperparameter selection reads them in.

A leaf of `localdpo.compare`: the report, the selection, the plots and the rounds read these definitions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    percent: bool = False


METRICS: tuple[Metric, ...] = (
    Metric("task_accuracy", "task accuracy", True, percent=True),
    Metric("format_kept", "format kept", True, percent=True),
    Metric("preference_accuracy", "held-out pref. acc.", True, percent=True),
    Metric("chosen_nll", "chosen-span NLL", False),
    Metric("drift_kl", "drift KL", False),
    # at the held-out steers (`localdpo.trainer.steer_metrics`): greedy from prompt + prefix, does the model
    # write the rejected span again, the chosen span; and is the answer continued from the correction right
    Metric("recurrence", "recurrence", False, percent=True),
    Metric("uptake", "uptake", True, percent=True),
    Metric("continuation_accuracy", "continuation acc.", True, percent=True),
    # in rounds (`localdpo.compare.rounds`): over a round's fresh train prompts, did the model entering the
    # round still make a mistake that gave a steer (lower: fewer mistakes left to steer)
    Metric("yield", "yield", False, percent=True),
)
METRICS_BY_KEY = {m.key: m for m in METRICS}
PRIMARY_METRICS = ("task_accuracy", "uptake", "preference_accuracy")
"""The primary metric of a comparison, the first of these it measured: its differences with the baseline form
the Holm-corrected family, and hyperparameter selection reads it first (`localdpo.compare.selection`).

With a task, held-out task accuracy: the checker's verdict on whole greedy answers, what the person wants.
Without one (a person's own steers), uptake: greedy from prompt + prefix at each held-out steer, the model
writes the correction token for token. It is the behaviour a steer asks for, read from generation, and
measured the same way for every method. Held-out preference accuracy is the fallback (runs without the steer
metrics), not the first choice: it asks whether the policy's log-ratio against the reference favours chosen
over rejected, the quantity the DPO-family losses push up directly and SFT only indirectly, so it leans
towards the methods that optimise it, and it is 0 for the starting model by construction (ties).
Recurrence stays a secondary column: a method that stops writing the mistake may write anything else."""
PRIMARY_METRIC = PRIMARY_METRICS[0]
"""The primary metric of a comparison with a task (see `PRIMARY_METRICS`)."""


def primary_metric(keys) -> str:
    """The primary metric (`PRIMARY_METRICS`) of a comparison whose metric keys are `keys`: task accuracy when
    it has a task, else uptake, else held-out preference accuracy."""
    keys = set(keys)
    return next((key for key in PRIMARY_METRICS if key in keys), PRIMARY_METRIC)


TIE_BREAKS: tuple[str, ...] = ("preference_accuracy", "chosen_nll", "drift_kl")
"""The metrics that decide after the primary one, in order."""


def score_keys(primary: str = PRIMARY_METRIC) -> tuple[tuple[str, bool], ...]:
    """(`eval/` metric, higher is better) in the order they decide: `primary`, then `TIE_BREAKS`."""
    keys = dict.fromkeys([primary, *TIE_BREAKS])
    return tuple((f"eval/{key}", METRICS_BY_KEY[key].higher_is_better) for key in keys)


SCORE_KEYS = score_keys()
"""The order with a task: validation task accuracy first."""
