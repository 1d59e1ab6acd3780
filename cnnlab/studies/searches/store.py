"""A search's saved state: the only code that names, writes and reads a search study's
attributes (its spec) and its trials' (the slot each runs, its folds' scores and epochs, the
spread over folds).
"""

from __future__ import annotations

import hashlib

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from cnnlab.studies.engine.storage import open_storage
from cnnlab.studies.engine.store import CONFIG_CHANGED, DATA_CHANGED, PRESET, TAKEN, Store
from cnnlab.studies.searches.spec import PRUNERS, SAMPLERS, SearchSpec

FOLD_SCORES, FOLD_EPOCHS, CV_STD = "fold_scores", "fold_epochs", "cv_std"  # trial attributes


class SearchStore(Store):
    """One search study: its spec, its queued slots and each trial's folds."""

    @classmethod
    def open(cls, spec: SearchSpec, quick: bool, storage: optuna.storages.BaseStorage,
             name: str, steps: int, worker: int = 0) -> SearchStore:
        """The study (created once; a different spec is refused) with its sampler and pruner
        (``steps``: the intermediate steps a trial reports). The sampler's seed comes from
        the spec's, the worker and the number of configurations already drawn (trials with
        parameters, whatever their state): a resumed or extended search goes on exploring
        (its history is the storage) instead of proposing the configurations it already ran.
        Counting every stored trial repeated one: slots are queued up front, so a run killed
        before it queued or lost anything left the count as it found it, and the next run
        drew its first configuration again."""
        attrs = {**spec.to_dict(), PRESET: "quick" if quick else "full"}
        study = cls.create(storage, name, "maximize", attrs)
        drawn = sum(bool(t.params) for t in study.get_trials(deepcopy=False))
        seed = np.random.SeedSequence([spec.sampler.get("seed", 0), worker, drawn]
                                      ).generate_state(1)[0]
        sampler = SAMPLERS[spec.sampler["name"]](int(seed))
        pruner = PRUNERS[spec.pruner["name"]](spec.pruner, steps)
        return cls(optuna.load_study(study_name=name, storage=storage, sampler=sampler,
                                     pruner=pruner))

    @staticmethod
    def stored_spec(url: str, name: str) -> tuple[SearchSpec, bool]:
        """The spec and preset a search was made from (a worker opens it with these)."""
        store = Store(Store.load(open_storage(url), name))
        return SearchSpec.from_dict(store.spec_attrs), store.quick

    def pin_run(self, config: str, data: str, data_sha: str) -> None:
        """Pin (or check) what the search's trials and refit run: ``config``, the YAML of the
        base config its ``configs:`` files resolve to, and the content (``data_sha``) of the
        data named ``data``."""
        self.pin(("the resolved base config", hashlib.sha256(config.encode()).hexdigest(),
                  CONFIG_CHANGED), (f"the data ({data})", data_sha, DATA_CHANGED))

    def queue_slots(self, target: int) -> int:
        """Queue empty slots until finished, running and queued trials number ``target``;
        returns how many. Failed trials leave their slot free, so a rerun tries again."""
        taken = {self.key(t) or f"#{t.number}" for t in self.trials(*TAKEN)}
        free = (f"slot {i}" for i in range(10**9) if f"slot {i}" not in taken)
        missing = max(target - len(taken), 0)
        for _ in range(missing):
            self.enqueue(next(free))
        return missing

    def ran(self) -> list[FrozenTrial]:
        """Every trial that ran something (not one that lost a race for queued work)."""
        return [t for t in self.trials() if not self.noted(t)]

    @staticmethod
    def record_folds(trial: optuna.Trial, scores: list[float], epochs: int) -> None:
        trial.set_user_attr(FOLD_EPOCHS, epochs)
        if scores:
            trial.set_user_attr(FOLD_SCORES, scores)

    @staticmethod
    def record_spread(trial: optuna.Trial, std: float) -> None:
        trial.set_user_attr(CV_STD, std)

    @staticmethod
    def fold_scores(trial: FrozenTrial) -> list[float]:
        return list(trial.user_attrs.get(FOLD_SCORES, []))

    @staticmethod
    def fold_epochs(trial: FrozenTrial) -> int | None:
        return trial.user_attrs.get(FOLD_EPOCHS)

    @staticmethod
    def cv_std(trial: FrozenTrial) -> float | None:
        return trial.user_attrs.get(CV_STD)
