"""``ncstudy run``: a study file becomes a Ray Tune experiment tracked in MLflow.

Everything that can fail on the user's input is checked before Ray starts (see
:mod:`ncstudy.study.spec`); everything after is restore-safe: ``--resume`` continues the same
Tune experiment, the same MLflow parent run and the same child run per trial.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ncstudy.config import flatten
from ncstudy.errors import EXIT_FAILED, EXIT_INTERRUPTED, exit_for_signal
from ncstudy.study.spec import FnStarConfig, Param, StudySpec

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_STORAGE = "ncstudy_results"
# Seconds between copies of Tune's experiment state (and result.json files) from the driver to
# --storage. Tune's default, 300 s, is tempered only by forced copies when a checkpoint limit is
# set; with every checkpoint kept (keep_checkpoints: null) a killed driver would resume from a state
# up to 5 minutes old. Each copy is a few small files.
STATE_SYNC_PERIOD_S = 10


@dataclass
class RunOptions:
    address: str | None = None
    tracking_uri: str = DEFAULT_TRACKING_URI
    storage: str = DEFAULT_STORAGE
    resume: bool = False
    max_concurrent: int | None = None
    num_cpus: int | None = None  # local instance only
    num_gpus: int | None = None  # local instance only
    progress_interval_s: float = 10.0
    quiet: bool = False
    tracking_uri_given: bool = True  # False: --resume keeps the URI of the first launch
    tracking_max_outage_s: float = 600.0  # MLflow down longer than this: spill to JSONL, fail the study
    tracking_flush_interval_s: float = 5.0  # queued metrics are sent at most this often (and at each trial's end)
    tracking: bool = True  # False: no MLflow callback at all (benchmarks/tracking_overhead.py's baseline)
    allow_changed: bool = False  # --resume of a study file that changed since the first launch
    study_file: str | None = None  # for the resume hint


def tune_domain(p: Param):
    from ray import tune

    if p.grid is not None:
        return tune.grid_search(list(p.grid))
    if p.choice is not None:
        return tune.choice(list(p.choice))
    if p.uniform is not None:
        return tune.uniform(*p.uniform)
    if p.loguniform is not None:
        return tune.loguniform(*p.loguniform)
    assert p.randint is not None
    return tune.randint(*p.randint)


def trial_plan(spec: StudySpec) -> list[str]:
    """Human-readable plan for ``--dry-run``: one line per grid trial, or the sampling rule."""
    import itertools

    lines = [f"study {spec.name}: {spec.num_trials()} trial(s), searcher={spec.searcher}, "
             f"scheduler={spec.scheduler.name}, objective={spec.objective.metric} ({spec.objective.mode}), "
             f"resources/trial: cpu={spec.resources.cpu:g} gpu={spec.resources.gpu:g}"]
    if spec.scheduler.name == "fnstar":
        st = spec.scheduler.fnstar.settings(spec.objective.metric, spec.objective.mode, spec.base.eval)
        mode = st.resolved_mode()
        what = {"search": "stops what cannot beat the earliest onset so far (capped, cannot_win, no_onset_forecast)",
                "sweep": "stops at a trusted forecast (forecast, no_onset_forecast) or at the onset"}[mode]
        if st.policy != "stop_at_forecast":
            what = "records forecasts only" if st.policy == "record" else \
                "stops at the onset" + (", and caps at the earliest onset so far" if mode == "search" else "")
        lines.append(f"stopper: {st.forecaster}, policy {st.policy}, {mode} mode"
                     f"{'' if spec.scheduler.fnstar.mode else ' (from the objective)'}: {what}")
    grid = {k: p.grid for k, p in spec.space.items() if p.form == "grid"}
    sampled = {k: p for k, p in spec.space.items() if p.form != "grid"}
    combos = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())] if grid else [{}]
    if spec.searcher != "optuna":
        for rep in range(spec.num_samples):
            for c in combos:
                cfg = spec.config_for({**c, **{k: p.probe_values()[0] for k, p in sampled.items()}})
                label = spec.trial_label(c) if c else spec.name
                lines.append(f"  {label}{f' (repeat {rep})' if spec.num_samples > 1 else ''}: "
                             f"{cfg.model.name} d{cfg.model.depth} w{cfg.model.width} {cfg.model.activation} on "
                             f"{cfg.data.name}, {cfg.ce_epochs} CE + {cfg.mse_epochs} MSE epochs")
    for k, p in sampled.items():
        lines.append(f"  {k}: {p.form} {getattr(p, p.form)}")
    return lines


def build_search_alg(spec: StudySpec, max_concurrent: int | None, search_storage: str | None = None,
                     experiment: str = "", resumed: Mapping[str, str] | None = None):
    """Tune's search algorithm. ``searcher: optuna`` keeps its study in ``search_storage`` (a journal
    file or an RDB URL: :func:`ncstudy.study.search.storage_location`), its trials marked with
    ``experiment``; ``resumed``: Tune's saved trials (id -> status) a resume continues."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if spec.searcher == "optuna":
        from ncstudy.study.search import build_searcher

        if search_storage is None:
            raise ValueError("searcher 'optuna' needs its search_storage (ncstudy.study.search.storage_location)")
        alg = build_searcher(spec.name, spec.seed, search_storage, experiment, dict(resumed or {}))
        return ConcurrencyLimiter(alg, max_concurrent=max_concurrent) if max_concurrent else alg
    return BasicVariantGenerator(random_state=spec.seed, max_concurrent=max_concurrent or 0)


