"""``OnsetStopper``: the collapse-onset stopper as a ``ray.tune.Stopper``, composable with any
scheduler (ASHA, median stopping, FIFO) and any searcher.

    from ncstudy.adapters.ray_tune import OnsetStopper

    stopper = OnsetStopper(budget="epochs")          # each trial's budget: its config key `epochs`
    tuner = tune.Tuner(train_fn, run_config=tune.RunConfig(stop=stopper, callbacks=[stopper]))

The trial reports its NC metrics at every evaluation (``ncstudy.metrics.measure(model, loader)``
gives them from any classifier). At every result the stopper forecasts the trial's onset and writes
the forecast **into that result** -- ``t_nc_estimate`` (the forecast, or the observed T_NC once
reached), ``t_nc_low``/``t_nc_high``, ``p_onset`` and, when it stops the trial, ``stop_reason``
and the collapse-time objective -- so ``result.json``, ``ResultGrid.get_best_result``,
``ExperimentAnalysis``, Ray's own ``MLflowLoggerCallback`` and ncstudy's tracking all see the
same value. (Tune hands the stopper the result it then stores and passes to the callbacks:
``ray/tune/execution/tune_controller.py``, ``_process_trial_result``; ``tests/test_ray_tune.py``
pins that down.)

Passing the stopper in ``callbacks`` too is optional: it then saves its state with Tune's
experiment state (a ``Tuner.restore`` continues with what it learnt) and learns from trials that
end on their own at once. That state is incremental: what does not change once written -- a
finished trial, a run learnt -- goes once into journal files under ``<experiment>/fnstar_state/``
on Tune's storage, and Tune's saved state carries only the running trials and how much of the
journal counts (see :meth:`OnsetStopperCore.get_state <ncstudy.adapters.stopper_core.OnsetStopperCore.get_state>`),
so a save costs the same at trial 10 and trial 10,000.
"""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Callable, Mapping, Sequence

from ray.tune import Callback, Stopper

from ncstudy.adapters.metric_names import MetricNames
from ncstudy.adapters.stopper_core import LEARN_BATCH, MAX_POOL, STATE_VERSION, OnsetStopperCore, adapter_settings
from ncstudy.deprecation import renamed_class
from ncstudy.forecast import Calibration
from ncstudy.forecast.settings import DEFAULT_FORECASTER, DEFAULT_POLICY, ForecasterName, Mode, Policy, StopperSettings
from ncstudy.onset import TERMINAL_ACC, OnsetRule
from ncstudy.records import COLLAPSE_EPOCH


