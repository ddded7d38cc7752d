"""Adapters of :mod:`ncstudy.forecast` to the frameworks: Ray Tune (:mod:`.ray_tune`,
``FnStarStopper``), Optuna (:mod:`.optuna_pruner`, ``FnStarPruner``), their shared core
(:mod:`.common`) and MLflow (:mod:`.mlflow`)."""