def paper_priors_for(groups: Sequence[str] = ()) -> dict[str, Any]:
    """The paper's fn*/lead per group, also for the study's groups on a subset of a paper dataset
    (``mlp/mnist5k`` takes ``mlp/mnist``'s, marked as such in its source)."""
    from dataclasses import replace

    from ncstudy.forecast import PAPER_PRIORS

    out = dict(PAPER_PRIORS)
    for g in groups:
        model, _, dataset = g.partition("/")
        for pg, p in PAPER_PRIORS.items():
            pm, _, pd_ = pg.partition("/")
            if g not in out and model == pm and dataset.startswith(pd_) and dataset != pd_:
                out[g] = replace(p, source=f"{p.source} ({pg}, applied to {dataset})")
    return out


def build_calibration(cfg: FnStarConfig, groups: Sequence[str] = ()):
    """The calibration a study's fn* stopper starts from: a calibration file (else the corpus for
    the conformal forecasters), then a previous MLflow experiment's runs and priors, the paper's
    priors (also for ``groups`` on a subset of a paper dataset), and the study file's own priors
    (later ones win per group)."""
    from ncstudy.forecast import Calibration, Prior
    from ncstudy.forecast.calibration import default_prior
    from ncstudy.records import LOSS

    if cfg.calibration_file:
        cal = Calibration.load(cfg.calibration_file)
    elif cfg.forecaster.startswith("conformal") and cfg.prior == "corpus":
        cal = default_prior()
    else:
        cal = Calibration()
    cal.min_observations = cfg.min_observations
    if cfg.prior_experiment:
        from ncstudy.adapters.mlflow.reader import mlflow_trajectories
        from ncstudy.forecast.replay import calibration_from_trajectories, priors_from_trajectories

        trajs = mlflow_trajectories(cfg.prior_experiment, cfg.tracking_uri)
        # its runs join the pool (conformal analogs) and give each group's fn*/lead prior (fn_star)
        cal = cal.merged(calibration_from_trajectories(trajs))
        cal.min_observations = cfg.min_observations
        rule = cfg.fn_star_settings()
        for g, p in priors_from_trajectories(trajs, margin=rule.margin, phases=rule.phases,
                                             confirm=rule.confirm).items():
            cal.set_prior(g, p)
    if cfg.paper_priors:
        for g, p in paper_priors_for(groups).items():
            if g not in cal.priors:
                cal.set_prior(g, p)
    for g, p in cfg.priors.items():
        levels = {LOSS: p.train_loss} if p.train_loss is not None else {}
        cal.set_prior(g, Prior(p.fn_star, p.lead, p.fn_star_sd, p.lead_sd, levels, p.source))
    return cal


def build_scheduler(spec: StudySpec):
    """Tune's trial scheduler: ASHA, or FIFO (the fn* stopper works beside any of them)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler.name == "asha":
        a = spec.scheduler.asha
        return ASHAScheduler(time_attr="epoch", max_t=spec.base.total_epochs,
                             grace_period=a.grace_period * spec.base.eval.nc_every,
                             reduction_factor=a.reduction_factor)
    return FIFOScheduler()


def study_groups(spec: StudySpec, key: Callable[[Mapping[str, Any]], str]) -> list[str]:
    """The calibration groups the study's trials can fall in."""
    return sorted({key(flatten(c.model_dump())) for c in spec.probe_configs()})


