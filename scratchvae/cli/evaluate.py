"""``python run.py eval --resume RUN``: a checkpoint's held-out metrics on ``--data`` (the
checkpoint's own data set by default), every metric ``train`` reports (ACC / NMI / ARI too for a
GMVAE when the data have labels), and a run folder (``--out``) with ``metrics.json``, the model's
figures drawn from the checkpoint and ``report.md``."""
from __future__ import annotations

import os

from ..estimators import load
from ..errors import UsageError
from ..metrics import check_finite
from ..train import CheckpointError
from . import report
from .registry import entry
from .runs import (checkpoint_path, default_out, get_data, resolve_source, run_folder, versions,
                   write_json)


def main(args) -> dict:
    if not args.resume:
        raise UsageError("eval needs a checkpoint: pass --resume path/to/checkpoint.npz (or its "
                         "run folder)")
    ck = checkpoint_path(args.resume)
    if os.path.isdir(args.resume) and not os.path.exists(ck):
        subs = sorted(d for d in os.listdir(args.resume)
                      if os.path.exists(os.path.join(args.resume, d, "checkpoint.npz")))
        if subs:
            raise UsageError(f"{args.resume!r} is a tour folder; its checkpoints are in the "
                             f"sub-folders {', '.join(subs)}: pass e.g. --resume "
                             f"{os.path.join(args.resume, subs[0])}")
    runtime = {k: getattr(args, k) for k in ("backend", "dtype") if getattr(args, k, None)}
    est = load(ck, **runtime)
    if args.model is not None and args.model != est.kind:
        raise UsageError(f"checkpoint {ck!r} holds a {est.kind!r} model but --model is "
                         f"{args.model!r}; drop --model or pass --model {est.kind}")
    resolve_source(args, est.run_record)              # the checkpoint's data unless --data is given
    ds = get_data(args, est.options.likelihood)
    if est.n_features_in_ != ds.D:
        raise CheckpointError(f"the checkpoint was trained on {est.n_features_in_} features but "
                              f"{args.data!r} has {ds.D}; use the same data set")
    if getattr(args, "iwae_k", None):
        if "iwae_k" not in est.get_params():
            raise UsageError(f"--iwae-k applies to models scored by importance sampling, not to "
                             f"a {est.kind}; drop it")
        est.set_params(iwae_k=args.iwae_k)
        est.check_memory(est.n_features_in_)
    scores = check_finite(est.evaluate(ds.x_test, ds.y_test), f"the scores of {ck!r}")
    res = {"model": est.kind, "checkpoint": ck, "data": args.data, **scores,
           "n_train": int(ds.x_train.shape[0]), "n_test": int(ds.x_test.shape[0]),
           "epochs_trained": len(est.history_), "steps": est.step_}
    out = args.out or default_out(f"eval-{est.kind}")
    with run_folder(out, args):
        extra = entry(est.kind).figures(est, ds, out, args.data)
        res.update({k: v for k, v in extra.items() if k not in res and k != "figures"})
        write_json(os.path.join(out, "metrics.json"),
                   {**res, "options": est.get_params(), "versions": versions(),
                    **est.backend_.describe(), "seed": est.options.random_state})
        path = report.eval_report(out, args, res, est)
    return {"out": out, **{k: v for k, v in res.items() if not isinstance(v, (dict, list))},
            "report": path}
