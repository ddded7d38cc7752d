"""The stopper core the Ray Tune stopper and the Optuna pruner share: one core, the same defaults,
the same decisions, the same result fields and the same warnings. (Which result keys it reads:
:mod:`ncstudy.adapters.metric_names`; where its incremental state goes:
:mod:`ncstudy.adapters.state_store`.)

A trial reports a record per evaluation in ncstudy's vocabulary (:mod:`ncstudy.records`; other
names are mapped with ``metrics=`` or recognised as aliases, e.g. ``fn`` or ``train_acc``).
:class:`OnsetStopperCore` forecasts its onset, decides by policy, and gives the fields a result carries
(:data:`ncstudy.records.FORECAST_FIELDS` and, when it stops the trial, ``stop_reason`` and the
collapse-time objective). When it cannot do its job it says so, once: a trial that reports no NC1,
one that only ever reports phase 1, a group with no calibration yet, priors that match no group.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any, Callable, Sequence

from ncstudy.adapters.metric_names import MetricNames
from ncstudy.adapters.state_store import LocalStore, StateStore
from ncstudy.config import flatten
from ncstudy.deprecation import renamed_class
from ncstudy.forecast import Calibration, ForecastStopper, default_group_key, group_key_from
from ncstudy.forecast.calibration import default_prior
from ncstudy.forecast.settings import StopperSettings
from ncstudy.records import (
    ALIASES,
    COLLAPSE_EPOCH,
    EPOCH,
    NC1,
    PHASE,
    STOP_REASON,
    finite,
)

log = logging.getLogger("ncstudy.stopper")

#: the newest saved stopper state this code reads (OnsetStopper.STATE_VERSION)
STATE_VERSION = 2
_WARN_AFTER = 3  # results without NC1 before the stopper says why it cannot act
#: Learnt runs join the calibration in batches of this fraction of its pool, and the pool holds at
#: most MAX_POOL of the study's own runs (reservoir-sampled): the conformal forecaster's pool rebuild
#: costs O(pool^2), so without both a study's stopper CPU per trial grows with the number of trials
#: (``docs/performance.md``, "Scale").
LEARN_BATCH, MAX_POOL = 0.25, 100


def adapter_settings(where: str, settings: StopperSettings | None, **args: Any) -> StopperSettings:
    """The settings an adapter runs: its settings arguments (``args``: policy, forecaster, mode,
    prior by name, objective, rule, ...; options of other forecasters dropped), or ``settings`` when
    given -- then those arguments must be left at their defaults (a ``ValueError`` names the ones
    that are not)."""
    own = StopperSettings.of(where, lenient=True, **args)
    if settings is None:
        return own
    default = StopperSettings(objective=own.objective)  # the Optuna pruner has no objective to give
    given = [k for k in StopperSettings.model_fields if getattr(own, k) != getattr(default, k)]
    if given:
        raise ValueError(f"{where}: give either settings= or {', '.join(given)}, not both")
    return settings


class OnsetStopperCore:
    """One stopper over many trials, built from its :class:`~ncstudy.forecast.settings.StopperSettings`
    (policy, mode, forecaster and its options, prior, objective, onset rule, terminal accuracy,
    learning) and what only a running study has:

    ``calibration``: the pool to start from, replacing ``settings.prior`` (``"corpus"``: ncstudy's
    trajectory corpus; ``"none"``: nothing). ``budget``: each trial's last epoch -- an int, a
    (dotted) config key, or ``config -> int``; the conformal forecaster needs it. ``metrics``: the
    trial's result keys for ncstudy's names. ``group_key``: ``config -> group`` or config keys.
    ``learn_batch``, ``max_pool``: how learnt runs join the calibration
    (:class:`~ncstudy.forecast.stopper.ForecastStopper`; bounded by default, for large studies).
    ``where``: the name errors and warnings give (the adapter's).
    """

    def __init__(self, settings: StopperSettings | None = None, *, calibration: Calibration | None = None,
                 budget: int | str | Callable[[Mapping[str, Any]], int] | None = None,
                 metrics: MetricNames | Mapping[str, str | None] | None = None,
                 group_key: Callable[[Mapping[str, Any]], str] | Sequence[str] | None = None,
                 learn_batch: float = LEARN_BATCH, max_pool: int | None = MAX_POOL,
                 where: str = "OnsetStopper") -> None:
        st = self.settings = settings if settings is not None else StopperSettings()
        self.where = where
        self.names = MetricNames.of(metrics, where)
        self._name_pairs = [(k, n) for k, n in self.names.model_dump().items() if n is not None]
        if calibration is not None:
            cal = calibration
        else:
            cal = default_prior() if st.prior == "corpus" else Calibration()
        cal.min_observations = st.min_observations
        self.mode = st.resolved_mode()
        try:
            self.stopper = ForecastStopper(st.policy, st.forecaster, cal, st.rule, st.terminal_acc, st.learn,
                                           st.options, learn_batch=learn_batch, max_pool=max_pool, mode=self.mode)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if group_key is None:
            self.group_key: Callable[[Mapping[str, Any]], str] = default_group_key
        elif callable(group_key):
            self.group_key = group_key
        else:
            self.group_key = group_key_from(list(group_key))
        if budget is not None and not (callable(budget) or isinstance(budget, (int, str))):
            raise ValueError(f"{where}: budget: an int, a config key or a function of the config")
        self.budget, self.objective = budget, st.objective
        self.needs_budget = st.forecaster.startswith("conformal")
        self._warned: set[tuple[str, str]] = set()
        self._no_nc1: dict[str, int] = {}
        self._phase1: dict[str, bool] = {}  # trial -> only phase 1 seen so far
        self._keys: dict[str, tuple[str, int | None]] = {}  # running trial -> (group, budget): a config is fixed
        # incremental state (see get_state): where the journal goes, segments written, a restore to apply
        self.store: StateStore | None = None
        self.open_store: Callable[[str], StateStore] = LocalStore.at
        self.segments = 0
        self.bytes_written = 0  # journal files written by this process (benchmarks/scale.py)
        self._restore: Mapping[str, Any] | None = None

    # -- a result ---------------------------------------------------------------------------------------
    def record(self, result: Mapping[str, Any]) -> dict[str, Any]:
        """The canonical record of a result (mapped names, aliases, nested keys as dotted names).
        A Tune result nests its whole config: it is flattened only when a mapped name is dotted and
        not a top-level key."""
        flat: dict[str, Any] | None = None

        def get(name: str) -> Any:
            nonlocal flat
            v = result.get(name)
            if v is None and "." in name:
                if flat is None:
                    flat = flatten(result)
                v = flat.get(name)
            return None if isinstance(v, Mapping) else v

        rec = {}
        for key, name in self._name_pairs:
            v = get(name)
            if v is None and name == key:  # an alias of ncstudy's name (fn, train_acc, loss, ...)
                v = next((v for a, k in ALIASES.items() if k == key and (v := get(a)) is not None), None)
            if v is not None:
                rec[key] = v
        if not finite(rec.get(EPOCH)):
            it = get("training_iteration")
            if finite(it):
                rec[EPOCH] = it
        return rec

    def budget_of(self, config: Mapping[str, Any], trial_id: str) -> int | None:
        b = self.budget
        if b is None:
            value = None
        elif callable(b):
            value = b(config)
        elif isinstance(b, int):
            value = b
        else:
            value = flatten(config).get(b)
            if value is None and self.needs_budget:
                raise ValueError(f"{self.where}: budget={b!r} is not a key of trial {trial_id}'s config "
                                 f"({', '.join(sorted(flatten(config)))})")
        if value is None and self.needs_budget:
            raise ValueError(f"{self.where}: the conformal forecaster needs each trial's budget (its last "
                             f"epoch): pass budget=<int>, budget='<config key>' or budget=lambda config: ...")
        return None if value is None else int(value)

    def observe(self, trial_id: str, result: dict[str, Any], config: Mapping[str, Any]) -> bool:
        """Forecast, decide, and write the forecast fields into ``result``; True: stop the trial."""
        self._ensure_restored()
        rec = self.record(result)
        if not finite(rec.get(EPOCH)):
            raise ValueError(f"{self.where}: trial {trial_id}'s result has no epoch ('{self.names.epoch}' or "
                             f"training_iteration); set metrics={{'epoch': '<your key>'}}")
        mon = self.stopper.monitors.get(trial_id)
        if mon is not None and mon.records and mon.records[-1] == dict(rec, **{EPOCH: int(float(rec[EPOCH]))}):
            # The same result again (Tune hands a trial's last result back when it ends): no new evaluation.
            return mon.stop_reason is not None
        keys = self._keys.get(trial_id)
        if keys is None:
            keys = self._keys[trial_id] = (self.group_key(config), self.budget_of(config, trial_id))
        group, budget = keys
        d = self.stopper.observe(trial_id, rec, group, budget)
        mon = self.stopper.monitors[trial_id]
        self._explain(trial_id, group, rec, result)
        result.update(mon.fields())
        if d.stop:
            result[STOP_REASON] = d.reason
        self._objective(mon, d, result)
        return d.stop

    def _objective(self, mon, d, result: dict[str, Any]) -> None:
        """The collapse-time objective in ``result`` (:meth:`TrialMonitor.objective
        <ncstudy.forecast.stopper.TrialMonitor.objective>`): a stop's value (forecast, censored)
        always; else the trial's own value when finite; else the observed onset, or --
        ``collapse_epoch`` only -- ``2 x budget`` once the budget is reached; NaN before."""
        key = self.objective
        if not key:
            return
        value = mon.objective()
        if d.stop and d.reason != "onset" and value is not None:
            result[key] = value
            return
        if finite(result.get(key)):
            return
        if value is not None and (mon.tracker.t_strict is not None or key == COLLAPSE_EPOCH):
            result[key] = value
        else:
            result.setdefault(key, math.nan)

    def _phase1_only(self, trial_id: str) -> None:
        if self._phase1.get(trial_id):
            self._warn("phase", trial_id, f"trial {trial_id} reported only phase 1: the forecaster follows the MSE "
                       "phase (phase 2), so it had no forecast. For a single-phase run, report no phase: "
                       "metrics={'phase': None}")

    def complete(self, trial_id: str, last_result: Mapping[str, Any], error: bool = False) -> str | None:
        self._ensure_restored()
        self._phase1_only(trial_id)
        self._no_nc1.pop(trial_id, None)
        self._phase1.pop(trial_id, None)
        self._keys.pop(trial_id, None)
        reason = last_result.get(STOP_REASON) if last_result else None
        return self.stopper.complete(trial_id, "error" if error else (reason if isinstance(reason, str) and reason
                                                                      else None))

    def value(self, trial_id: str, budget: int | None) -> float:
        """The collapse-time objective of a trial: its observed onset, its forecast (stopped at one),
        the censored value of a search stop, else ``2 x budget`` (no onset seen or expected)."""
        m = self.stopper.monitors.get(str(trial_id))
        v = m.objective() if m is not None else None
        if v is not None:
            return v
        b = budget if budget is not None else (m.budget if m is not None else None)
        return 2.0 * b if b is not None else math.nan

    # -- saying why it does not stop ----------------------------------------------------------------------
    def _warn(self, kind: str, key: str, message: str) -> None:
        if (kind, key) not in self._warned:
            self._warned.add((kind, key))
            log.warning("%s: %s", self.where, message)

    def _explain(self, trial_id: str, group: str, rec: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        """Warn (once each) why a trial cannot be forecast; ``result`` as the trial reported it."""
        cal = self.stopper.calibration
        if NC1 not in rec:
            n = self._no_nc1[trial_id] = self._no_nc1.get(trial_id, 0) + 1
            if n >= _WARN_AFTER:
                keys = ", ".join(sorted(k for k in result if not k.startswith(("config", "_")))[:20])
                self._warn("nc1", trial_id, f"trial {trial_id} reports no '{self.names.nc1}' (it reports: {keys}): "
                           "without NC1 there is no forecast and no onset. Report it (ncstudy.metrics.measure(model, "
                           "loader) gives it) or name your key: metrics={'nc1': '<key>'}")
        if self.names.phase is not None and finite(rec.get(PHASE)):
            if int(float(rec[PHASE])) == 1:
                self._phase1.setdefault(trial_id, True)
            else:
                self._phase1[trial_id] = False
            mon = self.stopper.monitors[trial_id]
            if mon.budget is not None and float(rec[EPOCH]) >= mon.budget:
                self._phase1_only(trial_id)
        if cal.priors and group not in cal.priors:
            self._warn("prior", group, f"group '{group}' has no prior; the priors are for "
                       f"{', '.join(sorted(cal.priors))}. The group comes from the trial config (default: "
                       "model.name/model and data.name/dataset); pass group_key= to match")
        forecaster = self.stopper.forecaster
        if forecaster == "fn_star" and cal.estimate(group).fn_star is None:
            self._warn("calibration", group, f"group '{group}' has no fn* yet (no prior, fewer than "
                       f"{cal.min_observations} of its runs have reached onset): its trials run to onset until then")
        elif forecaster.startswith("conformal") and cal.n_runs() < 10:
            self._warn("calibration", "pool", f"the calibration pool has {cal.n_runs()} completed run(s); forecasts "
                       "are not acted on before it has 10 (prior='corpus' starts from ncstudy's corpus)")

    # -- state ------------------------------------------------------------------------------------------
    # Without a store the state is the whole stopper (ForecastStopper.to_dict: O(trials) per save).
    # With one (the adapter attaches it, e.g. Tune's experiment folder) it is incremental: the
    # store holds base.json (the stopper when the store was attached, written once) and one
    # journal segment per save that had something new (runs learnt, batches committed, trials
    # finished -- each trial once); get_state() carries the number of segments and the running
    # trials only. A restore reads base + segments 1..n: segments written after the state was saved
    # (a driver killed in between) are ignored and later overwritten, so the restore is exactly the
    # saved state.
    def attach(self, store: "StateStore") -> None:
        """Persist incrementally into ``store`` from now on (a restore pending is read from it)."""
        if self.store is not None:
            return
        if self._restore is not None:
            self._load(store, self._restore)
            return
        self.store = store
        self._write("base.json", json.dumps(self.stopper.to_dict(), default=_plain).encode())
        self.segments = 0
        self.stopper.journal = []

    def get_state(self) -> dict[str, Any]:
        if self._restore is not None:  # restored but not yet needed: unchanged
            return dict(self._restore)
        if self.store is None:
            return self.stopper.to_dict()
        events = self.stopper.drain()
        if events:
            self.segments += 1
            self._write(f"seg-{self.segments:06d}.jsonl",
                        "".join(json.dumps(e, default=_plain) + "\n" for e in events).encode())
        return {"version": 2, "store": self.store.location, "segments": self.segments,
                "live": self.stopper.live_dict()}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if int(state.get("version", 1)) > STATE_VERSION:
            raise ValueError(f"{self.where}: saved stopper state version {state.get('version')} is newer than this "
                             f"ncstudy reads ({STATE_VERSION}); resume with the ncstudy that saved it")
        if "store" in state:
            self.store, self._restore = None, dict(state)  # read at attach() (or at first need)
            self.stopper.journal = None
        else:
            self.stopper.load_dict(state)

    def _ensure_restored(self) -> None:
        if self._restore is not None:
            self._load(self.open_store(self._restore["store"]), self._restore)

    def _load(self, store: "StateStore", state: Mapping[str, Any]) -> None:
        base = store.read("base.json")
        if base is None and store.location != state["store"]:  # not found where the trial lives: where it was
            store = self.open_store(state["store"])
            base = store.read("base.json")
        if base is None:
            raise FileNotFoundError(f"{self.where}: the saved stopper state refers to {store.location}/base.json, "
                                    "which is missing (the experiment folder is incomplete)")
        events: list[dict[str, Any]] = []
        for i in range(1, int(state["segments"]) + 1):
            seg = store.read(f"seg-{i:06d}.jsonl")
            if seg is None:
                raise FileNotFoundError(f"{self.where}: stopper journal segment {store.location}/seg-{i:06d}.jsonl "
                                        "is missing")
            events += [json.loads(line) for line in seg.decode().splitlines() if line]
        self.stopper.restore(json.loads(base), events, state["live"])
        self.store, self.segments, self._restore = store, int(state["segments"]), None
        self.stopper.journal = []

    def _write(self, name: str, data: bytes) -> None:
        assert self.store is not None
        self.store.write(name, data)
        self.bytes_written += len(data)

    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["store"] = None  # a file-system handle; re-attached by the adapter
        return d

    def describe(self) -> str:
        reasons: dict[str, int] = {}
        for m in self.stopper.monitors.values():
            r = m.final_reason or m.stop_reason or "running"
            reasons[r] = reasons.get(r, 0) + 1
        return (f"{self.where}(policy={self.stopper.policy}, forecaster={self.stopper.forecaster}): trials {reasons}; "
                f"calibration: {self.stopper.calibration!r}")


#: The former name (constructing it warns, naming :class:`OnsetStopperCore`).
FnStarCore = renamed_class(OnsetStopperCore, "FnStarCore")


def _plain(o: Any) -> Any:
    """JSON for numpy scalars in forecast details."""
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
