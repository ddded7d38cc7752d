"""Study files (``search_spaces/*.yaml``): schema and validation, before Ray or MLflow start.

Every value a search can produce is checked against :class:`~ncstudy.config.TrainConfig` up front
(grid/choice values one by one, range bounds at both ends), so a typo in a dataset name fails in
a second with the file and key named instead of an hour into a cluster run.
"""
from __future__ import annotations

import copy
import difflib
import itertools
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from ncstudy import text
from ncstudy.adapters.metric_names import MetricNames
from ncstudy.config import STRICT, TrainConfig, flatten, format_validation_error, read_yaml, set_dotted
from ncstudy.errors import ConfigError
from ncstudy.forecast.settings import (
    COLLAPSE_TIME,
    FORECASTER_SETTINGS,
    OPTION_OWNERS,
    FnStarSettings,
    StopperSettings,
    default_mode,
    field_default,
    forecaster_settings,
    option_help,
)
from ncstudy.records import TRIAL_METRICS

# Readable trial names: the varied keys, shortened (w256-s0).
SHORT_NAMES = {
    "model.width": "w", "model.depth": "d", "model.activation": "", "model.name": "",
    "data.name": "", "seed": "s", "optimizer.lr": "lr", "optimizer.weight_decay": "wd",
    "optimizer.name": "", "intervention_alpha": "a", "batch_size": "b", "data.n_train": "n",
}


class _Strict(BaseModel):
    model_config = STRICT


