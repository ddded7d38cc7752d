"""The stopper's settings, defined once: what each forecaster takes and what the stopper does with it.

Every place that builds or describes a stopper derives from these models -- the forecasters
themselves, :class:`~ncstudy.forecast.stopper.ForecastStopper`, both adapters (Ray Tune, Optuna),
the study file's ``scheduler.fnstar`` section (:class:`ncstudy.study.spec.FnStarConfig`) and
``ncstudy replay`` -- so a default, a choice list or a help text cannot drift between them
(``tests/test_settings.py`` checks each of them against these).

* one settings model per forecaster family (:class:`ConformalSettings`, :class:`FnStarSettings`,
  :class:`ExtrapolationSettings`), keyed by forecaster name in :data:`FORECASTER_SETTINGS`;
* :class:`StopperSettings`: policy, mode (search or sweep), forecaster, prior, objective, the onset
  rule with its thresholds, terminal accuracy, learning.

**Modes.** A *search* looks for the configuration that collapses first: a trial that cannot beat
the best collapse time observed so far (the incumbent) is stopped -- exactly once it has run past
the incumbent's onset without collapsing (``capped``), and earlier when the forecaster's calibrated
P(T_NC < incumbent) stays at or below ``alpha`` (``cannot_win``). A *sweep* wants every
configuration's onset: trials are stopped only at a trusted forecast (``forecast``: the onset is
forecast inside a narrow interval; ``no_onset_forecast``: no onset within the budget) or at the
observed onset. :func:`default_mode` derives the mode from the objective when none is given.
"""
from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ncstudy.onset import RELAXED_NC1, STRICT_NC1, TERMINAL_ACC, OnsetRule
from ncstudy.records import COLLAPSE_EPOCH, T_NC

POLICIES = ("record", "stop_at_forecast", "stop_at_onset")
MODES = ("search", "sweep")
PRIORS = ("corpus", "none")
FORECASTER_NAMES = ("conformal", "conformal_no_fn", "fn_star", "nc1", "train_loss")
DEFAULT_FORECASTER = "conformal"
DEFAULT_POLICY = "stop_at_forecast"
#: Objectives that hold a collapse time (smaller = earlier collapse).
COLLAPSE_TIME = (COLLAPSE_EPOCH, T_NC)

Policy = Literal["record", "stop_at_forecast", "stop_at_onset"]
Mode = Literal["search", "sweep"]
ForecasterName = Literal["conformal", "conformal_no_fn", "fn_star", "nc1", "train_loss"]


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ConformalSettings(_Settings):
    """``conformal`` and ``conformal_no_fn``: analog states with distribution-free recalibration."""

    alpha: float = Field(0.05, gt=0, lt=0.5, description="risk of a wrong 'no onset' stop (of a collapsing run) "
                         "and of a search stop of a trial that would have won")
    forecast_alpha: float | None = Field(None, gt=0, lt=0.5, description="risk of a collapse forecast acted on in "
                                         "a run that never collapses (a false stop: it would report a wrong T_NC); "
                                         "None: collapse forecasts are stated, never acted on")
    no_onset_margin: float = Field(2.0, ge=1, description="no 'no onset' decision while NC1 is within this factor "
                                   "of the strict threshold (runs that will cross and runs that stall there look "
                                   "alike)")
    coverage: float = Field(0.9, gt=0, lt=1, description="level of the stated onset interval")
    tolerance: float = Field(40.0, gt=0, description="stop at a collapse forecast only when its interval is at "
                             "most this many epochs wide, and NC1 at its recent rate would cross within half of it")
    guard: float = Field(0.9, gt=0, le=1, description="act only on states at least as close to their analogs as "
                         "this share of the pool's own held-out states (1: no guard)")
    window: int = Field(5, ge=3, description="evaluations in the rate and noise fits")
    k: int = Field(15, ge=1, description="analog runs per forecast")
    group_penalty: float = Field(0.5, ge=0, description="distance added to analogs of another group")
    min_runs: int = Field(10, ge=1, description="pooled runs before forecasts are acted on")
    min_collapsed: int = Field(5, ge=1, description="pooled runs that collapsed before forecasts are acted on")
    min_points: int = Field(4, ge=1, description="evaluations of the collapse phase before a decision")
    confirm: int = Field(2, ge=1, description="evaluations in a row a decision must hold before it is acted on")
    weights: dict[str, float] = Field(default_factory=dict, description="feature weights (default 1 each)")

    @property
    def horizon(self) -> float:
        """Epochs ahead within which a collapse forecast's NC1 must be on course to cross."""
        return self.tolerance / 2