def build_stopper(spec: StudySpec):
    """The study's :class:`~ncstudy.adapters.ray_tune.OnsetStopper` (``scheduler: {name: fnstar}``),
    or None."""
    if spec.scheduler.name != "fnstar":
        return None
    from ncstudy.adapters.ray_tune import OnsetStopper
    from ncstudy.forecast import default_group_key, group_key_from

    cfg = spec.scheduler.fnstar
    st = cfg.settings(spec.objective.metric, spec.objective.mode, spec.base.eval)
    inner = group_key_from(cfg.group_by) if cfg.group_by else default_group_key
    return OnsetStopper(
        settings=st, budget=lambda config: spec.resolve(config).total_epochs, metrics=cfg.metrics,
        prior=build_calibration(cfg, study_groups(spec, inner)),
        # Trials carry only the searched keys; groups (model + dataset by default) need the full config.
        group_key=lambda config: inner(flatten(spec.resolve(config).model_dump())))


def trial_tags(spec: StudySpec):
    def tags(config: dict[str, Any]) -> dict[str, str]:
        cfg = spec.resolve(config)
        return {"model": cfg.model.name, "dataset": cfg.data.name}
    return tags


def trial_params(spec: StudySpec):
    def params(config: dict[str, Any]) -> dict[str, Any]:
        return flatten(spec.resolve(config).model_dump())
    return params


def trial_budget(spec: StudySpec):
    """``trial -> its last epoch`` (the resolved config's CE + MSE epochs)."""
    def budget(trial) -> int:
        return spec.resolve(trial.config).total_epochs
    return budget


def trial_namer(spec: StudySpec):
    """``trial -> name`` for Tune's ``trial_name_creator``, MLflow run names and the progress table
    (saved in Tune's state as plain data: :class:`~ncstudy.study.tune_state.TrialNamer`)."""
    from ncstudy.study.tune_state import TrialNamer

    return TrialNamer(spec)


def _dirname_creator(trial) -> str:
    """Kept by this name for the Tune state of studies launched before
    :class:`~ncstudy.study.tune_state.TrialDirname` (it pickled this function by reference)."""
    return f"trial_{trial.trial_id}"


def private_temp_dir() -> Path:
    """The temp folder of the local Ray instance ``ncstudy run`` starts (removed when it ends)."""
    return Path(tempfile.gettempdir()) / f"ncstudy_ray_{os.getpid()}"


def start_ray(opts: RunOptions, signals: Any = None) -> bool:
    """Connect to ``--address`` or start a private local instance, the stop signals kept with
    ncstudy and Ray's processes in sessions of their own (:func:`~ncstudy.study.signals.ray_start`);
    True when we started one."""
    import ray

    from ncstudy.study.signals import ray_start

    if ray.is_initialized():  # e.g. a caller (or a test session) already holds an instance
        return False
    if opts.address:
        with ray_start(signals):
            ray.init(address=opts.address, log_to_driver=False)
        return False
    with ray_start(signals):
        ray.init(address="local", num_cpus=opts.num_cpus or os.cpu_count(), num_gpus=opts.num_gpus,
                 include_dashboard=False, _temp_dir=str(private_temp_dir()), log_to_driver=False,
                 configure_logging=True, logging_level=logging.WARNING)
    return True


#: Seconds the processes of the private Ray instance get to exit after ``ray.shutdown`` before
#: they are killed (Ray's agents otherwise linger for up to a minute).
RAY_EXIT_GRACE_S = 5.0


def stop_private_ray(ray_procs: dict[int, str]) -> None:
    """Shut down the local Ray instance this process started, wait for its processes
    (``ray_procs``, the ones ``ray.init`` started, and every process below them) to exit -- killing
    what is left after :data:`RAY_EXIT_GRACE_S` -- and remove its temp folder. Other processes of
    the caller (a test's MLflow server) are not touched."""
    import shutil

    import ray

    from ncstudy.study.signals import alive, descendants, reap

    procs = dict(ray_procs)
    for pid in alive(ray_procs):
        procs.update(descendants(pid))
    ray.shutdown()
    reap(procs, RAY_EXIT_GRACE_S)
    shutil.rmtree(private_temp_dir(), ignore_errors=True)


