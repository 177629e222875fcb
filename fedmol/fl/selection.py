"""Which round's global model a federated run reports (``RunConfig.select``).

The references that frame every federated result keep the epoch with the best validation score
(:mod:`fedmol.fl.references`). A federated run is held to the same rule, or a curve that peaks
mid-run and then declines (partners with a few hundred molecules overfit) would be compared at
its worst with references compared at their best:

* ``"best-valid"`` (the default): among the evaluated rounds (every ``eval_every``-th and the
  last), the round whose global model scores best on the **pooled validation molecules** (the
  union of the partners' validation sets: the set the centralized reference early-stops on),
  averaged over the widths the algorithm serves; a tie keeps the earlier round, and an undefined
  (NaN) validation score never wins over a defined one. If no evaluated round has a defined
  validation score (e.g. the pooled validation molecules hold one class only), the run falls back
  to the last round and ``selection`` (:meth:`RoundSelector.describe`) says so and why. The run then
  reports that round's model everywhere: ``summary.json``'s ``test`` / ``valid`` / ``per_partner``,
  ``model.safetensors`` and ``test_predictions.csv``. ``summary.json`` also says
  ``selected_round`` and keeps the last round's test scores as ``test_last``.
* ``"last"``: the model after the last round (what a pilot reports when the coordinator holds
  no pooled validation molecules, e.g. one with only a test CSV).

The global model of the selected round is kept as a copy of what the algorithm serves
(:meth:`fedmol.fl.algorithm.Algorithm.checkpoint`) and put back at the end
(:meth:`~fedmol.fl.algorithm.Algorithm.restore`). Selection reads validation scores only: the
test set never influences which model is reported.

Both round drivers use this: the in-process harness (:func:`fedmol.fl.harness.run_federated`) and
the Flower coordinator (:mod:`fedmol.pilot.coordinator`, on a benchmark split whose validation
rows it knows), so their results stay equal.
"""

from __future__ import annotations

import math
from typing import Any

from fedmol.errors import FedmolError
from fedmol.evaluate import HIGHER_IS_BETTER

SELECTIONS = ("best-valid", "last")
#: what :meth:`RoundSelector.describe` appends, before the reason, when best-valid fell back to the last round
FELL_BACK = "; fell back to the last round: "


def check_selection(select: str) -> str:
    if select not in SELECTIONS:
        raise FedmolError(f"unknown model selection {select!r}; known: {', '.join(SELECTIONS)}")
    return select


def selection_score(valid: dict[str, float], metric: str) -> float:
    """The number a round is ranked by (higher is better): the mean over widths of the finite
    validation scores, negated for a lower-is-better metric; -inf when none is finite."""
    vals = [float(v) for v in valid.values() if v is not None and math.isfinite(float(v))]
    if not vals:
        return -math.inf
    mean = sum(vals) / len(vals)
    return mean if HIGHER_IS_BETTER[metric] else -mean


class RoundSelector:
    """Keeps the checkpoint of the best evaluated round; :meth:`finish` puts it back."""

    def __init__(self, select: str, metric: str):
        self.select = check_selection(select)
        self.metric = metric
        self.best_round: int | None = None
        self.best_score = -math.inf
        self._checkpoint: Any = None
        self.evaluated = 0  # rounds observed
        #: why the run reports the last round although ``select`` is best-valid (set by :meth:`finish`)
        self.fallback: str | None = None

    def observe(self, rnd: int, valid: dict[str, float], algo) -> bool:
        """Record round ``rnd``'s validation scores (by width); returns whether it is the best so far."""
        if self.select == "last":
            return False
        self.evaluated += 1
        score = selection_score(valid, self.metric)
        if score == -math.inf:  # undefined: never the best (finish falls back to the last round if all are)
            return False
        if self.best_round is None or score > self.best_score:
            self.best_round, self.best_score = rnd, score
            self._checkpoint = algo.checkpoint()
            return True
        return False

    def stale(self, rnd: int, patience: int | None) -> bool:
        """Early stopping: ``patience`` rounds have passed since the best evaluated round (the
        references' rule, counted in rounds). Never before a defined validation score exists."""
        return (patience is not None and self.select == "best-valid" and self.best_round is not None
                and rnd - self.best_round >= int(patience))

    def finish(self, algo, last_round: int) -> int:
        """Put the selected round's model back into ``algo``; returns the selected round (the last
        one, with :attr:`fallback` saying why, when no evaluated round has a defined validation score)."""
        if self.select == "best-valid" and self.best_round is None:
            self.fallback = (f"no evaluated round has a defined pooled validation {self.metric} (undefined in all "
                             f"{self.evaluated} evaluated rounds)" if self.evaluated else
                             "no round was scored on validation molecules")
            self._checkpoint = None
            return last_round
        if self.select == "last" or self.best_round == last_round:
            return last_round
        algo.restore(self._checkpoint)
        self._checkpoint = None
        return self.best_round

    def describe(self) -> str:
        if self.select == "last":
            return "last: the global model after the last round"
        direction = "highest" if HIGHER_IS_BETTER[self.metric] else "lowest"
        rule = (f"best-valid: the evaluated round with the {direction} pooled validation {self.metric}, "
                "averaged over the served widths (ties: the earlier round)")
        return rule + (FELL_BACK + self.fallback if self.fallback else "")