class Param(_Strict):
    """Exactly one of the sampling forms."""

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: list[float] | None = Field(None, min_length=2, max_length=2, description="[low, high]")
    loguniform: list[float] | None = Field(None, min_length=2, max_length=2, description="[low, high]")
    randint: list[int] | None = Field(None, min_length=2, max_length=2, description="[low, high)")

    @model_validator(mode="after")
    def _one_form(self) -> "Param":
        set_forms = [k for k in ("grid", "choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(set_forms) != 1:
            raise ValueError("give exactly one of grid, choice, uniform, loguniform, randint")
        if self.grid is not None and not self.grid or self.choice is not None and not self.choice:
            raise ValueError(f"{set_forms[0]} needs at least one value")
        for k in ("uniform", "loguniform", "randint"):
            v = getattr(self, k)
            if v is not None and not v[0] < v[1]:
                raise ValueError(f"{k}: low must be < high, got [{v[0]}, {v[1]}]")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform: bounds must be > 0")
        return self

    @property
    def form(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None)

    def probe_values(self) -> list[Any]:
        """Values to check against the trainer config: every discrete value, or the range ends."""
        if self.grid is not None:
            return list(self.grid)
        if self.choice is not None:
            return list(self.choice)
        lo, hi = getattr(self, self.form)
        return [lo, hi - 1] if self.form == "randint" else [lo, hi]


class Objective(_Strict):
    metric: str = Field("collapse_epoch", description="a reported metric")
    mode: Literal["min", "max"] = "min"


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0, description="fractional GPUs share one device")


class Failure(_Strict):
    max_retries: int = Field(2, ge=0)


class AshaConfig(_Strict):
    grace_period: int = Field(5, gt=0, description="evaluations before a trial can be stopped")
    reduction_factor: float = Field(3.0, gt=1)


class PriorConfig(_Strict):
    """A group's prior in a study file."""

    fn_star: float | None = Field(None, gt=0)
    lead: float | None = None
    fn_star_sd: float | None = Field(None, ge=0)
    lead_sd: float | None = Field(None, ge=0)
    train_loss: float | None = Field(None, gt=0, description="training loss at onset (train_loss forecaster)")
    source: str = "study file"


def _option_field(name: str) -> tuple[Any, Any]:
    """A forecaster option as a study-file key: absent (the chosen forecaster's own default) or a
    value its settings model validates; the description names each forecaster's default."""
    first = FORECASTER_SETTINGS[OPTION_OWNERS[name][0]].model_fields[name]
    return (first.annotation | None, Field(None, description=option_help(name)))


#: The flat options an older study model held (all saved), and those its stopper used per forecaster.
_LEGACY_OPTIONS = {"alpha", "coverage", "tolerance", "margin", "confirm", "phases", "window", "min_points", "r2_min",
                   "max_horizon"}
_LEGACY_USED = {"conformal": {"alpha", "coverage", "tolerance", "window"},
                "conformal_no_fn": {"alpha", "coverage", "tolerance", "window"},
                "fn_star": {"margin", "confirm", "phases"},
                "nc1": {"window", "min_points", "r2_min", "max_horizon", "phases"},
                "train_loss": {"window", "min_points", "r2_min", "max_horizon", "phases"}}


class _FnStarBase(_Strict):
    """The ``scheduler: {name: fnstar, fnstar: {...}}`` section of a study file: the stopper's
    settings (:class:`~ncstudy.forecast.settings.StopperSettings`: the same fields, defaults and
    help), the chosen forecaster's options as flat keys (:data:`~ncstudy.forecast.settings.
    FORECASTER_SETTINGS`; a key no forecaster of that name takes is refused), and what only a study
    file gives: its groups, priors and where the calibration comes from. The onset rule and terminal
    accuracy are the study's ``base.eval`` thresholds."""

    objective: str | None = Field(None, description="the metric that holds collapse time (default: the study's "
                                  "objective when it is collapse_epoch or t_nc)")
    group_by: list[str] | None = Field(None, description="dotted config keys; default model + dataset")
    priors: dict[str, PriorConfig] = Field(default_factory=dict, description="group -> prior")
    paper_priors: bool = Field(False, description="use the paper's fn*/lead where no prior is given")
    calibration_file: str | None = Field(None, description="Calibration JSON (ncstudy replay --save-calibration)")
    prior_experiment: str | None = Field(None, description="MLflow experiment whose trial runs give priors")
    tracking_uri: str | None = Field(None, description="for prior_experiment; default MLflow's")
    metrics: MetricNames = Field(default_factory=MetricNames, description="your result keys for ncstudy's names")

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        """An ``ncstudy_study.json`` saved before the forecaster options were defined once held every
        option, given or not; the stopper then used only the chosen forecaster's. Keep those that
        differ from that forecaster's default (the rest were defaults then and are now)."""
        if isinstance(data, dict) and _LEGACY_OPTIONS <= data.keys():
            name = str(data.get("forecaster", "conformal"))
            used, cls = _LEGACY_USED.get(name, set()), FORECASTER_SETTINGS.get(name)
            data = {k: v for k, v in data.items() if k not in _LEGACY_OPTIONS
                    or (k in used and cls is not None and v != field_default(cls, k))}
        return data

    @model_serializer(mode="wrap")
    def _given_options_only(self, handler: Any) -> dict[str, Any]:
        """Options the file did not give are not written (a saved study reads back the same)."""
        return {k: v for k, v in handler(self).items() if k not in OPTION_OWNERS or k in self.model_fields_set}

    @model_validator(mode="after")
    def _options_fit_the_forecaster(self) -> "_FnStarBase":
        given = self.options()
        foreign = [k for k in given if k not in FORECASTER_SETTINGS[self.forecaster].model_fields]
        if foreign:
            raise ValueError(f"{', '.join(foreign)}: not option(s) of forecaster '{self.forecaster}' ("
                             + "; ".join(f"{k} is for {', '.join(OPTION_OWNERS[k])}" for k in foreign)
                             + f"); its options: {', '.join(FORECASTER_SETTINGS[self.forecaster].model_fields)}")
        forecaster_settings(self.forecaster, given)
        return self

    def options(self) -> dict[str, Any]:
        """The forecaster options the file gives (the rest are the forecaster's defaults)."""
        return {k: getattr(self, k) for k in OPTION_OWNERS if k in self.model_fields_set}

    def forecaster_settings(self):
        """The chosen forecaster's full settings (file values over its defaults)."""
        return forecaster_settings(self.forecaster, self.options())

    def fn_star_settings(self) -> FnStarSettings:
        """The fn* crossing rule (priors from a previous experiment use it whatever the forecaster)."""
        return FnStarSettings(**{k: v for k, v in self.options().items() if k in FnStarSettings.model_fields})

    def settings(self, objective: str | None, direction: str, eval_cfg: Any) -> StopperSettings:
        """The stopper's settings for a study whose searcher optimises ``objective`` (``direction``)."""
        obj = self.objective or (objective if objective in COLLAPSE_TIME else None)
        return StopperSettings(policy=self.policy, mode=self.mode or default_mode(objective, direction),
                               forecaster=self.forecaster, prior=self.prior, objective=obj,
                               strict=eval_cfg.strict_threshold, relaxed=eval_cfg.relaxed_threshold,
                               phase2_only=eval_cfg.onset_phase2_only, terminal_acc=eval_cfg.terminal_acc,
                               min_observations=self.min_observations, learn=self.learn, options=self.options())


#: The stopper settings a study file sets (the rest come from ``base.eval`` or are study-only).
_STOPPER_KEYS = ("policy", "mode", "forecaster", "prior", "min_observations", "learn")
FnStarConfig = create_model(
    "FnStarConfig", __base__=_FnStarBase, __doc__=_FnStarBase.__doc__,
    **{k: (StopperSettings.model_fields[k].annotation, StopperSettings.model_fields[k]) for k in _STOPPER_KEYS},
    **{k: _option_field(k) for k in OPTION_OWNERS})


class SchedulerSpec(_Strict):
    name: Literal["fifo", "asha", "fnstar"] = "fifo"
    asha: AshaConfig = Field(default_factory=AshaConfig)
    fnstar: FnStarConfig = Field(default_factory=FnStarConfig, description="fn* stopper options")


class StudySpec(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    base: TrainConfig = Field(default_factory=TrainConfig)
    space: dict[str, Param] = Field(default_factory=dict)
    num_samples: int = Field(1, gt=0, description="repeats of the grid, or samples for random/optuna")
    searcher: Literal["grid", "random", "optuna"] = "grid"
    seed: int = Field(0, description="searcher seed")
    searcher_storage: str | None = Field(
        None, description="searcher 'optuna': where the Optuna study lives, so a resumed study (or another driver) "
        "continues the search with every completed trial. Default: an Optuna journal file beside Tune's results "
        "(<storage>/<name>/optuna_journal.log); or a journal file path (on a shared file system), or an RDB URL "
        "(postgresql+psycopg2://USER@HOST:PORT/DB, mysql+pymysql://..., sqlite:///PATH). The study file is saved "
        "with the study: leave the password out of the URL (PostgreSQL: PGPASSWORD or ~/.pgpass)")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    objective: Objective = Field(default_factory=Objective)
    resources: Resources = Field(default_factory=Resources)
    max_concurrent: int | None = Field(None, gt=0)
    failure: Failure = Field(default_factory=Failure)
    checkpoint_every: int = Field(5, gt=0, description="evaluations between trial checkpoints")
    keep_checkpoints: int | None = Field(
        None, gt=0, description="checkpoints kept per trial; null keeps all. Any limit can lose a trial's "
        "restore point when the driver dies: Tune deletes the oldest checkpoint before its saved experiment "
        "state has caught up with the newer ones")
    reuse_actors: bool = Field(
        True, description="run the next trial in a finished trial's worker process instead of starting a new "
        "one (seconds saved per trial; every trial re-seeds and rebuilds its model and optimiser)")
    trial_name: str | None = Field(None, description="format string over dotted keys, e.g. 'w{model.width}-s{seed}'")

    @field_validator("searcher_storage")
    @classmethod
    def _storage_url(cls, v: str | None) -> str | None:
        if v is not None:
            _check_storage_spelling(v)
        return v

    @model_validator(mode="after")
    def _space_fits_searcher(self) -> "StudySpec":
        if self.searcher_storage is not None and self.searcher != "optuna":
            raise ValueError(f"searcher_storage: only searcher 'optuna' keeps a search in a storage (searcher is "
                             f"'{self.searcher}'); remove searcher_storage or set searcher: optuna")
        for key, p in self.space.items():
            if self.searcher == "optuna" and p.form == "grid":
                raise ValueError(f"space.{key}: 'grid' cannot be used with searcher 'optuna'; use 'choice'")
            if key.startswith("data.") and p.form not in ("grid", "choice"):
                raise ValueError(f"space.{key}: data keys vary only by grid or choice (datasets are preloaded)")
        return self

    # ---- derived ------------------------------------------------------------------------
    def searched(self, config: dict[str, Any]) -> dict[str, Any]:
        """The searched keys of a trial config (Tune's config holds only what the space varies)."""
        return {k: config[k] for k in self.space if k in config}

    def resolve(self, config: dict[str, Any]) -> TrainConfig:
        """The full trainer config of a trial: ``base`` with the trial's searched values applied."""
        return self.config_for(self.searched(config))

    def unique_trial_names(self) -> bool:
        """Whether labels alone can repeat (repeats or sampled keys): then trial ids are appended."""
        return self.num_samples > 1 or self.searcher != "grid" or any(p.form != "grid" for p in self.space.values())

    def name_of_trial(self, trial_id: str, config: dict[str, Any]) -> str:
        """A trial's readable name (MLflow run name, progress table): its label, plus the trial id
        when labels alone can repeat."""
        label = self.trial_label(self.searched(config))
        return f"{label}_{trial_id.split('_')[-1]}" if self.unique_trial_names() else label

    def config_for(self, params: dict[str, Any]) -> TrainConfig:
        d = self.base.model_dump()
        for k, v in params.items():
            for dotted, value in expand_param(k, v).items():
                set_dotted(d, dotted, value)
        return TrainConfig.model_validate(d)

    def probe_configs(self, limit: int = 2000) -> list[TrainConfig]:
        """Trainer configs covering every value the search can produce (grid/choice values, range
        ends): all combinations when there are at most ``limit``, else each key varied alone."""
        keys = list(self.space)
        values = [self.space[k].probe_values() for k in keys]
        n = 1
        for v in values:
            n *= len(v)
        if n <= limit:
            combos = [dict(zip(keys, c)) for c in itertools.product(*values)]
        else:
            combos = [{k: v} for k, vs in zip(keys, values) for v in vs]
        return [self.config_for(c) for c in combos] or [self.base]

    def grid_size(self) -> int:
        n = 1
        for p in self.space.values():
            if p.form == "grid":
                n *= len(p.grid or [])
        return n

    def num_trials(self) -> int:
        return self.num_samples * (self.grid_size() if self.searcher != "optuna" else 1)

    def data_variants(self) -> list[dict[str, Any]]:
        """Every distinct (data, model.name) combination trials can ask for: preloaded once."""
        keys = [k for k, p in self.space.items() if k.startswith("data.") or k == "model.name"
                or any(_touches_data(expand_param(k, v)) for v in p.probe_values())]
        values = [self.space[k].probe_values() for k in keys]
        out: list[dict[str, Any]] = []
        for combo in itertools.product(*values):
            v = dict(zip(keys, combo))
            if v not in out:
                out.append(v)
        return out

    def trial_label(self, params: dict[str, Any]) -> str:
        if self.trial_name:
            flat = flatten(self.config_for(params).model_dump())

            def sub(m: re.Match) -> str:
                if m.group(1) not in flat:
                    raise KeyError(f"trial_name: unknown key '{m.group(1)}'")
                return _name_part(flat[m.group(1)])

            return re.sub(r"\{([^{}]+)\}", sub, self.trial_name)
        parts = []
        for k in self.space:
            if k not in params:
                continue
            v = params[k]
            if isinstance(v, dict):  # a bundle: its label, else its values
                parts.append(str(v.get("label") or "-".join(_name_part(x) for x in expand_param(k, v).values())))
                continue
            short = SHORT_NAMES.get(k, k.split(".")[-1])
            parts.append(f"{short}{_name_part(v)}")
        return "-".join(parts) or self.name


#: The databases Optuna keeps a study in (an RDB ``searcher_storage``).
RDB_BACKENDS = ("postgresql", "mysql", "sqlite")


def _check_storage_spelling(v: str) -> None:
    """``searcher_storage``: an RDB URL Optuna can use, or a journal file path (where it can be
    written, and whether the database answers, is checked before the study starts)."""
    if not v.strip():
        raise ValueError("give a journal file path or an RDB URL, or leave searcher_storage out")
    if "://" not in v:
        if v.endswith(("/", "\\")):
            raise ValueError(f"{v!r} is a folder; give a journal file name (e.g. {v.rstrip('/')}/optuna_journal.log)")
        return
    from sqlalchemy.engine import make_url

    try:
        url = make_url(v)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's ArgumentError, or a ValueError for a bad port
        raise ValueError(f"not a database URL ({type(e).__name__}: {e}); use postgresql+psycopg2://USER:PASSWORD"
                         f"@HOST:PORT/DB, mysql+pymysql://..., sqlite:///PATH, or a journal file path") from None
    backend = url.get_backend_name()
    if backend not in RDB_BACKENDS:
        raise ValueError(f"'{backend}' is not a database Optuna keeps studies in ({', '.join(RDB_BACKENDS)}); use "
                         f"postgresql+psycopg2://USER:PASSWORD@HOST:PORT/DB, mysql+pymysql://..., sqlite:///PATH, "
                         f"or a journal file path")
    if not url.database or url.database == ":memory:":
        raise ValueError(f"{url.render_as_string(hide_password=True)} names no database (an in-memory one would not "
                         f"survive the driver); add /DBNAME (or sqlite:///PATH)")


def expand_param(key: str, value: Any) -> dict[str, Any]:
    """A plain key sets one config value; a bundle (a mapping of dotted keys) sets several at once.

    Bundles vary keys together, e.g. the paper's MLP and ResNet-20 each with its own optimiser:
    ``arch: {grid: [{label: mlp5, model.name: mlp, optimizer.name: adam}, {...}]}``.
    """
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "label"}
    return {key: value}


def _touches_data(values: dict[str, Any]) -> bool:
    return any(k.startswith("data.") or k == "model.name" for k in values)


def _name_part(v: Any) -> str:
    """A value in a trial's name: 3 significant digits (``lr0.001``), None as ``none``."""
    return text.value(v, 3, missing="none")


def _check_space_values(spec: StudySpec, source: str) -> None:
    """Every probe value must make a valid trainer config (unknown dataset, bad width...)."""
    base = spec.base.model_dump()
    valid_keys = set(flatten(base))
    for key, p in spec.space.items():
        bundles = [v for v in p.probe_values() if isinstance(v, dict)]
        if bundles and p.form not in ("grid", "choice"):
            raise ConfigError(f"{source}: space.{key}: bundles need grid or choice")
        if key not in valid_keys and len(bundles) != len(p.probe_values()):
            near = [k for k in valid_keys if k.split(".")[-1] == key.split(".")[-1]]
            hint = f" (did you mean {', '.join(sorted(near))}?)" if near else ""
            raise ConfigError(f"{source}: space.{key}: unknown config key{hint}")
        for v in p.probe_values():
            d = copy.deepcopy(base)
            for dotted, value in expand_param(key, v).items():
                if dotted not in valid_keys:
                    raise ConfigError(f"{source}: space.{key}: unknown config key '{dotted}' in {v!r}")
                set_dotted(d, dotted, value)
            try:
                TrainConfig.model_validate(d)
            except ValidationError as e:
                msgs = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
                raise ConfigError(f"{source}: space.{key}: value {v!r} is invalid ({msgs})") from None


def load_study(path: str | Path) -> StudySpec:
    data = read_yaml(path)
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None
    _check_space_values(spec, str(path))
    if spec.objective.metric not in TRIAL_METRICS:
        near = difflib.get_close_matches(spec.objective.metric, TRIAL_METRICS, n=3)
        raise ConfigError(f"{path}: objective.metric: '{spec.objective.metric}' is not a metric trials report"
                          + (f" (did you mean {', '.join(near)}?)" if near else "")
                          + f"; choose from {', '.join(TRIAL_METRICS)}")
    if spec.trial_name:
        try:
            spec.trial_label({k: p.probe_values()[0] for k, p in spec.space.items()})
        except KeyError as e:
            raise ConfigError(f"{path}: {e.args[0]}") from None
    return spec
