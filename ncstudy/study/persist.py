"""What ncstudy saves beside Tune's experiment state, as plain versioned data a newer ncstudy reads.

A study's folder (``<storage>/<study>/``) holds Tune's experiment state and ncstudy's own:

=================================  ==============================================================
file                               what, and who reads it on ``--resume``
=================================  ==============================================================
``ncstudy_study.json``             the study as first launched and the launch's tracking URI
                                   (:func:`study_text` / :func:`read_study`; JSON, ``version``)
``experiment_state-*.json``        Tune's trials (ncstudy reads their ids, configs and status:
                                   :func:`saved_run`)
``callback-states-*.pkl``          the callbacks' ``get_state()``: plain dicts (each with its
                                   ``version``), never an ncstudy object (checked on load:
                                   :func:`saved_run` refuses a state that names ncstudy's code)
searcher state, and the trials     Tune's; the only ncstudy objects in them are the trial name and
and ``stop`` object in             folder functions and the study's ``stop`` object
``experiment_state-*.json``        (:mod:`ncstudy.study.tune_state`), saved as ``load`` + plain data
``optuna_journal.log``             ``searcher: optuna``: the Optuna study, unless the study file
                                   gives ``searcher_storage`` (:mod:`ncstudy.study.search`;
                                   Tune's searcher state then holds a JSON record only)
``tuner.pkl``                      Tune's pickle of the first launch's objects: never read.
                                   ``--resume`` rebuilds the study's Tune objects from
                                   ``ncstudy_study.json`` with the code installed now
=================================  ==============================================================

So a study survives an upgrade of ncstudy between a crash and its resume, whatever modules moved,
as long as :func:`ncstudy.study.tune_state.load` keeps its name (the one ncstudy path Tune's
saved state names). What this ncstudy cannot read -- a state written by a newer version,
or one that names ncstudy's code -- is refused before anything starts (:class:`SavedStateError`,
exit status 2), with what to do.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import pickle
from dataclasses import dataclass, field
from typing import Any, Iterator

from ncstudy.errors import InputError

STUDY_FILE = "ncstudy_study.json"  # the study as first launched, beside Tune's experiment state
STUDY_FILE_VERSION = 1
EXPERIMENT_STATE = "experiment_state-"  # Tune's files: experiment_state-<session>.json
CALLBACK_STATES = "callback-states-"  # callback-states-<session>.pkl
WHAT_TO_DO = ("resume it with the ncstudy version that started it, or start the study again under "
              "another name (or in another --storage)")


class SavedStateError(InputError):
    """A study's saved state this ncstudy cannot read (exit status 2)."""


# -- files on Tune's storage (a local folder or a URI) -------------------------------------------------
def _fs(path: str):
    import pyarrow.fs as pafs

    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), path


