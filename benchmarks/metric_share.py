"""Benchmark 2: the NC metric pass as a share of training at the paper's cadence.

Same model, data and threads as benchmark 1 (MLP-5 width 512, 10,000 MNIST-shaped samples,
batch 256, one torch and one BLAS thread). Per repetition, alternately:

* one training epoch of :class:`ncstudy.train.Trainer` (``_train_epoch``);
* the metric pass: :class:`ncstudy.metrics.NCAccumulator` fed the penultimate features, labels
  and logits of the whole training set in the Trainer's evaluation batches (4,096), then
  ``compute(W)`` -- everything the metrics add to an evaluation. The features come from an
  untimed forward pass of the current model (the evaluation's forward pass is needed for the
  accuracies anyway and is shared, so it is not the metrics' cost);
* the whole evaluation (``Trainer.evaluate``: forward passes, accuracies and metrics), for scale.

The paper evaluates every 10 epochs, so share = metric pass / (10 x epoch). Target <= 10 %.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import interleave, machine, median, paired_ratios, spread, write_json  # noqa: E402
from benchmarks.trainer_epoch import EVAL_EVERY, NcstudyImpl, blas_one_thread, make_data, train_config  # noqa: E402
from ncstudy.metrics import NCAccumulator  # noqa: E402

TARGET_SHARE = 0.10


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=10_000)
    ap.add_argument("--n-test", type=int, default=2_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args([] if argv is None else argv)

    torch.set_num_threads(1)
    data = make_data(args.n_train, args.n_test)
    cfg = train_config(args.batch)
    eval_bs = cfg.eval.batch_size
    with blas_one_thread():
        impl = NcstudyImpl(cfg, data)
        impl.warm()
        model, K = impl.trainer.model, data.num_classes
        fed: dict[str, Any] = {}

        def features() -> None:  # untimed: the evaluation's forward pass, shared with accuracy
            model.eval()
            with torch.inference_mode():
                fed["batches"] = [(*model.forward_with_features(data.x_train[i:i + eval_bs]),
                                   data.y_train[i:i + eval_bs]) for i in range(0, args.n_train, eval_bs)]
                fed["W"] = model.head.weight.detach().clone()

        def metric_pass() -> None:
            with torch.inference_mode():
                acc = NCAccumulator(K)
                for h, logits, y in fed["batches"]:
                    acc.update(h, y, logits)
                fed["metrics"] = acc.compute(fed["W"])

        features()
        metric_pass()  # warm-up
        timings: dict[str, dict[str, list[float]]] = {"wall": {}, "cpu": {}}
        for r in range(args.reps):  # features of the current model before each timed metric pass
            features()
            t = interleave({"epoch": impl.epoch, "metric_pass": metric_pass, "evaluation": impl.evaluation},
                           1, start=r)
            for clock in t:
                for k, v in t[clock].items():
                    timings[clock].setdefault(k, []).extend(v)

    def figures(t: dict[str, list[float]]) -> dict[str, Any]:
        share = paired_ratios(t["metric_pass"], [EVAL_EVERY * e for e in t["epoch"]])
        eval_share = paired_ratios(t["evaluation"], [EVAL_EVERY * e for e in t["epoch"]])
        return {"metric_share": median(share), "metric_share_spread": spread(share),
                "evaluation_share": median(eval_share), "evaluation_share_spread": spread(eval_share),
                "median_s": {k: median(v) for k, v in t.items()}}

    fig = {clock: figures(timings[clock]) for clock in ("cpu", "wall")}
    out: dict[str, Any] = {
        "benchmark": "metric_share",
        "config": {"model": "mlp depth 5 width 512 relu", "n_train": args.n_train, "n_test": args.n_test,
                   "batch": args.batch, "eval_batch": eval_bs, "eval_every": EVAL_EVERY, "reps": args.reps,
                   "threads": 1, "device": "cpu", "metrics_ncc": "cached (exact nc4)", **machine()},
        "clock": "cpu (process CPU time; wall-clock figures under 'wall')",
        "seconds": timings,
        **fig["cpu"],
        "wall": fig["wall"],
        "target_share_le": TARGET_SHARE,
        "met": fig["cpu"]["metric_share"] <= TARGET_SHARE,
        "metrics_last": fed.get("metrics"),
    }
    write_json("metric_share", out)
    if argv is not None:
        print(f"metric pass {out['median_s']['metric_pass']:.3f}s vs epoch {out['median_s']['epoch']:.3f}s: share at "
              f"1 eval / {EVAL_EVERY} epochs = {out['metric_share']:.1%} (target <= {TARGET_SHARE:.0%}); whole "
              f"evaluation {out['evaluation_share']:.1%}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