def load_datasets(spec: StudySpec) -> dict[str, Any]:
    """Every dataset a trial can ask for, loaded once (before Ray starts: a missing dataset is bad
    input, exit 2, with nothing started)."""
    from ncstudy.data import load_dataset
    from ncstudy.study.trainable import data_key, dataset_to_numpy

    out: dict[str, Any] = {}
    for variant in spec.data_variants():
        cfg = spec.config_for(variant)
        key = data_key(cfg)
        if key not in out:
            out[key] = dataset_to_numpy(load_dataset(cfg.data, model=cfg.model.name))
    return out


def put_datasets(datasets: dict[str, Any]) -> dict[str, Any]:
    """Into Ray's object store, so every node fetches each dataset once."""
    import ray

    return {k: ray.put(v) for k, v in datasets.items()}


# Our own progress table replaces Tune's console output; frequent small checkpoints are by design.
# Defaults a study run sets unless the user has (os.environ.setdefault): Tune's classic output,
# no sync warning; no "View run ... at" line from MLflow at every trial's end -- ncstudy prints
# the study's link itself, and MLflow's line costs a runs/get request per trial; and Tune's SIGINT
# handler off: ncstudy handles SIGINT, SIGTERM and SIGHUP alike and hands them to Tune itself.
QUIET_TUNE_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
                  "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true", "TUNE_DISABLE_SIGINT_HANDLER": "1"}


def resume_command(opts: RunOptions, name: str) -> str:
    import shlex

    args = ["ncstudy", "run", opts.study_file or f"<{name}.yaml>", "--resume"]
    if opts.storage != DEFAULT_STORAGE:
        args += ["--storage", opts.storage]
    if opts.address:
        args += ["--address", opts.address]
    if opts.tracking_uri_given and opts.tracking_uri != DEFAULT_TRACKING_URI:
        args += ["--tracking-uri", opts.tracking_uri]
    return " ".join(shlex.quote(a) for a in args)


def legacy_tracking_uri(t) -> str | None:
    """The tracking URI of a study launched before ncstudy kept it in its study file: from the
    callback Tune pickled at that launch (readable while ncstudy's modules are where they were)."""
    from ncstudy.study.persist import read_bytes

    raw = read_bytes(f"{t.experiment_path}/tuner.pkl")
    if raw is None:
        return None
    try:
        import ray.cloudpickle as pickle

        state = pickle.loads(raw)
        for cb in state["_run_config"].callbacks or []:
            uri = getattr(getattr(cb, "writer", None), "tracking_uri", None)
            if uri:
                return str(uri)
    except Exception:  # noqa: BLE001 - an unreadable pickle: the caller says what it assumes
        return None
    return None


def run_study(spec: StudySpec, opts: RunOptions, trainable: Callable[..., None] | None = None,
              signals: Any = None) -> int:
    """Run (or resume) a study. Returns the exit status: 0 when every planned trial reached its own
    end, 1 when one failed or diverged (or never ran), 128 + n when stop signal n ended it (130
    SIGINT, 143 SIGTERM, 129 SIGHUP; see :mod:`ncstudy.study.signals`). Bad input raises
    :class:`~ncstudy.errors.InputError` before anything starts. ``trainable``: a stand-in for
    :func:`ncstudy.study.trainable.run_trial` with its signature (``benchmarks/scale.py`` replays
    recorded trajectories through the same machinery). ``signals``: the command's
    :class:`~ncstudy.study.signals.StopSignals` (else one is installed for the call)."""
    from ncstudy.study.signals import StopSignals

    for k, v in QUIET_TUNE_ENV.items():
        os.environ.setdefault(k, v)
    own = signals is None
    guard = StopSignals() if own else signals
    if own:
        guard.install()
    try:
        return _study(spec, opts, trainable, guard)
    finally:
        if own:
            guard.restore()


