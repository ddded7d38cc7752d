"""Adapters of :mod:`ncstudy.forecast` to the frameworks: Ray Tune (:mod:`.ray_tune`,
``OnsetStopper``), Optuna (:mod:`.optuna_pruner`, ``OnsetPruner``), their shared core
(:mod:`.stopper_core`, :mod:`.metric_names`, :mod:`.state_store`) and MLflow (:mod:`.mlflow`)."""
