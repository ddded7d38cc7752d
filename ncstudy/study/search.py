"""A study's Optuna search kept in a persistent storage (``searcher: optuna``), so it survives its driver.

The Optuna study -- every trial Optuna proposed, its parameters, state and value -- lives in an
Optuna storage, not in Tune's pickled searcher state: by default a journal file beside Tune's
results (``<storage>/<study>/optuna_journal.log``, :data:`JOURNAL_FILE`), else the study file's
``searcher_storage`` (a journal file path on a shared file system, or an RDB URL such as the
cluster's PostgreSQL). Each Optuna trial carries the Tune trial id and the Tune experiment it
belongs to (:data:`TUNE_TRIAL_ATTR`, :data:`EXPERIMENT_ATTR`).

A launch (first, resumed, or another driver's on the same storage) loads the study from the storage
(:class:`StoredOptunaSearch`): the sampler sees every completed trial, the trials Tune resumes are
linked back to their Optuna trials, and the trials of this experiment that Tune will not resume
(asked for just before the driver died) are marked failed. The sampler's random state is not
restored from a pickle: a continuing search is seeded from the study's seed and the number of
trials the storage holds, so it never replays the first launch's random proposals. Tune's searcher
state file holds only a small JSON record (:meth:`StoredOptunaSearch.save`): nothing in it ties a
resume to this release's modules or to the Optuna version that wrote it.
"""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import optuna
from ray.tune.search.optuna import OptunaSearch

from ncstudy.errors import InputError

log = logging.getLogger(__name__)

JOURNAL_FILE = "optuna_journal.log"  # the default storage, in the study's folder beside Tune's state
TUNE_TRIAL_ATTR = "ncstudy.tune_trial_id"  # an Optuna trial's user attribute: the Tune trial it is
EXPERIMENT_ATTR = "ncstudy.experiment"  # ... and the Tune experiment (its path) that trial belongs to
STATE_VERSION = 1  # of the JSON record in Tune's searcher state file


def is_url(where: str) -> bool:
    return "://" in where


def shown(where: str) -> str:
    """A storage for messages: an RDB URL without its password."""
    if not is_url(where):
        return where
    from sqlalchemy.engine import make_url

    return make_url(where).render_as_string(hide_password=True)


def storage_location(searcher_storage: str | None, storage: str, experiment_path: str) -> str:
    """Where a study's Optuna search lives: ``searcher_storage`` (an RDB URL, or a journal file path;
    a relative one is taken from the ``--storage`` folder), else :data:`JOURNAL_FILE` in the study's
    folder. A journal file needs a local (or mounted) folder: with ``--storage`` a URI, give
    ``searcher_storage``."""
    if searcher_storage is not None and is_url(searcher_storage):
        return searcher_storage
    if storage.startswith("file://"):  # a local folder written as a URI
        storage, experiment_path = storage[len("file://"):], experiment_path[len("file://"):]
    remote = is_url(storage)
    if searcher_storage is None:
        if remote:
            raise InputError(f"searcher 'optuna' keeps its search in a journal file beside Tune's results, but "
                             f"--storage {storage} is not a local folder; set searcher_storage in the study file "
                             f"(a path on a shared file system, or an RDB URL such as postgresql+psycopg2://...)")
        return f"{experiment_path}/{JOURNAL_FILE}"
    p = Path(searcher_storage).expanduser()
    if not p.is_absolute():
        if remote:
            raise InputError(f"searcher_storage {searcher_storage}: a relative path is taken from --storage, and "
                             f"--storage {storage} is not a local folder; give an absolute path or an RDB URL")
        p = Path(storage) / p
    return str(p.resolve())


def check_storage(where: str, what: str = "searcher_storage") -> None:
    """Before anything starts (exit status 2 otherwise): a journal file can be written where it
    goes; an RDB URL's driver is installed and its database answers (within seconds)."""
    from ncstudy.study.preflight import check_writable, probe_database

    if not is_url(where):
        check_writable(where, what, folder=False)
    else:
        probe_database(where, what)


def open_storage(where: str) -> optuna.storages.BaseStorage:
    """The Optuna storage at ``where``: an RDB URL, or a journal file (its folder created)."""
    if is_url(where):
        return optuna.storages.RDBStorage(where, engine_kwargs={"pool_pre_ping": True})
    from optuna.storages.journal import JournalFileBackend

    Path(where).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(where))


def continuing_seed(seed: int, *counts: int) -> int:
    """The sampler's seed for a search that continues (``counts``: what it continues from): fixed by
    ``seed`` and them, and another random stream than the first launch's (seeded with ``seed``)."""
    import numpy as np

    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, 1, *counts]).generate_state(1)[0])