def _study(spec: StudySpec, opts: RunOptions, trainable: Callable[..., None] | None, guard) -> int:
    import dataclasses
    import sys

    from ncstudy.errors import Interrupted, signal_name
    from ncstudy.study import preflight
    from ncstudy.study.persist import SavedRun, check_versions, saved_run
    from ncstudy.study.signals import children, descendants, reap

    t = preflight.target(opts.storage, spec.name)
    started, ray_procs, saved = False, {}, SavedRun()
    own_before = children()
    try:
        preflight.check_storage(opts.storage)
        if opts.resume:
            first = preflight.resume_spec(t, spec, opts.allow_changed)
            spec = first.spec
            if not opts.tracking_uri_given:  # a resume keeps the first launch's tracking URI
                uri = first.tracking_uri or legacy_tracking_uri(t)
                if uri is None:
                    print(f"--resume: {spec.name} was launched by an older ncstudy that did not keep its tracking "
                          f"URI; using {opts.tracking_uri} (give --tracking-uri if it was another)",
                          file=sys.stderr, flush=True)
                opts = dataclasses.replace(opts, tracking_uri=uri or opts.tracking_uri)
            # Tune's saved trials and the callbacks' states, as plain data: what this ncstudy cannot
            # read is refused here, before anything starts
            saved = saved_run(t.experiment_path)
            check_versions(callback_classes(spec, opts), saved)
        search_where = None
        if spec.searcher == "optuna":  # the search's storage: written, or answering, before anything starts
            from ncstudy.study.search import check_storage, storage_location

            search_where = storage_location(spec.searcher_storage, t.storage, t.experiment_path)
            check_storage(search_where)
        if opts.address:
            preflight.check_address(opts.address)
        else:
            preflight.check_resources(spec, preflight.local_resources(opts.num_cpus, opts.num_gpus), "this machine")
        if opts.tracking:
            preflight.check_tracking(opts.tracking_uri, spec.name)
        datasets = load_datasets(spec)
        if not opts.quiet:
            print(f"study {spec.name}: {spec.num_trials()} trial(s); tracking {opts.tracking_uri}; "
                  f"results in {t.experiment_path}", flush=True)
        before = descendants()
        with guard.deferred():  # interrupted half-way, ray.init crashes or leaves Ray running
            started = start_ray(opts, guard)
            ray_procs = {p: st for p, st in descendants().items() if p not in before} if started else {}
        if opts.address:
            preflight.check_resources(spec, preflight.cluster_largest_node(), f"the cluster at {opts.address}")
        return _run(spec, opts, t, datasets, trainable, guard, saved, search_where)
    except Interrupted as e:
        how = "at once" if e.forced else "before the study started"
        if preflight.experiment_exists(t):
            print(f"\nStudy {spec.name}: stopped {how} by {signal_name(e.signum)}. Resume with:\n  "
                  f"{resume_command(opts, spec.name)}", file=sys.stderr, flush=True)
        else:
            print(f"\nStudy {spec.name}: stopped by {signal_name(e.signum)} before anything was written; run the "
                  f"same command again to start it", file=sys.stderr, flush=True)
        return e.exit_status
    finally:
        with guard.deferred(act=False):
            if started:
                stop_private_ray(ray_procs)
            # anything else this study started itself (a picture process a forced stop left open)
            reap({p: st for p, st in children().items() if p not in own_before and p not in ray_procs},
                 RAY_EXIT_GRACE_S)


def _as_restored(tuner) -> None:
    """Make a freshly built Tuner continue the experiment in its folder, as ``Tuner.restore`` does,
    without unpickling the first launch's ``tuner.pkl`` (whose objects name the modules of the
    ncstudy that launched it)."""
    from ray.tune import ResumeConfig

    local = getattr(tuner, "_local_tuner", None)  # Tune keeps no public handle on it
    if local is None or not hasattr(local, "_is_restored"):
        from ncstudy.errors import InputError

        raise InputError("--resume: this Ray (or Ray client mode) gives no way to continue a study without "
                         "unpickling its first launch; run the driver on the cluster (`ray job submit`)")
    local._is_restored = True
    local._resume_config = ResumeConfig(unfinished=ResumeConfig.ResumeType.RESUME,
                                        errored=ResumeConfig.ResumeType.RESUME)


