"""Per-group calibration of the fn* crossing (and of loss-at-onset levels).

A group is a (model family, dataset) pair by default; groups never mix. For each group the
calibration keeps the observations of completed runs that reached onset:

* ``fn*`` of the group = mean of the observed fn* (feature norm at T_NC) of its runs;
* lead = median over the group's runs of ``T_NC - crossing``, where the crossing of a run is its
  first terminal evaluation (phase 2 by default) with ``fn <= fn*(1 + margin)``, computed against
  the group's current fn*; runs whose fn had not crossed by their onset give no gap;
* priors (``Prior``: from a study file, a previous MLflow experiment or the paper) stand in until
  ``min_observations`` runs have been observed; after that the observations alone are used.

It also keeps the **pool** of the conformal forecaster: completed runs (:class:`RunRecord`), both
those that reached the strict onset and those that ran to their budget without it (censored),
each with its collapse-phase records; :meth:`Calibration.analog_pool` builds the searchable
:class:`~ncstudy.forecast.analog.AnalogPool` from them (cached until the calibration changes).

The whole object round-trips through JSON (``to_json`` / ``from_json``, ``save`` / ``load``).
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ncstudy.config import flatten
from ncstudy.onset import STRICT_NC1, TERMINAL_ACC, OnsetRule, onset_of
from ncstudy.records import EPOCH, FN, GRAD_NORM, LOSS, NC1, PHASE, TERMINAL, WEIGHT_NORM, finite

from .protocol import TerminalGate, first_crossing, phase_of

#: ncstudy's trajectory corpus as a calibration: the conformal forecaster's default prior. Written
#: by ``analysis/corpus/export.py`` from ``analysis/corpus/`` (a test checks they agree).
DEFAULT_PRIOR = Path(__file__).with_name("data") / "corpus_calibration.json"

#: Record keys a :class:`RunRecord` keeps (everything the forecasters read).
RUN_KEYS = (EPOCH, PHASE, TERMINAL, NC1, FN, LOSS, GRAD_NORM, WEIGHT_NORM)

GROUP_MODEL_KEYS = ("model.name", "model", "model_family", "arch")
GROUP_DATA_KEYS = ("data.name", "dataset", "data")


def default_group_key(config: Mapping[str, Any] | None) -> str:
    """``"<model family>/<dataset>"`` from a (nested or dotted) trial config or run metadata;
    ``"default"`` when neither is present. ``model.name``/``model``, ``data.name``/``dataset``."""
    flat = flatten(config or {})

    def pick(keys: Sequence[str]) -> str | None:
        for k in keys:
            v = flat.get(k)
            if isinstance(v, str) and v:
                return v
        return None

    model, data = pick(GROUP_MODEL_KEYS), pick(GROUP_DATA_KEYS)
    if model is None and data is None:
        return "default"
    return f"{model or '?'}/{data or '?'}"


def group_key_from(keys: Sequence[str]) -> Callable[[Mapping[str, Any] | None], str]:
    """A group-key function joining the values of dotted config keys with "/"."""
    keys = list(keys)

    def key(config: Mapping[str, Any] | None) -> str:
        flat = flatten(config or {})
        return "/".join(str(flat.get(k, "?")) for k in keys) if keys else "default"

    return key


@dataclass(frozen=True)
class Prior:
    """What is assumed about a group before enough of its runs have been observed."""

    fn_star: float | None = None
    lead: float | None = None
    fn_star_sd: float | None = None
    lead_sd: float | None = None
    levels: Mapping[str, float] = field(default_factory=dict)  # e.g. {"train_loss": 1e-3}
    source: str = "prior"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["levels"] = dict(self.levels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Prior":
        d = dict(d)
        d["levels"] = dict(d.get("levels") or {})
        return cls(**d)


# The paper's reported values (reference README, "Numbers these logs must reproduce"). The
# lead (62 +- 37.3 epochs) is the in-sample width-sweep number; it is known only for MLP/MNIST.
PAPER_PRIORS: dict[str, Prior] = {
    "mlp/mnist": Prior(fn_star=1.052, fn_star_sd=0.066, lead=62.0, lead_sd=37.3,
                       source="paper (Rupa 2026; lead in-sample)"),
    "resnet20/mnist": Prior(fn_star=5.867, fn_star_sd=0.034, source="paper (Rupa 2026)"),
    "mlp/cifar10": Prior(fn_star=0.900, fn_star_sd=0.065, source="paper (Rupa 2026, relaxed)"),
    "resnet20/cifar10": Prior(fn_star=1.515, fn_star_sd=0.008, source="paper (Rupa 2026)"),
}


@dataclass(frozen=True)
class Observation:
    """One completed run of a group that reached onset."""

    run_id: str
    t_nc: int
    fn_star: float
    threshold: str = "strict"  # "strict" or "relaxed"
    points: tuple = ()  # ((epoch, phase, fn), ...) terminal evaluations up to T_NC
    levels: Mapping[str, float] = field(default_factory=dict)  # e.g. train_loss at T_NC

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "t_nc": self.t_nc, "fn_star": self.fn_star,
                "threshold": self.threshold, "points": [list(p) for p in self.points],
                "levels": dict(self.levels)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Observation":
        pts = tuple((int(e), None if p is None else int(p), float(f)) for e, p, f in d.get("points", []))
        return cls(str(d["run_id"]), int(d["t_nc"]), float(d["fn_star"]), d.get("threshold", "strict"),
                   pts, dict(d.get("levels") or {}))


@dataclass(frozen=True)
class RunRecord:
    """A completed run kept by a calibration: its strict onset (None: censored, no onset within
    ``budget``) and its records from the end of the CE phase on (terminal evaluations only,
    up to the onset), with the keys :data:`RUN_KEYS`."""

    run_id: str
    t_nc: int | None
    budget: int
    records: tuple[Mapping[str, Any], ...]
    cluster: str = ""  # the configuration it is a seed of ("": itself alone): held out together

    @classmethod
    def from_records(cls, run_id: str, records: Iterable[Mapping[str, Any]], budget: int,
                     rule: OnsetRule = OnsetRule(), terminal_acc: float = TERMINAL_ACC,
                     cluster: str = "") -> "RunRecord":
        rows = sorted((dict(r) for r in records), key=lambda r: float(r[EPOCH]))
        t = onset_of(rows, rule, relaxed_fallback=False).t_strict
        gate, keep, last_ce = TerminalGate(terminal_acc), [], None
        for r in rows:
            e = int(float(r[EPOCH]))
            if t is not None and e > t:
                break
            terminal = gate.update(r)
            if phase_of(r) == 1:
                last_ce = {EPOCH: e, PHASE: 1}
                continue
            if terminal:
                keep.append({k: (e if k == EPOCH else 1 if k == TERMINAL else
                                 (float(r[k]) if finite(r.get(k)) else None)) for k in RUN_KEYS})
        return cls(str(run_id), None if t is None else int(t), int(budget),
                   tuple(([last_ce] if last_ce else []) + keep), str(cluster or ""))

    def to_dict(self) -> dict[str, Any]:
        d = {"run_id": self.run_id, "t_nc": self.t_nc, "budget": self.budget, "keys": list(RUN_KEYS),
             "rows": [[r.get(k) for k in RUN_KEYS] for r in self.records]}
        if self.cluster:
            d["cluster"] = self.cluster
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunRecord":
        keys = d.get("keys") or list(RUN_KEYS)
        rows = tuple({k: v for k, v in zip(keys, row) if v is not None} for row in d.get("rows", []))
        t = d.get("t_nc")
        return cls(str(d["run_id"]), None if t is None else int(t), int(d["budget"]), rows, str(d.get("cluster") or ""))


@dataclass(frozen=True)
class Estimate:
    """The fn* and lead a group's calibration gives for one crossing rule."""

    group: str
    fn_star: float | None
    fn_star_source: str  # "observed", "prior: <source>", "observed-untrusted", "none"
    n_fn: int
    lead: float | None
    lead_interval: tuple[float, float] | None
    lead_source: str
    n_gaps: int
    trusted: bool
    margin: float = 0.0

    @property
    def threshold(self) -> float | None:
        return None if self.fn_star is None else self.fn_star * (1.0 + self.margin)

    def describe(self) -> str:
        if self.fn_star is None:
            return f"{self.group}: no fn* yet"
        lead = "none" if self.lead is None else f"{self.lead:.1f}"
        lead_src = {"observed": f"median of {self.n_gaps} gap(s)",
                    "observed-untrusted": f"median of {self.n_gaps} gap(s), too few runs"}.get(
                        self.lead_source, self.lead_source)
        fn_src = {"observed": f"mean of {self.n_fn} runs",
                  "observed-untrusted": f"mean of {self.n_fn} run(s), too few"}.get(
                      self.fn_star_source, self.fn_star_source)
        m = f", margin {self.margin:g}" if self.margin else ""
        return (f"{self.group}: fn*={self.fn_star:.4g} ({fn_src}{m}), lead={lead} ({lead_src})"
                f"{'' if self.trusted else ', untrusted'}")


