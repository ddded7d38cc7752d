"""The MLflow adapter: the study layout (:mod:`.layout`), the one reader (:mod:`.reader`), the
durable writer (:mod:`.writer`), the pictures and the process that draws them (:mod:`.pictures`)
and the Ray Tune callback (:mod:`.callback`).

Import the callback from :mod:`ncstudy.adapters.mlflow.callback` (it needs Ray); the layout and
the reader need only MLflow.
"""