class _RestoreErrors(logging.Handler):
    """Tune logs, and then ignores, a failure to restore its saved state ("Restarting experiment"):
    caught here, so the resume is refused instead (:class:`~ncstudy.study.outcome.StudyOutcome`)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "restore" in record.getMessage().lower():
            exc = record.exc_info[1] if record.exc_info else None
            self.errors.append(f"{type(exc).__name__}: {exc}" if exc is not None else record.getMessage())


def _tune_says_how_to_resume(record: logging.LogRecord) -> bool:
    """False for Tune's own words on a stop and its resume (``Tuner.restore(...)``, "press Ctrl-C to
    skip"): ncstudy says what happened and prints its own resume command."""
    text = record.getMessage()
    return "Tuner.restore(" not in text and "Stop signal received" not in text


def callback_classes(spec: StudySpec, opts: RunOptions) -> list[type]:
    """The classes of a study's stateful Tune callbacks, in the order :func:`_run` lists them (the
    order of their saved states)."""
    from ncstudy.adapters.mlflow.callback import MLflowStudyCallback
    from ncstudy.adapters.ray_tune import OnsetStopper
    from ncstudy.study.outcome import StudyOutcome
    from ncstudy.study.progress import ProgressTable

    return [StudyOutcome, *([OnsetStopper] if spec.scheduler.name == "fnstar" else []),
            *([MLflowStudyCallback] if opts.tracking else []), ProgressTable]


def _run(spec: StudySpec, opts: RunOptions, t, datasets: dict[str, Any], trial_fn: Callable[..., None] | None,
         guard, saved, search_where: str | None = None) -> int:
    from ray import tune

    from ncstudy.adapters.mlflow.callback import MLflowStudyCallback
    from ncstudy.study.outcome import StopForwarder, StudyOutcome, exit_status
    from ncstudy.study.persist import live_stopper
    from ncstudy.study.preflight import save_study
    from ncstudy.study.progress import ProgressTable
    from ncstudy.study.trainable import run_trial
    from ncstudy.study.tune_state import StudyStopper, TrialDirname

    with guard.deferred():
        refs = put_datasets(datasets)
    storage = t.storage
    # Local (or NFS) storage keeps the scheduler's state file beside Tune's; with remote storage it
    # goes to Tune's driver directory, which Tune syncs.
    experiment_dir = t.local_dir
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn or run_trial, spec_json=spec.model_dump_json(), data_refs=refs),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    # A resume reads Tune's saved trials and the callbacks' saved states as plain data; everything
    # else is built again from the study file, with the code installed now (ncstudy.study.persist).
    resuming = bool(saved.trials)  # else nothing had started: the first launch's study starts over
    stopper = build_stopper(spec)
    outcome = StudyOutcome(expect_restore=resuming)
    tracking = None if not opts.tracking else MLflowStudyCallback(
        opts.tracking_uri, spec.name,
        study_params={"study.searcher": spec.searcher, "study.scheduler": spec.scheduler.name,
                      "study.num_trials": spec.num_trials(), "study.objective": spec.objective.metric,
                      "study.space": json.dumps({k: p.model_dump(exclude_none=True)
                                                 for k, p in spec.space.items()})},
        trial_params=trial_params(spec), trial_tags=trial_tags(spec),
        trial_label=trial_namer(spec),
        max_outage_s=opts.tracking_max_outage_s, flush_interval_s=opts.tracking_flush_interval_s,
        spill_dir=str(experiment_dir) if experiment_dir else None, planned_trials=spec.num_trials())
    progress = ProgressTable(trial_namer(spec), interval_s=opts.progress_interval_s, quiet=opts.quiet,
                             outcome=outcome, metric=spec.objective.metric, mode=spec.objective.mode,
                             summary_note="every trial: summary.csv on the study's MLflow run"
                             if opts.tracking else None,
                             budget_of=trial_budget(spec), stopper=spec.scheduler.name == "fnstar")
    # The order of the first four is the order of their saved states (index -> state): keep it.
    callbacks = [c for c in (outcome, stopper, tracking, progress) if c is not None]
    assert [type(c) for c in callbacks] == callback_classes(spec, opts)
    callbacks.append(StopForwarder(guard))
    with guard.deferred():  # the study's files are written whole, or not at all
        if not opts.resume:
            save_study(t, spec, opts.tracking_uri if opts.tracking else None)
        tuner = tune.Tuner(
            trainable,
            param_space={k: tune_domain(p) for k, p in spec.space.items()},
            tune_config=tune.TuneConfig(
                metric=spec.objective.metric, mode=spec.objective.mode,
                search_alg=build_search_alg(spec, opts.max_concurrent or spec.max_concurrent, search_where,
                                            t.experiment_path, {tr.trial_id: tr.status for tr in saved.trials}),
                scheduler=build_scheduler(spec), num_samples=spec.num_samples,
                max_concurrent_trials=opts.max_concurrent or spec.max_concurrent,
                reuse_actors=spec.reuse_actors,
                trial_name_creator=trial_namer(spec), trial_dirname_creator=TrialDirname()),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=storage, verbose=0,
                # writes each trial's forecast into its results (before the callbacks see them)
                stop=StudyStopper(stopper) if stopper is not None else None,
                callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints),
                sync_config=tune.SyncConfig(sync_period=STATE_SYNC_PERIOD_S)),
        )
        if resuming:
            _as_restored(tuner)
        else:  # an earlier launch that started no trial: its callbacks' state (e.g. the MLflow study run) goes on
            for i, cb in enumerate(callbacks):
                if saved.callbacks.get(i):
                    cb.set_state(saved.callbacks[i])
    restore_log = _RestoreErrors()
    outcome.restore_errors = restore_log.errors
    tune_log = logging.getLogger("ray.tune.execution.tune_controller")
    tune_log.addHandler(restore_log)
    run_log = logging.getLogger("ray.tune.tune")
    run_log.addFilter(_tune_says_how_to_resume)
    try:
        with guard.tune_loop(), live_stopper(stopper):
            results = tuner.fit()
    finally:
        tune_log.removeHandler(restore_log)
        run_log.removeFilter(_tune_says_how_to_resume)
        if tracking is not None:  # ended by on_experiment_end, unless a forced stop skipped it
            tracking.writer.pictures.close()
    trials = results._experiment_analysis.trials  # Tune keeps no public handle on the trial list
    outcomes = {tr.trial_id: outcome.outcome(tr) for tr in trials}
    missing = max(0, spec.num_trials() - len(trials))  # planned trials Tune never created
    status = exit_status(list(outcomes.values()) + ["not started"] * missing)
    if status == EXIT_INTERRUPTED:
        if guard.first is not None:
            status = exit_for_signal(guard.first)
        elif "interrupted" not in outcomes.values():  # nothing stopped the study, yet trials never ran
            status = EXIT_FAILED
    if not opts.quiet:
        _report(outcomes, trials, opts, spec.name, status, missing, guard.first)
    return status


