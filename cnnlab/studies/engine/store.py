"""A study's saved state as the engine knows it: the one place that names and reads the study's
and its trials' attributes that every study kind shares (the spec it was made from, the unit
of work each trial runs, who runs it, why it failed). Each study kind subclasses ``Store``
with its own attributes (``ablations.store``, ``searches.store``); no other module touches
``user_attrs``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from cnnlab.errors import CnnlabError, Refused
from cnnlab.outputs.ownership import owner_id

# Trial attributes, one name each (a dashboard shows them under these names).
KEY = "key"              # the unit of work: "<arm> | seed=<n>" (ablation), "slot <n>" (search)
WORKER = "worker"        # host:pid of the process that runs (or ran) the trial
HEARTBEAT = "heartbeat"  # Unix time of that worker's last sign of life
REASON = "reason"        # why the trial failed or was pruned
NOTE = "note"            # the trial ran nothing (a lost race for queued work)
LEGACY_REASON = "error"  # cnnlab 0.1 stored an ablation's failure here
# Study attributes.
SPEC = "spec"            # the spec (and preset) the study was made from
PRESET = "preset"        # in the spec attribute: "quick" or "full"
WANDB_STEP = "wandb_step"  # the step of the summary run's latest tables
PINS = "pinned_sha256"   # {what (an arm's data, its resolved config): SHA-256}: trials must match

DATA_CHANGED = ("the data it began with (or the same data.root, run from the folder it began "
                "in), or a new study: another --out / --storage")
CONFIG_CHANGED = "the configs: files as they were when the study began, or a new study"

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # pruned: diverged or stopped; not redone
TAKEN = (*FINISHED, TrialState.WAITING, TrialState.RUNNING)  # work that is done or on its way
PENDING = ("waiting", "running")  # what ``Store.incomplete`` says of work on its way
NO_ATTEMPT = "no attempt ran it (each deferred to another copy of the same work)"


Pin = tuple[str, str, str]  # what is pinned, its SHA-256, what the user may do when it changed


def _check_pins(study: optuna.Study, pins: Sequence[Pin]) -> dict[str, str]:
    """The pins stored so far, after checking that none of ``pins`` differs from them."""
    pinned = dict(study.user_attrs.get(PINS, {}))
    for what, sha, allowed in pins:
        if pinned.get(what, sha) != sha:
            raise Refused(f"study {study.study_name!r}: {what} changed since the study pinned it "
                          f"(sha256 {pinned[what][:12]}… now {sha[:12]}…); allowed: {allowed}")
    return pinned


def pin_all(study: optuna.Study, pins: Sequence[Pin]) -> None:
    """Pin each thing (a dataset's content, an arm's resolved config) to its SHA-256 when
    first seen; later, a different one stops the study with one line: trials on other data
    or another config would be mixed into one report (a digest of a path or of the spec
    misses a file replaced under the same name)."""
    pinned = _check_pins(study, pins)
    new = {what: sha for what, sha, _ in pins if what not in pinned}
    if new:
        study.set_user_attr(PINS, {**pinned, **new})


class Store:
    """An ``optuna.Study`` read and written through named attributes."""

    QUEUED: ClassVar[tuple[str, ...]] = (KEY,)  # what a lost trial's requeued copy keeps

    def __init__(self, study: optuna.Study) -> None:
        self.study = study

    @property
    def name(self) -> str:
        return self.study.study_name

    def trials(self, *states: TrialState) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states or None)

    def pin(self, *pins: Pin) -> None:
        """``pin_all`` on this study: before every trial, what it runs is what was pinned."""
        pin_all(self.study, pins)

    def unfinished(self) -> bool:
        """Some of the study's trials are queued or running."""
        return bool(self.trials(TrialState.WAITING, TrialState.RUNNING))

    @property
    def spec_attrs(self) -> dict[str, Any]:
        return dict(self.study.user_attrs.get(SPEC, {}))

    @property
    def quick(self) -> bool:
        return self.spec_attrs.get(PRESET) == "quick"

    @classmethod
    def create(cls, storage: optuna.storages.BaseStorage, name: str, direction: str,
               attrs: dict[str, Any], mutable: tuple[str, ...] = (), added: tuple[str, ...] = (),
               grow_only: tuple[str, ...] = (), pins: Sequence[Pin] = ()) -> optuna.Study:
        """Create the study (or load it) and check it was made from the same ``attrs`` (the
        spec).

        Keys in ``mutable`` (what the report reads, how many seeds) may change between runs:
        the stored spec takes the new values. Older studies lack some of them, which is no
        difference. Keys in ``added`` are checked once stored; a study made before them gets
        them. Counts in ``grow_only`` (seeds per arm) may rise but never fall: a smaller one
        says so and changes nothing (``--seeds 5`` used to rewrite a 6-seed study's spec to 5).
        ``pins`` are checked before anything is written (``pin_all``), then stored.
        """
        try:  # load first: a journal records even a refused create, and a refusal writes nothing
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            study = optuna.create_study(storage=storage, study_name=name,
                                        direction=StudyDirection[direction.upper()],
                                        load_if_exists=True)
        stored = study.user_attrs.get(SPEC)
        for key in grow_only:
            had = stored.get(key) if stored is not None else None
            if isinstance(had, int) and had > attrs.get(key, 0):
                print(f"cnnlab: note: study {name!r} has {had} {key} per arm; {attrs[key]} "
                      f"changes nothing ({key} are only added; more with --{key} N > {had})",
                      file=sys.stderr)
                attrs = {**attrs, key: had}
        skip = set(mutable) | {k for k in added if stored is not None and k not in stored}
        fixed = {k: v for k, v in attrs.items() if k not in skip}
        if stored is not None and {k: v for k, v in stored.items() if k not in skip} != fixed:
            same_spec = all(stored.get(k) == v for k, v in fixed.items() if k not in added)
            why = ("its arms' configs resolve differently now (a configs: file or the defaults "
                   "changed since)" if same_spec else "a different spec")
            raise CnnlabError(f"study {name!r} in this storage was made from {why}; allowed: "
                              "the same spec and settings to resume it, or another --out / "
                              "--storage")
        _check_pins(study, pins)
        if stored != attrs:
            study.set_user_attr(SPEC, attrs)
        pin_all(study, pins)
        return study

    @staticmethod
    def load(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
        try:
            return optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
            raise CnnlabError(f"study {name!r} is not in this storage; allowed: "
                              f"{', '.join(names) or 'none yet — run cnnlab ablate first'}"
                              ) from None

    # -- the unit of work --------------------------------------------------------------------
    @staticmethod
    def key(trial: FrozenTrial | optuna.Trial) -> str | None:
        return trial.user_attrs.get(KEY)

    def taken(self) -> set[str]:
        """The keys of work finished, queued or running."""
        return {k for t in self.trials(*TAKEN) if (k := self.key(t)) is not None}

    def finished_keys(self, trials: list[FrozenTrial] | None = None) -> int:
        return len({k for t in (self.trials() if trials is None else trials)
                    if t.state in FINISHED and (k := self.key(t)) is not None})

    def enqueue(self, key: str, params: dict[str, Any] | None = None, **attrs: Any) -> None:
        self.study.enqueue_trial(params or {}, user_attrs={KEY: key, **attrs})

    def requeue(self, trial: FrozenTrial) -> None:
        """Queue a lost trial again with its parameters and its work attributes."""
        self.study.enqueue_trial(trial.params, user_attrs={
            k: trial.user_attrs[k] for k in self.QUEUED if k in trial.user_attrs})

    def taken_elsewhere(self, trial: optuna.Trial, key: str) -> bool:
        """Another trial finished ``key``, or holds it (running or queued) and came first. Two
        commands that queue the same work at once queue it twice, and two workers that pop the
        copies at once each see the other running: the lower trial number goes on, so exactly
        one of them runs it (each deferring to the other lost the work: two FAIL trials and
        no result)."""
        return any(self.key(t) == key and (t.state in FINISHED or t.number < trial.number)
                   for t in self.trials(*TAKEN))

    def incomplete(self) -> dict[str, str]:
        """Each unit of work the study holds with no finished trial: why (the last attempt's
        failure, queued, running, or no attempt that ran)."""
        why: dict[str, str] = {}
        done = set()
        for t in self.trials():
            key = self.key(t)
            if key is None:
                continue
            if t.state in FINISHED:
                done.add(key)
            elif t.state in (TrialState.WAITING, TrialState.RUNNING):
                why[key] = t.state.name.lower()
            elif not self.noted(t) or key not in why:
                why[key] = self.reason(t) or (NO_ATTEMPT if self.noted(t) else "lost")
        return {k: v for k, v in why.items() if k not in done}

    # -- who runs it, and how it ended ---------------------------------------------------------
    @staticmethod
    def worker(trial: FrozenTrial) -> str | None:
        return trial.user_attrs.get(WORKER)

    @staticmethod
    def heartbeat(trial: FrozenTrial) -> float | None:
        return trial.user_attrs.get(HEARTBEAT)

    @staticmethod
    def claim(trial: optuna.Trial) -> None:
        """This process runs ``trial``: its worker id and a first heartbeat."""
        trial.set_user_attr(WORKER, owner_id())
        trial.set_user_attr(HEARTBEAT, time.time())

    @staticmethod
    def beat(trial: optuna.Trial) -> None:
        trial.set_user_attr(HEARTBEAT, time.time())

    @staticmethod
    def ran_nothing(trial: optuna.Trial, why: str) -> None:
        trial.set_user_attr(WORKER, owner_id())
        trial.set_user_attr(NOTE, why)

    @staticmethod
    def noted(trial: FrozenTrial) -> bool:
        """The trial ran nothing (a lost race for queued work): not a result, not a failure."""
        return NOTE in trial.user_attrs

    @staticmethod
    def fail_with(trial: optuna.Trial, reason: str) -> None:
        trial.set_user_attr(REASON, reason)

    @staticmethod
    def reason(trial: FrozenTrial) -> str | None:
        return trial.user_attrs.get(REASON) or trial.user_attrs.get(LEGACY_REASON)

    # -- the study's W&B summary run -----------------------------------------------------------
    def summary_step(self) -> int:
        """The next step of the study's one W&B summary run: each rerun logs after the last,
        so after ``wandb sync`` the dashboard shows the newest tables (offline runs cannot ask)."""
        step = self.study.user_attrs.get(WANDB_STEP, -1) + 1
        self.study.set_user_attr(WANDB_STEP, step)
        return step
