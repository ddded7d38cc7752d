"""The Ray Tune function trainable: one trial = one :class:`~ncstudy.train.Trainer` run.

Datasets arrive as object-store references put once by the driver, so every node fetches each
dataset once and no trial re-reads files. Reports go through ``ray.tune.report`` (the Tune 2.60
API; ``ray.train.report`` errors inside Tune) with a checkpoint every ``checkpoint_every``
evaluations and at the end, so a retried or resumed trial continues mid-run.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ncstudy.config import TrainConfig
from ncstudy.data import Dataset

CKPT_FILE = "trainer.pt"


def data_key(cfg: TrainConfig) -> str:
    """Datasets differ by their data config and by the model (ResNet pads MNIST-like input)."""
    return json.dumps({"data": cfg.data.model_dump(), "model": cfg.model.name}, sort_keys=True)


def dataset_to_numpy(ds: Dataset) -> dict[str, Any]:
    """Plain arrays travel through Ray's object store without a copy per reader."""
    return {"x_train": ds.x_train.numpy(), "y_train": ds.y_train.numpy(), "x_test": ds.x_test.numpy(),
            "y_test": ds.y_test.numpy(), "num_classes": ds.num_classes, "name": ds.name,
            "input_shape": tuple(ds.input_shape)}


def dataset_from_numpy(d: dict[str, Any]) -> Dataset:
    t = {k: torch.from_numpy(np.array(d[k])) for k in ("x_train", "y_train", "x_test", "y_test")}
    return Dataset(num_classes=d["num_classes"], name=d["name"], input_shape=tuple(d["input_shape"]), **t)


def collapse_epoch(rec: dict[str, Any], total_epochs: int) -> float:
    """The collapse-time objective: T_NC once reached, else a censored penalty of 2x the budget."""
    t = rec.get("t_nc", math.nan)
    return float(t) if isinstance(t, (int, float)) and math.isfinite(t) else float(2 * total_epochs)


def run_trial(config: dict[str, Any], spec_json: str, data_refs: dict[str, Any]) -> None:
    import ray
    from ray import tune

    from ncstudy.study.spec import StudySpec
    from ncstudy.train import Trainer

    spec = StudySpec.model_validate_json(spec_json)
    cfg = spec.resolve(config)
    if cfg.threads is None:
        cfg = cfg.model_copy(update={"threads": max(1, int(spec.resources.cpu))})
    data = dataset_from_numpy(ray.get(data_refs[data_key(cfg)]))
    trainer = Trainer(cfg, data)
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            trainer.load_state_dict(torch.load(Path(d) / CKPT_FILE, map_location=trainer.device,
                                               weights_only=False))
    evals = {"n": 0}
    # Where the trial runs: the MLflow callback tags the run with the node and GPU(s), and keeps
    # them current when a retry lands elsewhere. Ray's own ``node_ip`` cannot tell apart nodes
    # that share a host.
    ctx = ray.get_runtime_context()
    where = {"node_id": ctx.get_node_id(), "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
             "gpu_share": f"{ctx.get_assigned_resources().get('GPU', 0.0):g}"}

    def on_eval(rec: dict[str, Any], tr: Trainer) -> None:
        evals["n"] += 1
        final = tr.pending_stop is not None
        metrics = {k: v for k, v in rec.items() if isinstance(v, (int, float))}
        metrics["collapse_epoch"] = collapse_epoch(rec, cfg.total_epochs)
        metrics["stop_reason"] = tr.pending_stop or ""
        metrics.update(where)
        if final or evals["n"] % spec.checkpoint_every == 0:
            metrics["checkpointed"] = 1
            with tempfile.TemporaryDirectory() as d:
                torch.save(tr.state_dict(), Path(d) / CKPT_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)

    trainer.run(on_eval)