@dataclass(frozen=True)
class LevelEstimate:
    group: str
    key: str
    value: float | None  # geometric mean of the metric at onset
    source: str
    n: int
    trusted: bool

    def describe(self) -> str:
        if self.value is None:
            return f"{self.group}: no {self.key} level yet"
        src = {"observed": f"geometric mean of {self.n} runs",
               "observed-untrusted": f"geometric mean of {self.n} run(s), too few"}.get(self.source, self.source)
        return f"{self.group}: {self.key}@onset={self.value:.4g} ({src}){'' if self.trusted else ', untrusted'}"


class Calibration:
    """Group-keyed calibration. Observations and priors of different groups never mix."""

    def __init__(self, priors: Mapping[str, Prior] | None = None, min_observations: int = 3,
                 trust_priors: bool = True, use_relaxed: bool = False) -> None:
        if min_observations < 1:
            raise ValueError("min_observations must be >= 1")
        self.priors: dict[str, Prior] = dict(priors or {})
        self.min_observations = int(min_observations)
        self.trust_priors = bool(trust_priors)
        self.use_relaxed = bool(use_relaxed)
        self._obs: dict[str, dict[str, Observation]] = {}
        self._runs: dict[str, dict[str, RunRecord]] = {}
        self._cache: dict[tuple, Any] = {}
        # A run's states do not change when other runs arrive (only its fn feature moves with its
        # group's fn*): kept across pool rebuilds, and shared with copies (without/merged).
        self._states: dict[tuple, list] = {}

    # -- content -------------------------------------------------------------------------------
    def add(self, group: str, observation: Observation) -> None:
        """Add (or replace, by ``run_id``) one run's observation."""
        self._obs.setdefault(group, {})[observation.run_id] = observation
        self._cache.clear()

    def add_run(self, group: str, run: RunRecord) -> None:
        """Add (or replace) a completed run: to the pool, and, when it collapsed, as an observation
        of its group's fn* and lead."""
        self._runs.setdefault(group, {})[run.run_id] = run
        if run.t_nc is not None:
            obs = observation_from_records(run.run_id, run.records, relaxed_fallback=False)
            if obs is not None:
                self._obs.setdefault(group, {})[run.run_id] = obs
        self._cache.clear()

    def remove_run(self, group: str, run_id: str) -> bool:
        """Take a pooled run (and its fn*/lead observation) out, in place; False if it was not there."""
        found = self._runs.get(group, {}).pop(run_id, None) is not None
        found = (self._obs.get(group, {}).pop(run_id, None) is not None) or found
        for key in [k for k in self._states if k[:2] == (group, run_id)]:
            del self._states[key]
        self._cache.clear()
        return found

    def runs(self) -> list[tuple[str, RunRecord]]:
        """Every pooled run with its group."""
        return [(g, r) for g, runs in sorted(self._runs.items()) for r in runs.values()]

    def n_runs(self, group: str | None = None) -> int:
        return sum(len(v) for g, v in self._runs.items() if group is None or g == group)

    def fn_star(self, group: str) -> float | None:
        """The group's fn* as the fn* forecaster sees it (observed mean, else its prior)."""
        return self.estimate(group).fn_star

    def analog_pool(self, window: int = 5, strict: float = STRICT_NC1, terminal_acc: float = TERMINAL_ACC,
                    features: Sequence[str] | None = None, weights: Mapping[str, float] | None = None,
                    k: int = 15, group_penalty: float = 0.5):
        """The :class:`~ncstudy.forecast.analog.AnalogPool` of the pooled runs (cached)."""
        from .analog import AnalogPool, PoolRun
        from .state import FEATURES, trajectory_states

        feats = tuple(features or FEATURES)
        key = ("pool", window, strict, terminal_acc, feats, tuple(sorted((weights or {}).items())), k, group_penalty)
        pool = self._cache.get(key)
        if pool is None:
            runs = []
            for g, r in self.runs():
                skey = (g, r.run_id, r.budget, len(r.records), r.records[-1].get("epoch") if r.records else None,
                        window, strict, terminal_acc)
                states = self._states.get(skey)
                if states is None:
                    states = self._states[skey] = trajectory_states(r.records, r.budget, strict, window, terminal_acc)
                star = self.fn_star(g)
                runs.append(PoolRun(r.run_id, g, r.t_nc, r.budget, tuple(s.with_fn_star(star) for s in states),
                                    r.cluster))
            pool = self._cache[key] = AnalogPool(runs, feats, weights, k, group_penalty)
        return pool

    def set_prior(self, group: str, prior: Prior) -> None:
        self.priors[group] = prior
        self._cache.clear()

    def groups(self) -> list[str]:
        return sorted(set(self._obs) | set(self.priors) | set(self._runs))

    def observations(self, group: str) -> list[Observation]:
        obs = list(self._obs.get(group, {}).values())
        return [o for o in obs if self.use_relaxed or o.threshold == "strict"]

    def without(self, run_id: str) -> "Calibration":
        """A copy without ``run_id`` (leave-one-out)."""
        c = Calibration(self.priors, self.min_observations, self.trust_priors, self.use_relaxed)
        c._states = self._states
        for g, obs in self._obs.items():
            for rid, o in obs.items():
                if rid != run_id:
                    c._obs.setdefault(g, {})[rid] = o
        for g, runs in self._runs.items():
            for rid, r in runs.items():
                if rid != run_id:
                    c._runs.setdefault(g, {})[rid] = r
        return c

    def without_runs(self, run_ids: Iterable[str]) -> "Calibration":
        """A copy without several runs (leave-one-group-out)."""
        drop = set(run_ids)
        c = Calibration(self.priors, self.min_observations, self.trust_priors, self.use_relaxed)
        c._states = self._states
        for g, obs in self._obs.items():
            c._obs[g] = {rid: o for rid, o in obs.items() if rid not in drop}
        for g, runs in self._runs.items():
            c._runs[g] = {rid: r for rid, r in runs.items() if rid not in drop}
        return c

    def merged(self, other: "Calibration") -> "Calibration":
        """A copy holding this calibration's runs, observations and priors plus ``other``'s
        (``other`` wins per group for priors and per run id for runs)."""
        c = Calibration({**self.priors, **other.priors}, self.min_observations, self.trust_priors, self.use_relaxed)
        c._states = {**other._states, **self._states}
        for src in (self, other):
            for g, obs in src._obs.items():
                c._obs.setdefault(g, {}).update(obs)
            for g, runs in src._runs.items():
                c._runs.setdefault(g, {}).update(runs)
        return c

    # -- estimates -----------------------------------------------------------------------------
    def estimate(self, group: str, margin: float = 0.0, phases: Sequence[int] | None = (2,),
                 confirm: int = 1) -> Estimate:
        key = (group, float(margin), None if phases is None else tuple(phases), int(confirm))
        est = self._cache.get(key)
        if est is None:
            est = self._cache[key] = self._estimate(group, float(margin), phases, int(confirm))
        return est

    def _estimate(self, group: str, margin: float, phases, confirm: int) -> Estimate:
        obs = self.observations(group)
        prior = self.priors.get(group)
        n = len(obs)
        enough = n >= self.min_observations
        prior_ok = prior is not None and self.trust_priors
        if enough:
            fn_star, fn_src, fn_trusted = statistics.fmean(o.fn_star for o in obs), "observed", True
        elif prior is not None and prior.fn_star is not None:
            fn_star, fn_src, fn_trusted = prior.fn_star, f"prior: {prior.source}", prior_ok
        elif n:
            fn_star, fn_src, fn_trusted = statistics.fmean(o.fn_star for o in obs), "observed-untrusted", False
        else:
            return Estimate(group, None, "none", 0, None, None, "none", 0, False, margin)

        thr = fn_star * (1.0 + margin)
        gaps = []
        for o in obs:
            c = first_crossing(o.points, thr, phases, confirm)
            if c is not None and c[0] <= o.t_nc:
                gaps.append(float(o.t_nc - c[0]))
        if len(gaps) >= self.min_observations:  # never a lead from fewer gaps than runs are needed for fn*
            lead, lead_src, lead_trusted = float(statistics.median(gaps)), "observed", True
            interval = (min(gaps), max(gaps)) if len(gaps) > 1 else None
        elif prior is not None and prior.lead is not None:
            lead, lead_src, lead_trusted = float(prior.lead), f"prior: {prior.source}", prior_ok
            interval = None
            if prior.lead_sd:
                interval = (lead - 1.96 * prior.lead_sd, lead + 1.96 * prior.lead_sd)
        elif gaps:
            lead, lead_src, lead_trusted = float(statistics.median(gaps)), "observed-untrusted", False
            interval = (min(gaps), max(gaps)) if len(gaps) > 1 else None
        else:
            lead, lead_src, lead_trusted, interval = None, "none", False, None
        return Estimate(group, fn_star, fn_src, n, lead, interval, lead_src, len(gaps),
                        fn_trusted and lead_trusted and lead is not None, margin)

    def level(self, group: str, key: str) -> LevelEstimate:
        """Geometric mean over the group's observed runs of metric ``key`` at onset (e.g. the
        training loss), with the same prior / min_observations rules as fn*."""
        vals = [o.levels[key] for o in self.observations(group)
                if key in o.levels and finite(o.levels[key]) and o.levels[key] > 0]
        prior = self.priors.get(group)
        if len(vals) >= self.min_observations:
            return LevelEstimate(group, key, math.exp(statistics.fmean(math.log(v) for v in vals)),
                                 "observed", len(vals), True)
        if prior is not None and key in prior.levels:
            return LevelEstimate(group, key, float(prior.levels[key]), f"prior: {prior.source}",
                                 len(vals), self.trust_priors)
        if vals:
            return LevelEstimate(group, key, math.exp(statistics.fmean(math.log(v) for v in vals)),
                                 "observed-untrusted", len(vals), False)
        return LevelEstimate(group, key, None, "none", 0, False)

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        pooled = {(g, rid) for g, runs in self._runs.items() for rid in runs}
        return {
            "version": 2,
            "min_observations": self.min_observations,
            "trust_priors": self.trust_priors,
            "use_relaxed": self.use_relaxed,
            "priors": {g: p.to_dict() for g, p in sorted(self.priors.items())},
            # observations not derived from a pooled run (the pooled ones are rebuilt from it)
            "observations": {g: [o.to_dict() for rid, o in obs.items() if (g, rid) not in pooled]
                             for g, obs in sorted(self._obs.items())},
            "runs": {g: [r.to_dict() for r in runs.values()] for g, runs in sorted(self._runs.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Calibration":
        if not isinstance(d, Mapping) or not {"priors", "observations", "runs"} & set(d):
            raise ValueError("not a calibration document (needs 'priors', 'observations' and/or 'runs')")
        c = cls({g: Prior.from_dict(p) for g, p in (d.get("priors") or {}).items()},
                int(d.get("min_observations", 3)), bool(d.get("trust_priors", True)),
                bool(d.get("use_relaxed", False)))
        for g, obs in (d.get("observations") or {}).items():
            for o in obs:
                c.add(g, Observation.from_dict(o))
        for g, runs in (d.get("runs") or {}).items():
            for r in runs:
                c.add_run(g, RunRecord.from_dict(r))
        return c

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> "Calibration":
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        return cls.from_json(Path(path).read_text())

    def __repr__(self) -> str:
        n = {g: len(o) for g, o in self._obs.items()}
        r = {g: len(v) for g, v in self._runs.items()}
        return (f"Calibration(groups={self.groups()}, observations={n}, runs={r}, "
                f"min_observations={self.min_observations})")


def observation_from_records(run_id: str, records: Iterable[Mapping[str, Any]], rule=None,
                             terminal_acc: float = TERMINAL_ACC, relaxed_fallback: bool = True) -> Observation | None:
    """The calibration observation of a logged run (None when it never reached onset).
    Uses :func:`ncstudy.onset.onset_of` for T_NC and fn*."""
    rows = [dict(r) for r in records]
    onset = onset_of(rows, rule or OnsetRule(), relaxed_fallback=relaxed_fallback)
    if onset.t_nc is None or not finite(onset.fn_star):
        return None
    gate, pts, levels = TerminalGate(terminal_acc), [], {}
    for r in rows:
        e = int(r[EPOCH])
        if e > onset.t_nc:
            break
        if gate.update(r) and finite(r.get(FN)):
            pts.append((e, phase_of(r), float(r[FN])))
        if e == onset.t_nc and finite(r.get(LOSS)):
            levels[LOSS] = float(r[LOSS])
    return Observation(run_id, int(onset.t_nc), float(onset.fn_star), onset.threshold, tuple(pts), levels)


def default_prior() -> Calibration:
    """The default prior: every run of ncstudy's trajectory corpus, pooled (see :data:`DEFAULT_PRIOR`)."""
    return Calibration.load(DEFAULT_PRIOR)