def _report(outcomes: dict[str, str], trials: list, opts: RunOptions, name: str, status: int, missing: int,
            signum: int | None) -> None:
    import sys

    from ncstudy.errors import signal_name

    counts: dict[str, int] = {}
    for o in outcomes.values():
        counts[o] = counts.get(o, 0) + 1
    if missing:
        counts["not started"] = counts.get("not started", 0) + missing
    names = {tr.trial_id: str(tr) for tr in trials}
    how = f" (stopped by {signal_name(signum)})" if signum is not None else ""
    print(f"\nStudy {name}{how}: " + (", ".join(f"{n} {o}" for o, n in counts.items()) or "no trial started"),
          flush=True)
    left = sorted(names[t] for t, o in outcomes.items() if o in ("interrupted", "not started"))
    if left or missing:
        listed = ", ".join(left[:10]) + (" ..." if len(left) > 10 else "")
        more = f"{' and ' if left else ''}{missing} planned trial(s) never created" if missing else ""
        if status == EXIT_FAILED and signum is None and "interrupted" not in outcomes.values():
            print(f"{len(left) + missing} planned trial(s) never ran ({listed}{more}), although nothing stopped "
                  f"the study; run:\n  {resume_command(opts, name)}", file=sys.stderr, flush=True)
        else:
            print(f"{len(left) + missing} trial(s) did not finish ({listed}{more}). Resume with:\n  "
                  f"{resume_command(opts, name)}", file=sys.stderr, flush=True)
    bad = sorted(names[t] for t, o in outcomes.items() if o in ("failed", "diverged"))
    if bad:
        print(f"failed or diverged: {', '.join(bad[:10])} (see their runs in MLflow)", file=sys.stderr, flush=True)
