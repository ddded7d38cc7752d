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


def build_search_alg(spec: StudySpec, max_concurrent: int | None):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if spec.searcher == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        alg = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.seed))
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
        from ncstudy.forecast.replay import calibration_from_trajectories, priors_from_trajectories
        from ncstudy.forecast.trajectories import mlflow_trajectories

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
    """The study's :class:`~ncstudy.adapters.ray_tune.FnStarStopper` (``scheduler: {name: fnstar}``),
    or None."""
    if spec.scheduler.name != "fnstar":
        return None
    from ncstudy.adapters.ray_tune import FnStarStopper
    from ncstudy.forecast import default_group_key, group_key_from

    cfg = spec.scheduler.fnstar
    st = cfg.settings(spec.objective.metric, spec.objective.mode, spec.base.eval)
    inner = group_key_from(cfg.group_by) if cfg.group_by else default_group_key
    return FnStarStopper(
        st.policy, st.forecaster, mode=st.mode, budget=lambda config: spec.resolve(config).total_epochs,
        metrics=cfg.metrics, prior=build_calibration(cfg, study_groups(spec, inner)),
        # Trials carry only the searched keys; groups (model + dataset by default) need the full config.
        group_key=lambda config: inner(flatten(spec.resolve(config).model_dump())),
        objective=st.objective, rule=st.rule, terminal_acc=st.terminal_acc, learn=st.learn,
        forecaster_options=st.options, min_observations=st.min_observations)


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
    """``trial -> name`` for Tune's ``trial_name_creator``, MLflow run names and the progress table."""
    def name(trial) -> str:
        return spec.name_of_trial(trial.trial_id, trial.config)
    return name


def _dirname_creator(trial) -> str:
    return f"trial_{trial.trial_id}"


def private_temp_dir() -> Path:
    """The temp folder of the local Ray instance ``ncstudy run`` starts (removed when it ends)."""
    return Path(tempfile.gettempdir()) / f"ncstudy_ray_{os.getpid()}"


def start_ray(opts: RunOptions) -> bool:
    """Connect to ``--address`` or start a private local instance; True when we started one."""
    import ray

    if ray.is_initialized():  # e.g. a caller (or a test session) already holds an instance
        return False
    if opts.address:
        ray.init(address=opts.address, log_to_driver=False)
        return False
    ray.init(address="local", num_cpus=opts.num_cpus or os.cpu_count(), num_gpus=opts.num_gpus,
             include_dashboard=False, _temp_dir=str(private_temp_dir()), log_to_driver=False,
             configure_logging=True, logging_level=logging.WARNING)
    return True


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
# no sync warning; and no "View run ... at" line from MLflow at every trial's end -- ncstudy prints
# the study's link itself, and MLflow's line costs a runs/get request per trial.
QUIET_TUNE_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
                  "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def _retarget_tracking(tuner, opts: RunOptions) -> None:
    """Tune restores the callbacks pickled at the first launch; a resume may name a new server
    (a replaced head node), outage limit or flush interval. The tracking URI is overridden only when
    given explicitly; the outage limit and flush interval are the resumed launch's."""
    from ncstudy.adapters.mlflow.callback import MLflowStudyCallback

    local = getattr(tuner, "_local_tuner", None)  # Tune keeps no public handle on the run config
    if local is None:  # Ray client mode: the tuner lives on the cluster
        log.warning("--resume through Ray client: tracking options of the first launch are kept")
        return
    for cb in local.get_run_config().callbacks or []:
        if isinstance(cb, MLflowStudyCallback):
            if opts.tracking_uri_given:
                cb.tracking_uri = opts.tracking_uri
            cb.max_outage_s = opts.tracking_max_outage_s
            cb.flush_interval_s = opts.tracking_flush_interval_s


def _callback(tuner, cls):
    local = getattr(tuner, "_local_tuner", None)
    for cb in (local.get_run_config().callbacks or []) if local is not None else []:
        if isinstance(cb, cls):
            return cb
    return None


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


def run_study(spec: StudySpec, opts: RunOptions, trainable: Callable[..., None] | None = None) -> int:
    """Run (or resume) a study. Returns the exit status of :func:`ncstudy.study.outcome.exit_status`:
    0 when every trial completed, 1 when one failed or diverged, 130 when some did not end
    (interrupted). Bad input raises :class:`~ncstudy.errors.InputError` before anything starts.
    ``trainable``: a stand-in for :func:`ncstudy.study.trainable.run_trial` with its signature
    (``benchmarks/scale.py`` replays recorded trajectories through the same machinery)."""
    for k, v in QUIET_TUNE_ENV.items():
        os.environ.setdefault(k, v)
    from ncstudy.study import preflight

    t = preflight.target(opts.storage, spec.name)
    preflight.check_storage(opts.storage)
    if opts.resume:
        spec = preflight.resume_spec(t, spec, opts.allow_changed)
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
    started = start_ray(opts)
    try:
        if opts.address:
            preflight.check_resources(spec, preflight.cluster_largest_node(), f"the cluster at {opts.address}")
        return _run(spec, opts, t, put_datasets(datasets), trainable)
    finally:
        if started:
            import shutil

            import ray

            ray.shutdown()
            shutil.rmtree(private_temp_dir(), ignore_errors=True)


