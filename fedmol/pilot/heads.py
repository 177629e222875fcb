"""Private heads over a link (``heads = "private"``, ``docs/private_heads.md``): a partner's task
head never leaves its site, so the site keeps it, and only the site can score its own model.

**Site state.** Flower may answer each message in a fresh ClientApp process, so a site's head
lives on its disk, in its state folder (node config ``state-dir``, default its ``audit-dir``):
``heads/run-<run id>.safetensors`` is the partner's current head (full width, safetensors only,
written atomically), ``heads/run-<run id>-r<round>.safetensors`` its head at each evaluated
round that can still be selected (:class:`HeadStore`: every evaluation message names the best
round so far, and the site deletes the other rounds' heads; the final report leaves the selected
round's only, the head of the partner's final model). A private-heads training message loads the
current head (none yet: the first head of the run's starting weights,
:func:`fedmol.fl.algorithm.first_head`, for the site's own number of target columns), runs
:meth:`~fedmol.fl.algorithm.Algorithm.partner_update` (which keeps the trained head and leaves it
out of the reply) and saves it again.

**Evaluation** (:class:`SiteScores`, the round driver's ``evaluate`` at the coordinator): every
evaluated round, each partner able to run a served width is sent the trunk at that width (a
validate message, ``purpose`` ``evaluate``, no head); the site keeps its current head as that
round's and scores the trunk plus its head (refit on the trunk first when the run's ``head_steps``
asks for it, as in-process; :func:`score_own_model`, the harness's
:func:`~fedmol.fl.harness.own_model_scores`) on the sets of
:class:`~fedmol.fl.harness.PrivateHeadScores`: with a split file (the demo, flower-sim) the
pooled validation set and the split's test rows restricted to its own tasks, else (a site CSV)
its own validation molecules only. The round's score at a width is the mean over the partners
that answered of their finite scores, as in-process. At the end the sites score the selected
round's trunk with that round's heads (``purpose`` ``report``, ``head_round``) for
``summary.json``'s ``per_partner`` entries (:func:`own_model_entry`).

Why the pooled validation set at a split site (not only its own validation molecules): it is
the set the in-process round score uses, so flower-sim and the demo select the same round with
the same numbers; such a site holds the whole dataset and the split file anyway. A site CSV has
its own validation molecules only, and the per-partner ``valid`` is always those.

Deviations from in-process: the evaluation messages are counted traffic (``bytes_up`` /
``bytes_down``, ``sent.jsonl`` kind ``validate``; in-process the organizer holds the heads and
nothing is sent); a coordinator's test CSV is refused (it could score no partner's model). A
simulated drop-out (``p_drop``) is drawn before delivery and the site is not sent its training
message (:class:`fedmol.fl.driver.RoundDriver`), so it trains no head, as in-process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedmol.fl.algorithm import (HEAD_KEYS, LocalData, first_head, own_head, own_num_tasks, refit_scored_head,
                                 sent_hparams)
from fedmol.fl.message import Message
from fedmol.pilot.records import PilotError

#: validate-message purposes with private heads: a round's evaluation, the final report
EVALUATE, REPORT = "evaluate", "report"


def is_private(msg: Message) -> bool:
    return msg.config.get("heads") == "private"


@dataclass
class HeadStore:
    """A site's private heads for one run, on its disk (see the module docstring)."""

    folder: Path
    run_id: str

    @classmethod
    def of_site(cls, node_config: dict, run_id) -> "HeadStore":
        from fedmol.pilot.site import state_dir

        return cls(state_dir(node_config) / "heads", "local" if run_id is None else str(run_id))

    def path(self, rnd: int | None = None) -> Path:
        """The current head's file, or round ``rnd``'s."""
        return self.folder / (f"run-{self.run_id}.safetensors" if rnd is None else
                              f"run-{self.run_id}-r{int(rnd)}.safetensors")

    def load(self, msg: Message, data: LocalData, rnd: int | None = None) -> None:
        """``data.head`` from the current head's file (absent: None, so the first head is made),
        or from round ``rnd``'s (absent: an error)."""
        from safetensors.torch import load_file

        path = self.path(rnd)
        if not path.is_file():
            if rnd is not None:
                raise PilotError(f"no head kept for round {rnd}: this site missed that round's evaluation")
            data.head = None
            return
        head = first_head(msg.config["model"], msg.config["init_seed"], own_num_tasks(msg, data))
        head.load_state_dict(load_file(str(path)))
        data.head = head

    def prune(self, keep) -> None:
        """Delete this run's round heads except those of the rounds in ``keep`` (None entries ignored)."""
        keep_names = {self.path(int(r)).name for r in keep if r is not None}
        for path in self.folder.glob(f"run-{self.run_id}-r*.safetensors"):
            if path.name not in keep_names:
                path.unlink(missing_ok=True)

    def save(self, data: LocalData, rnd: int | None = None) -> None:
        """Write ``data.head`` as the current head (or as round ``rnd``'s), atomically."""
        from fedmol.atomic import write_atomic
        from fedmol.safetensors_io import canonical_safetensors

        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous() for k, v in data.head.state_dict().items()}
        write_atomic(self.path(rnd), canonical_safetensors(tensors))


# -- the site --------------------------------------------------------------------------------------
def train(algo_cls, msg: Message, data: LocalData, store: HeadStore) -> Message:
    """A private-heads training message at a site: the stored head in, trained, stored back."""
    store.load(msg, data)
    reply = algo_cls.partner_update(msg, data)
    store.save(data)
    return reply