class OnsetStopper(Stopper, Callback):
    """Forecast every trial's collapse onset; stop by ``policy`` and ``mode`` (the arguments are
    :class:`~ncstudy.adapters.optuna_pruner.OnsetPruner`'s, with ``config`` for ``params``; their
    meaning and defaults: :class:`~ncstudy.forecast.settings.StopperSettings`). In a search
    (the default for the collapse-time objective) a trial that cannot beat the earliest onset seen so
    far is stopped (``capped``, ``cannot_win``); in a sweep only at a trusted forecast or its onset.

    ``settings``: a whole :class:`~ncstudy.forecast.settings.StopperSettings` (what a study file
    builds) in place of the arguments it holds (policy, forecaster, mode, prior by name, objective,
    rule, terminal_acc, learn, forecaster_options, min_observations), which must then be left at
    their defaults. ``objective``: the collapse-time metric a stopped trial's result carries (None:
    leave the trial's own). ``learn_batch``, ``max_pool``: how learnt runs join the calibration
    (:class:`~ncstudy.adapters.stopper_core.OnsetStopperCore`)."""

    #: the newest saved state (``get_state``) this code reads: 1, the whole stopper; 2, a journal
    #: reference (both as plain JSON; the search mode's fields, absent in older states, default)
    STATE_VERSION = STATE_VERSION

    def __init__(self, policy: Policy = DEFAULT_POLICY, forecaster: ForecasterName = DEFAULT_FORECASTER, *,
                 mode: Mode | None = None, budget: int | str | Callable[[Mapping[str, Any]], int] | None = None,
                 metrics: MetricNames | Mapping[str, str | None] | None = None, prior: str | Calibration = "corpus",
                 group_key: Callable[[Mapping[str, Any]], str] | Sequence[str] | None = None,
                 objective: str | None = COLLAPSE_EPOCH, rule: OnsetRule = OnsetRule(),
                 terminal_acc: float = TERMINAL_ACC,
                 learn: bool = True, forecaster_options: Mapping[str, Any] | None = None,
                 min_observations: int = 3, learn_batch: float = LEARN_BATCH, max_pool: int | None = MAX_POOL,
                 settings: StopperSettings | None = None) -> None:
        where = type(self).__name__
        settings = adapter_settings(
            where, settings, policy=policy, forecaster=forecaster, mode=mode, objective=objective, rule=rule,
            prior=prior if isinstance(prior, str) else "corpus", terminal_acc=terminal_acc, learn=learn,
            min_observations=min_observations, options=dict(forecaster_options or {}))
        self.core = OnsetStopperCore(settings, calibration=prior if isinstance(prior, Calibration) else None,
                                     budget=budget, metrics=metrics, group_key=group_key, learn_batch=learn_batch,
                                     max_pool=max_pool, where=where)
        self.core.open_store = FsStore.at

    # -- Stopper ----------------------------------------------------------------------------------
    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return self.core.observe(str(trial_id), result, result.get("config") or {})

    def stop_all(self) -> bool:
        return False

    # -- Callback (optional) -------------------------------------------------------------------------
    def _attach(self, trial) -> None:
        if self.core.store is None:
            store = FsStore.of_trial(trial)
            if store is not None:
                self.core.attach(store)

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._attach(trial)

    def on_trial_restore(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._attach(trial)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._attach(trial)
        self.core.complete(trial.trial_id, trial.last_result or {})

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._attach(trial)
        self.core.complete(trial.trial_id, trial.last_result or {}, error=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.core.stopper.commit()  # learnt runs still waiting for a batch join the calibration

    def get_state(self) -> dict[str, Any]:
        return self.core.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.core.set_state(state)

    # -- queries -------------------------------------------------------------------------------------
    @property
    def calibration(self) -> Calibration:
        return self.core.stopper.calibration

    def describe(self) -> str:
        return self.core.describe()


#: The former name (constructing it warns, naming :class:`OnsetStopper`).
FnStarStopper = renamed_class(OnsetStopper, "FnStarStopper")

STATE_DIR = "fnstar_state"


class FsStore:
    """A :class:`~ncstudy.adapters.state_store.StateStore` on Tune's storage (a local folder, NFS, S3, GCS):
    ``<experiment>/fnstar_state/`` through the storage's pyarrow file system."""

    def __init__(self, fs, path: str, location: str) -> None:
        self.fs, self.path, self.location = fs, path, location

    @classmethod
    def of_trial(cls, trial) -> "FsStore | None":
        storage = getattr(trial, "storage", None)
        if storage is None:
            return None
        fs = storage.storage_filesystem
        path = str(PurePosixPath(storage.experiment_fs_path, STATE_DIR))
        kind = getattr(fs, "type_name", "local")
        return cls(fs, path, path if kind == "local" else f"{kind}://{path}")

    @classmethod
    def at(cls, location: str) -> "FsStore":
        import pyarrow.fs as pafs

        if "://" in location:
            fs, path = pafs.FileSystem.from_uri(location)
        else:
            fs, path = pafs.LocalFileSystem(), location
        return cls(fs, path, location)

    def write(self, name: str, data: bytes) -> None:
        self.fs.create_dir(self.path, recursive=True)
        with self.fs.open_output_stream(f"{self.path}/{name}") as f:
            f.write(data)

    def read(self, name: str) -> bytes | None:
        import pyarrow.fs as pafs

        p = f"{self.path}/{name}"
        if self.fs.get_file_info(p).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(p) as f:
            return f.read()