def read_bytes(path: str) -> bytes | None:
    import pyarrow.fs as pafs

    fs, p = _fs(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    fs, p = _fs(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)


def names_in(folder: str) -> list[str]:
    """File names directly in ``folder`` (none when it does not exist)."""
    import pyarrow.fs as pafs

    fs, p = _fs(folder)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    return [i.base_name for i in fs.get_file_info(pafs.FileSelector(p)) if i.type == pafs.FileType.File]


def newest(folder: str, prefix: str) -> str | None:
    """The newest of Tune's ``<prefix><session time>...`` files in ``folder`` (Tune's own rule: the
    largest name)."""
    found = sorted(n for n in names_in(folder) if n.startswith(prefix) and not n.startswith("tmp"))
    return f"{folder.rstrip('/')}/{found[-1]}" if found else None


# -- the study file ------------------------------------------------------------------------------------
def study_text(spec: Any, tracking_uri: str | None) -> str:
    """``ncstudy_study.json``: the study as first launched and where it is tracked."""
    return json.dumps({"version": STUDY_FILE_VERSION, "study": spec.model_dump(mode="json"),
                       "launch": {"tracking_uri": tracking_uri}}, indent=1)


@dataclass
class SavedStudy:
    spec: Any  # StudySpec
    tracking_uri: str | None  # None: a study file written before ncstudy kept it


def read_study(text: str, where: str) -> SavedStudy:
    """A study file of any version this ncstudy reads (version 0: the bare study, before ncstudy
    kept a version), else :class:`SavedStateError`."""
    from pydantic import ValidationError

    from ncstudy.study.spec import StudySpec

    try:
        data = json.loads(text)
    except ValueError as e:
        raise SavedStateError(f"--resume: {where} is not a study file ({e}); {WHAT_TO_DO}") from None
    if not isinstance(data, dict):
        raise SavedStateError(f"--resume: {where} is not a study file; {WHAT_TO_DO}")
    version = data.get("version", 0) if "study" in data else 0
    if not isinstance(version, int) or version > STUDY_FILE_VERSION:
        raise SavedStateError(f"--resume: {where} was written by a newer ncstudy (study file version {version}; "
                              f"this one reads up to {STUDY_FILE_VERSION}); {WHAT_TO_DO}")
    body = data["study"] if version else data
    try:
        spec = StudySpec.model_validate(body)
    except ValidationError as e:
        raise SavedStateError(f"--resume: this ncstudy cannot read the study saved in {where}: "
                              f"{e.errors()[0]['loc']}: {e.errors()[0]['msg']}; {WHAT_TO_DO}") from None
    uri = (data.get("launch") or {}).get("tracking_uri") if version else None
    return SavedStudy(spec, uri)


# -- Tune's saved state, read as plain data ------------------------------------------------------------
class _PlainUnpickler(pickle.Unpickler):
    """Loads plain data only: anything that names ncstudy's code is refused (it would tie the saved
    state to this release's module layout)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "ncstudy" or module.startswith("ncstudy."):
            raise SavedStateError(f"it names ncstudy's code ({module}.{name})")
        return super().find_class(module, name)


def load_plain(data: bytes, where: str) -> Any:
    try:
        return _PlainUnpickler(_BytesIO(data)).load()
    except SavedStateError as e:
        raise SavedStateError(f"--resume: the saved state {where} is not plain data: {e}; {WHAT_TO_DO}") from None
    except Exception as e:  # noqa: BLE001 - a module this Python cannot import, a truncated file, ...
        raise SavedStateError(f"--resume: cannot read the saved state {where} ({type(e).__name__}: {e}); "
                              f"{WHAT_TO_DO}") from None


def _BytesIO(data: bytes):  # noqa: N802 - io.BytesIO, imported late
    import io

    return io.BytesIO(data)


@dataclass
class SavedTrial:
    trial_id: str
    config: dict[str, Any]
    status: str  # Tune's: PENDING, RUNNING, PAUSED, TERMINATED, ERROR


@dataclass
class SavedRun:
    """What a resume finds of an earlier launch in Tune's saved state."""

    state_file: str | None = None  # newest experiment_state-*.json
    trials: list[SavedTrial] = field(default_factory=list)
    callbacks: dict[int, Any] = field(default_factory=dict)  # index in the callback list -> get_state()
    callbacks_file: str | None = None


def saved_run(experiment_path: str) -> SavedRun:
    """Tune's newest saved experiment state and callback states in ``experiment_path``, as plain
    data (no Tune or ncstudy object is unpickled from the experiment state)."""
    out = SavedRun()
    state = newest(experiment_path, EXPERIMENT_STATE)
    if state is not None:
        raw = read_bytes(state)
        try:
            data = json.loads(raw or b"")
            for trial_json, _meta in data["trial_data"]:
                t = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
                cfg = t.get("config")
                out.trials.append(SavedTrial(str(t["trial_id"]), cfg if isinstance(cfg, dict) else {},
                                             str(t.get("status", ""))))
        except (ValueError, KeyError, TypeError) as e:
            raise SavedStateError(f"--resume: Tune's saved state {state} cannot be read ({type(e).__name__}: {e}); "
                                  f"{WHAT_TO_DO}") from None
        out.state_file = state
    cb = newest(experiment_path, CALLBACK_STATES)
    if cb is not None:
        states = load_plain(read_bytes(cb) or b"", cb)
        if isinstance(states, dict):
            out.callbacks = {int(k): v for k, v in states.items()}
        out.callbacks_file = cb
    return out


def check_versions(callbacks: list, saved: SavedRun) -> None:
    """Each saved callback state is one its callback (an instance or a class, in the order of the
    study's callback list) reads: a callback with ``STATE_VERSION`` reads states up to that version
    (a state without one is version 0)."""
    for i, cb in enumerate(callbacks):
        state, top = saved.callbacks.get(i), getattr(cb, "STATE_VERSION", None)
        if top is None or not isinstance(state, dict):
            continue
        v = state.get("version", 0)
        if not isinstance(v, int) or v > top:
            name = cb.__name__ if isinstance(cb, type) else type(cb).__name__
            raise SavedStateError(f"--resume: {name}'s saved state in {saved.callbacks_file} was written "
                                  f"by a newer ncstudy (version {v}; this one reads up to {top}); {WHAT_TO_DO}")


#: The stopper of the study whose Tune run is starting in this thread (:func:`live_stopper`): the
#: one object a resumed Tune run's restored ``stop`` object
#: (:class:`~ncstudy.study.tune_state.StudyStopper`) is linked to.
_LIVE_STOPPER: contextvars.ContextVar = contextvars.ContextVar("ncstudy_live_stopper", default=None)


@contextlib.contextmanager
def live_stopper(stopper: Any) -> Iterator[None]:
    """While a study's Tune run starts and runs: what its restored ``stop`` object links to."""
    token = _LIVE_STOPPER.set(stopper)
    try:
        yield
    finally:
        _LIVE_STOPPER.reset(token)