def _run(spec: StudySpec, opts: RunOptions, t, refs: dict[str, Any],
         trial_fn: Callable[..., None] | None = None) -> int:
    from ray import tune

    from ncstudy.adapters.mlflow.callback import MLflowStudyCallback
    from ncstudy.study.outcome import StudyOutcome, exit_status
    from ncstudy.study.preflight import save_study
    from ncstudy.study.progress import ProgressTable
    from ncstudy.study.trainable import run_trial

    storage = t.storage
    # Local (or NFS) storage keeps the scheduler's state file beside Tune's; with remote storage it
    # goes to Tune's driver directory, which Tune syncs.
    experiment_dir = t.local_dir
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn or run_trial, spec_json=spec.model_dump_json(), data_refs=refs),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    path = t.experiment_path
    if opts.resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        _retarget_tracking(tuner, opts)
    else:
        save_study(t, spec)
        stopper = build_stopper(spec)
        tracking = None if not opts.tracking else MLflowStudyCallback(
            opts.tracking_uri, spec.name,
            study_params={"study.searcher": spec.searcher, "study.scheduler": spec.scheduler.name,
                          "study.num_trials": spec.num_trials(), "study.objective": spec.objective.metric,
                          "study.space": json.dumps({k: p.model_dump(exclude_none=True)
                                                     for k, p in spec.space.items()})},
            trial_params=trial_params(spec), trial_tags=trial_tags(spec),
            trial_label=trial_namer(spec),
            max_outage_s=opts.tracking_max_outage_s, flush_interval_s=opts.tracking_flush_interval_s,
            spill_dir=str(experiment_dir) if experiment_dir else None)
        outcome = StudyOutcome()
        progress = ProgressTable(trial_namer(spec), interval_s=opts.progress_interval_s, quiet=opts.quiet,
                                 outcome=outcome, metric=spec.objective.metric, mode=spec.objective.mode,
                                 summary_note="every trial: summary.csv on the study's MLflow run"
                                 if opts.tracking else None,
                                 budget_of=trial_budget(spec) if spec.scheduler.name == "fnstar" else None)
        tuner = tune.Tuner(
            trainable,
            param_space={k: tune_domain(p) for k, p in spec.space.items()},
            tune_config=tune.TuneConfig(
                metric=spec.objective.metric, mode=spec.objective.mode,
                search_alg=build_search_alg(spec, opts.max_concurrent or spec.max_concurrent),
                scheduler=build_scheduler(spec), num_samples=spec.num_samples,
                max_concurrent_trials=opts.max_concurrent or spec.max_concurrent,
                reuse_actors=spec.reuse_actors,
                trial_name_creator=trial_namer(spec), trial_dirname_creator=_dirname_creator),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=storage, verbose=0,
                stop=stopper,  # writes each trial's forecast into its results (before the callbacks see them)
                callbacks=[c for c in (outcome, stopper, tracking, progress) if c is not None],
                failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints),
                sync_config=tune.SyncConfig(sync_period=STATE_SYNC_PERIOD_S)),
        )
    outcome = _callback(tuner, StudyOutcome)
    results = tuner.fit()
    trials = results._experiment_analysis.trials  # Tune keeps no public handle on the trial list
    if outcome is None:  # a study first launched by an older ncstudy: Tune's view is all there is
        outcomes = {tr.trial_id: "failed" if tr.status == "ERROR" else "complete" for tr in trials}
    else:
        outcomes = {tr.trial_id: outcome.outcome(tr) for tr in trials}
    status = exit_status(list(outcomes.values()))
    if not opts.quiet:
        _report(outcomes, trials, opts, spec.name, status)
    return status


def _report(outcomes: dict[str, str], trials: list, opts: RunOptions, name: str, status: int) -> None:
    import sys

    counts: dict[str, int] = {}
    for o in outcomes.values():
        counts[o] = counts.get(o, 0) + 1
    names = {tr.trial_id: str(tr) for tr in trials}
    print(f"\nStudy {name}: " + ", ".join(f"{n} {o}" for o, n in counts.items()), flush=True)
    left = sorted(names[t] for t, o in outcomes.items() if o in ("interrupted", "not started"))
    if left:
        print(f"{len(left)} trial(s) did not finish ({', '.join(left[:10])}{' ...' if len(left) > 10 else ''}). "
              f"Resume with:\n  {resume_command(opts, name)}", file=sys.stderr, flush=True)
    bad = sorted(names[t] for t, o in outcomes.items() if o in ("failed", "diverged"))
    if bad:
        print(f"failed or diverged: {', '.join(bad[:10])} (see their runs in MLflow)", file=sys.stderr, flush=True)