def validate(algo_cls, msg: Message, meta: dict, site, store: HeadStore) -> Message:
    """Score the trunk ``msg`` carries plus this site's own head: its current head, kept as round
    ``meta["round"]``'s (``purpose`` ``evaluate``), or round ``head_round``'s (``report``)."""
    from fedmol.evaluate import Evaluator

    purpose, data = msg.config.get("purpose"), site.local
    if purpose == REPORT:
        store.load(msg, data, int(msg.config["head_round"]))
    elif purpose == EVALUATE:
        store.load(msg, data)
    else:
        raise PilotError(f"unknown purpose {purpose!r} of a private-heads validate message")
    model = algo_cls.client_model(own_head(msg, data))
    if purpose == EVALUATE:
        trunk_round = int(meta["round"])
        store.save(data, trunk_round)
        if "keep_round" in msg.config:  # the rounds that can still be selected: this one, the best so far
            store.prune({trunk_round, msg.config["keep_round"]})
    else:
        trunk_round = int(msg.config["head_round"])
        store.prune({trunk_round})  # the run is over: its selected round's head is the site's
    refit_scored_head(model, data, msg.config.get("hp", {}), int(msg.config["init_seed"]), trunk_round)
    evaluator = Evaluator(site.task_type, len(site.tasks))
    scores = score_own_model(model, site, evaluator, float(msg.config["width"]))
    by_task = scores.pop("test_by_task", None)
    return Message(metrics={**{k: float(v) for k, v in scores.items()}, "n_valid": float(len(data.valid))},
                   config={"metric": evaluator.eval_metric, **({"test_by_task": by_task} if by_task else {})})


def score_own_model(model, site, evaluator, width: float) -> dict:
    """``valid`` (the round score), ``own_valid`` (its own validation molecules) and, at a site
    holding a split file, ``test`` with its secondary scores."""
    from fedmol.fl.harness import own_model_scores

    sets = split_sets(site)
    if sets is None:  # a site CSV: its own validation molecules are all it can score on
        scores = own_model_scores(model, {"valid": site.local.valid}, evaluator, width)
        return {**scores, "own_valid": scores["valid"]}
    return own_model_scores(model, {**sets, "own_valid": site.local.valid}, evaluator, width)


def split_sets(site) -> dict | None:
    """The split's test rows and pooled validation molecules restricted to this site's tasks (the
    sets a partner's model is scored on in-process); None for a site without a split file."""
    if site.split is None:
        return None
    if site.scoring_sets is None:
        from fedmol.data.splits import pooled_subset
        from fedmol.fl.harness import own_task_sets

        ds, split = site.dataset, site.split
        site.scoring_sets = own_task_sets(split, ds, site.local.pid, {
            "test": ds.select_rows(split["test"]), "valid": pooled_subset(split, ds, "valid")})
    return site.scoring_sets


# -- the coordinator -------------------------------------------------------------------------------
def trunk_message(algo, width: float, purpose: str, head_round: int | None = None,
                  keep_round: int | None = None) -> Message:
    """The served model at ``width`` without its head, for a site to score with its own head
    (``keep_round``, evaluate: the best round so far, whose head the site must still keep)."""
    from fedmol.models import slicing

    config = {"width": float(width), "model": algo.model_config, "purpose": purpose, "heads": "private",
              "init_seed": algo.seed, "hp": sent_hparams(algo.hp),
              **({"head_round": int(head_round)} if head_round is not None else {}),
              **({"keep_round": keep_round} if purpose == EVALUATE else {})}
    arrays = {k: v for k, v in slicing.sub_state_dict(algo.eval_model(width), width).items() if k not in HEAD_KEYS}
    return Message(arrays=arrays, config=config)


class SiteScores:
    """The round driver's ``evaluate`` with private heads over a link: at each served width the
    partners able to run it score their own models at their sites (the driver's
    :meth:`~fedmol.fl.driver.RoundDriver.ask_to_validate`, counted traffic); a set's score is the
    mean of the finite answers. ``test`` only when the sites hold the split (``with_test``)."""

    def __init__(self, with_test: bool):
        self.names = ("test", "valid") if with_test else ("valid",)
        self.driver = None  # the RoundDriver asking (set once it is built)

    def __call__(self, algo, widths, datasets, evaluator, query) -> dict[str, dict[str, float]]:
        from fedmol.fl.harness import finite_mean
        from fedmol.training import width_key

        out: dict[str, dict[str, float]] = {name: {} for name in self.names}
        for w in widths:
            query(w)
            keep = self.driver.selector.best_round
            answers = self.driver.ask_to_validate(w, trunk_message(algo, w, EVALUATE, keep_round=keep))
            for name in self.names:
                out[name][width_key(w)] = finite_mean(m.metrics.get(name, float("nan")) for _, m in answers)
        return out


def own_model_entry(reply: Message | None) -> dict:
    """A ``per_partner`` entry's scores from a site's report: ``test`` (NaN without a split file),
    its secondary scores, and ``valid`` on the partner's own validation molecules."""
    nan = float("nan")
    if reply is None:
        return dict(test=nan, valid=nan)
    m = reply.metrics
    second = {k: float(v) for k, v in m.items() if k.startswith("test_")}
    if "test_by_task" in reply.config:
        second["test_by_task"] = [nan if v is None else float(v) for v in reply.config["test_by_task"]]
    return dict(test=float(m.get("test", nan)), **second, valid=float(m.get("own_valid", nan)))