class FnStarSettings(_Settings):
    """``fn_star``: the paper's crossing rule (fn <= fn*(1 + margin), then crossing + lead)."""

    margin: float = Field(0.0, ge=0, lt=1, description="crossing when fn <= fn*(1 + margin)")
    confirm: int = Field(1, ge=1, description="evaluations in a row below the threshold")
    phases: list[int] | None = Field([2], description="phases where a crossing counts (None: any)")


class ExtrapolationSettings(_Settings):
    """``nc1`` and ``train_loss``: a log-linear fit over the last evaluations, extrapolated."""

    window: int = Field(5, ge=3, description="evaluations in the fit")
    min_points: int = Field(3, ge=3, description="evaluations before the first fit")
    r2_min: float = Field(0.9, ge=0, le=1, description="least R^2 of a fit that forecasts")
    phases: list[int] | None = Field([2], description="phases the fit uses (None: any)")
    max_horizon: float | None = Field(None, gt=0, description="distrust forecasts further ahead (epochs)")


FORECASTER_SETTINGS: dict[str, type[_Settings]] = {
    "conformal": ConformalSettings, "conformal_no_fn": ConformalSettings, "fn_star": FnStarSettings,
    "nc1": ExtrapolationSettings, "train_loss": ExtrapolationSettings,
}
#: Every forecaster option name, with the forecasters that take it.
OPTION_OWNERS: dict[str, tuple[str, ...]] = {}
for _name, _cls in FORECASTER_SETTINGS.items():
    for _field in _cls.model_fields:
        OPTION_OWNERS[_field] = (*OPTION_OWNERS.get(_field, ()), _name)


def forecaster_settings(name: str, options: Mapping[str, Any] | None = None, *, lenient: bool = False) -> _Settings:
    """The settings of forecaster ``name`` from ``options``; unknown or invalid options raise
    ``ValueError`` naming them. ``lenient``: drop the options that belong to other forecasters
    only (one option set serving a comparison of several forecasters)."""
    if name not in FORECASTER_SETTINGS:
        raise ValueError(f"unknown forecaster {name!r}; choose from {', '.join(FORECASTER_NAMES)}")
    cls = FORECASTER_SETTINGS[name]
    opts = dict(options or {})
    unknown = sorted(k for k in opts if k not in OPTION_OWNERS)
    if unknown:
        raise ValueError(f"unknown forecaster option(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(OPTION_OWNERS))}")
    foreign = sorted(k for k in opts if k not in cls.model_fields)
    if foreign and not lenient:
        raise ValueError(f"forecaster {name!r} takes no option(s) {', '.join(foreign)} (they are "
                         + "; ".join(f"{k}: {', '.join(OPTION_OWNERS[k])}" for k in foreign)
                         + f"); its options: {', '.join(cls.model_fields)}")
    try:
        return cls(**{k: v for k, v in opts.items() if k in cls.model_fields})
    except ValidationError as e:
        raise ValueError(f"forecaster {name!r}: " + "; ".join(
            f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())) from None


def default_mode(objective: str | None, direction: str = "min") -> str:
    """The mode when none is given: ``search`` when the objective is a collapse time minimised
    (``collapse_epoch`` or ``t_nc``: the study looks for the fastest collapse), else ``sweep``."""
    return "search" if objective in COLLAPSE_TIME and direction == "min" else "sweep"