class StoredOptunaSearch(OptunaSearch):
    """Ray's ``OptunaSearch`` (TPE, seeded by ``seed``) on a persistent Optuna ``storage`` under
    ``study_name``. ``experiment``: this Tune experiment's path (its trials are marked with it);
    ``resumed``: the Tune trials (id -> Tune's saved status) this launch's Tune run continues."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_name: str, experiment: str, seed: int,
                 resumed: dict[str, str] | None = None, where: str = "") -> None:
        super().__init__(sampler=optuna.samplers.TPESampler(seed=seed), study_name=study_name, storage=storage)
        self._ncstudy = {"experiment": experiment, "seed": seed, "where": where, "resumed": dict(resumed or {})}

    # -- the study, loaded from the storage ---------------------------------------------------------
    def _setup_study(self, mode: str | list) -> None:
        super()._setup_study(mode)
        self._adopt()

    def _adopt(self) -> None:
        """Link this experiment's Optuna trials to the Tune trials that go on; fail the rest that
        were left running; reseed a sampler that continues a search."""
        study, own = self._ot_study, self._ncstudy
        continuing = {t for t, status in own["resumed"].items() if status != "TERMINATED"}
        trials = study.get_trials(deepcopy=False)
        for ft in trials:
            if ft.user_attrs.get(EXPERIMENT_ATTR) != own["experiment"]:
                continue  # another driver's trial on a shared search: its driver decides
            tid = ft.user_attrs.get(TUNE_TRIAL_ATTR)
            if ft.state.is_finished():
                self._completed_trials.add(tid)
            elif ft.state == optuna.trial.TrialState.RUNNING:
                if tid in continuing:
                    self._ot_trials[tid] = optuna.Trial(study, ft._trial_id)  # Optuna's handle on a live trial
                else:  # asked for just before the driver died: no Tune trial will report it
                    study.tell(ft.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        if trials or own["resumed"]:
            study.sampler = optuna.samplers.TPESampler(seed=continuing_seed(own["seed"], len(trials),
                                                                            len(own["resumed"])))

    def suggest(self, trial_id: str) -> dict | None:
        new = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            t = self._ot_trials[trial_id]
            t.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
            t.set_user_attr(EXPERIMENT_ATTR, self._ncstudy["experiment"])
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._ot_trials or trial_id in self._completed_trials:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._ot_trials or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
        else:  # a Tune trial whose Optuna trial the dead driver never marked: nothing to tell
            log.warning("trial %s: no Optuna trial in the search's storage; its result is not told", trial_id)

    # -- Tune's searcher state file: a record, not the search ----------------------------------------
    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"ncstudy_searcher": STATE_VERSION,
                                                     "study_name": self._study_name,
                                                     "storage": shown(self._ncstudy["where"])}))

    def restore(self, checkpoint_path: str) -> None:
        """The search is already loaded from its storage; a searcher state an older ncstudy wrote
        (Ray's pickle of an in-memory study) is copied into the storage once, when it is empty."""
        data = Path(checkpoint_path).read_bytes()
        if data.lstrip().startswith(b"{"):
            return
        if self._ot_study.get_trials(deepcopy=False):
            return
        try:
            old = pickle.loads(data)  # Ray's own file (OptunaSearch.save): optuna and Ray objects only
            legacy, tune_ids = old["_ot_study"], {t.number: tid for tid, t in old["_ot_trials"].items()}
            frozen = legacy.get_trials(deepcopy=False)
        except Exception as e:  # noqa: BLE001 - written by another Optuna or Ray: the search starts without it
            log.warning("the earlier launch's Optuna search (%s) cannot be read (%s: %s); the sampler goes on "
                        "without its history", checkpoint_path, type(e).__name__, e)
            return
        for ft in frozen:
            attrs = {**ft.user_attrs, EXPERIMENT_ATTR: self._ncstudy["experiment"]}
            if ft.number in tune_ids:
                attrs[TUNE_TRIAL_ATTR] = tune_ids[ft.number]
            self._ot_study.add_trial(optuna.trial.create_trial(
                state=ft.state, values=ft.values if ft.state == optuna.trial.TrialState.COMPLETE else None,
                params=ft.params, distributions=ft.distributions, user_attrs=attrs,
                intermediate_values=ft.intermediate_values))
        self._ot_trials, self._completed_trials = {}, set()
        self._adopt()


def build_searcher(study_name: str, seed: int, where: str, experiment: str, resumed: dict[str, str],
                   ) -> StoredOptunaSearch:
    """The study's search on its storage at ``where`` (:func:`storage_location`)."""
    return StoredOptunaSearch(open_storage(where), study_name, experiment, seed, resumed, where)


def stored_trials(where: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    """Every trial the search at ``where`` holds (for reports and tests)."""
    return optuna.load_study(study_name=study_name, storage=open_storage(where)).get_trials(deepcopy=False)

