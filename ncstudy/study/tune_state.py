"""The ncstudy objects Tune saves in its state (searcher state, ``experiment_state-*.json``), each
pickled as ``load(kind, version, plain data)`` -- never by its class's module path, so a newer
ncstudy with its modules moved still reads them (:mod:`ncstudy.study.persist` has the whole list of
what a study saves).

:func:`load` is the one ncstudy name in Tune's saved state: keep it here, or leave an alias here
when it moves.
"""
from __future__ import annotations

from typing import Any

from ray.tune import Stopper

from ncstudy.study.persist import _LIVE_STOPPER, WHAT_TO_DO, SavedStateError


def _namer(data: dict[str, Any]) -> "TrialNamer":
    from ncstudy.study.spec import StudySpec

    return TrialNamer(StudySpec.model_validate_json(data["spec"]))


#: kind -> (newest version this ncstudy writes, builder from the plain data)
KINDS = {"trial_namer": (1, _namer), "trial_dirname": (1, lambda data: TrialDirname()),
         "study_stopper": (1, lambda data: StudyStopper(_LIVE_STOPPER.get()))}


def load(kind: str, version: int, data: dict[str, Any]) -> Any:
    """Rebuild an ncstudy object saved in Tune's state as ``(kind, version, plain data)``; one
    written by a newer ncstudy is refused (:class:`~ncstudy.study.persist.SavedStateError`)."""
    if kind not in KINDS or version > KINDS[kind][0]:
        raise SavedStateError(f"Tune's saved state holds an ncstudy '{kind}' of version {version}, written by a "
                              f"newer ncstudy; {WHAT_TO_DO}")
    return KINDS[kind][1](data)


class TrialNamer:
    """``trial -> readable name`` (Tune's ``trial_name_creator``, MLflow run names, progress table)."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def __call__(self, trial: Any) -> str:
        return self.spec.name_of_trial(trial.trial_id, trial.config)

    def __reduce__(self) -> tuple:
        return load, ("trial_namer", KINDS["trial_namer"][0], {"spec": self.spec.model_dump_json()})


class TrialDirname:
    """``trial -> trial_<id>``: a trial's folder under the study's (Tune's ``trial_dirname_creator``)."""

    def __call__(self, trial: Any) -> str:
        return f"trial_{trial.trial_id}"

    def __reduce__(self) -> tuple:
        return load, ("trial_dirname", KINDS["trial_dirname"][0], {})


class StudyStopper(Stopper):
    """The ``stop`` object a study hands Tune: it calls the study's stopper (the fn* stopper, which
    is also one of Tune's callbacks). Tune pickles its ``stop`` object into every
    ``experiment_state-*.json`` and, on a resume, puts that copy in place of the one it was given:
    a copy that would decide the stops while the callback -- given Tune's saved callback state --
    kept the trials' records, and a pickle that names ncstudy's modules. This one is saved as plain
    data and restored as a link to the resumed study's own stopper
    (:func:`ncstudy.study.persist.live_stopper`)."""

    def __init__(self, target: Any = None) -> None:
        self.target = target

    def __call__(self, trial_id: str, result: dict) -> bool:
        return bool(self.target(trial_id, result)) if self.target is not None else False

    def stop_all(self) -> bool:
        return bool(self.target.stop_all()) if self.target is not None else False

    def __reduce__(self) -> tuple:
        return load, ("study_stopper", KINDS["study_stopper"][0], {})