class StopperSettings(_Settings):
    """What every onset-forecast stopper is built from (the adapters' arguments, a study file's
    ``scheduler.fnstar`` section, ``ncstudy replay``'s flags)."""

    policy: Policy = Field(DEFAULT_POLICY, description="stop_at_forecast: act on trusted decisions (and the "
                           "observed onset); stop_at_onset: only the observed onset (and, in a search, capping); "
                           "record: never stop, only forecast")
    mode: Mode | None = Field(None, description="search: stop what cannot beat the best collapse so far; sweep: "
                              "measure every trial's onset; default derived from the objective (default_mode)")
    forecaster: ForecasterName = Field(DEFAULT_FORECASTER, description="what forecasts the onset")
    prior: Literal["corpus", "none"] = Field("corpus", description="what the calibration pool starts from: "
                                             "ncstudy's trajectory corpus, or nothing (only the study's own runs)")
    objective: str | None = Field(COLLAPSE_EPOCH, description="the collapse-time metric the stopper fills in "
                                  "(None: leave the trial's metrics alone)")
    strict: float = Field(STRICT_NC1, gt=0, lt=1, description="onset: first evaluation with NC1 below this")
    relaxed: float = Field(RELAXED_NC1, gt=0, lt=1, description="relaxed onset threshold (reported, never acted on)")
    phase2_only: bool = Field(True, description="onsets count in the MSE phase only (when phases are reported)")
    terminal_acc: float = Field(TERMINAL_ACC, gt=0, le=1, description="training accuracy from which NC metrics count")
    min_observations: int = Field(3, ge=1, description="runs of a group before its own fn* replaces its prior")
    learn: bool = Field(True, description="completed trials join the calibration pool")
    options: dict[str, Any] = Field(default_factory=dict, description="the forecaster's options "
                                    "(FORECASTER_SETTINGS[forecaster])")

    def model_post_init(self, _context: Any) -> None:
        forecaster_settings(self.forecaster, self.options)  # fail fast, naming the option

    @property
    def rule(self) -> OnsetRule:
        return OnsetRule(self.strict, self.relaxed, self.phase2_only)

    def resolved_mode(self, direction: str = "min") -> str:
        return self.mode or default_mode(self.objective, direction)

    def forecaster_settings(self) -> _Settings:
        return forecaster_settings(self.forecaster, self.options)

    @classmethod
    def of(cls, where: str, *, lenient: bool = False, **fields: Any) -> "StopperSettings":
        """The settings from ``fields``; invalid ones raise ``ValueError`` that names ``where``, each
        field, the value given and the choices (``OnsetStopper: policy 'stop_early': choose from ...``).
        ``rule`` (an :class:`~ncstudy.onset.OnsetRule`) gives ``strict``, ``relaxed`` and ``phase2_only``;
        ``lenient``: options that only other forecasters take are dropped (see :func:`forecaster_settings`)."""
        rule = fields.pop("rule", None)
        if rule is not None:  # an OnsetRule: its thresholds
            fields.update(strict=rule.strict, relaxed=rule.relaxed, phase2_only=rule.phase2_only)
        opts = fields.get("options")
        if lenient and opts and fields.get("forecaster", DEFAULT_FORECASTER) in FORECASTER_SETTINGS:
            own = FORECASTER_SETTINGS[fields.get("forecaster", DEFAULT_FORECASTER)].model_fields
            fields["options"] = {k: v for k, v in opts.items() if k in own or k not in OPTION_OWNERS}
        try:
            return cls(**fields)
        except ValidationError as e:
            raise ValueError(f"{where}: " + "; ".join(_field_error(x) for x in e.errors())) from None


#: The choices of the settings fields that take one of a list.
CHOICES: dict[str, tuple[str, ...]] = {"policy": POLICIES, "mode": MODES, "forecaster": FORECASTER_NAMES,
                                       "prior": PRIORS}


def _field_error(err: Mapping[str, Any]) -> str:
    name = ".".join(map(str, err["loc"]))
    if not name:  # raised by model_post_init: a forecaster option
        return str(err.get("ctx", {}).get("error") or err["msg"])
    if err["loc"] and err["loc"][0] in CHOICES and err["type"] == "literal_error":
        extra = " (or None: derived from the objective)" if name == "mode" else ""
        return f"{name} {err['input']!r}: choose from {', '.join(CHOICES[name])}{extra}"
    return f"{name} {err.get('input')!r}: {err['msg']}"


def field_default(model: type[BaseModel], name: str) -> Any:
    """A settings field's default (what the adapters' signatures show)."""
    return model.model_fields[name].get_default(call_default_factory=True)


def option_help(name: str) -> str:
    """A forecaster option's help: its description and each forecaster's default."""
    by_cls: dict[type, list[str]] = {}
    for owner in OPTION_OWNERS[name]:
        by_cls.setdefault(FORECASTER_SETTINGS[owner], []).append(owner)
    first = next(iter(by_cls)).model_fields[name]
    defaults = ", ".join(f"{'/'.join(names)} {field_default(cls, name)!r}" for cls, names in by_cls.items())
    return f"{first.description} (default: {defaults})"


def field_help(model: type[BaseModel], name: str) -> str:
    f = model.model_fields[name]
    return f"{f.description} (default {f.get_default(call_default_factory=True)!r})"
