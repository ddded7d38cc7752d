"""Adapters of :mod:`ncstudy.forecast` to the frameworks: Ray Tune (:mod:`.ray_tune`,
``OnsetStopper``), Optuna (:mod:`.optuna_pruner`, ``OnsetPruner``), their shared core
(:mod:`.common`) and MLflow (:mod:`.mlflow`)."""
