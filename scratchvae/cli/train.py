"""``python run.py train --model M``: fit one model's estimator on ``--data``, evaluate it on the
held-out split, write ``metrics.json``, its figures and ``checkpoint.npz`` to ``--out``.
``--resume RUN`` continues a checkpoint (its model options are the checkpoint's; training
options given on the command line, such as ``--epochs``, apply).  :func:`run_model` is also
what the tour, ``seeds`` and ``compare`` call."""
from __future__ import annotations

import os

from ..estimators import load
from ..errors import UsageError
from ..train import CheckpointError
from . import report
from .options import chosen_options, explicit_options
from .registry import entry
from .runs import (checkpoint_path, config_record, default_out, get_data, resolve_source,
                   run_folder, source_record, versions, write_json)

def run_model(name, est, ds, out, args) -> dict:
    """Fit ``est`` (or continue it, if ``warm_start``) on ``ds``, writing the checkpoint into
    ``out``; evaluate on the held-out split and draw the model's figures.  -> metrics."""
    e = entry(name)
    est.fit(ds.x_train, ds.y_train, checkpoint=os.path.join(out, "checkpoint.npz"),
            meta=source_record(args), eval_set=ds.x_test)
    info = {k: v for k, v in est.fit_info_.items() if k not in ("recipe_seconds",)}
    res = {"model": est.kind, **est.evaluate(ds.x_test), "train_seconds": est.fit_seconds_,
           "steps": est.step_, "epochs": est.options.epochs, "n_train": int(ds.x_train.shape[0]),
           "n_test": int(ds.x_test.shape[0]), **info}
    res.update(e.figures(est, ds, out, args.data))
    report.write_history(os.path.join(out, "history.csv"), est)
    write_json(os.path.join(out, "metrics.json"), res)    # the report links it (a command may
    report.train_report(out, args, res, est)              # write a fuller record over it)
    return res


def _resumed(args):
    """The checkpoint's estimator, with the training options given on the command line (the
    estimator refuses any other change: a resumed run continues the same model)."""
    ck = checkpoint_path(args.resume)
    est = load(ck, **({"backend": args.backend} if args.backend else {}))
    if args.model is not None and args.model != est.kind:
        raise UsageError(f"checkpoint {ck!r} holds a {est.kind!r} model but --model is "
                         f"{args.model!r}; pass --model {est.kind}")
    if args.quick:
        raise UsageError("--quick sets the budgets of a new run; to resume, give --epochs (the "
                         "total) instead")
    given = explicit_options(args)
    _refuse_foreign(est.kind, entry(est.kind), given)
    given.pop("backend", None)                   # applied when loading
    est.set_params(**given, warm_start=True, verbose=not args.quiet)
    resolve_source(args, est.run_record)
    return est, ck


def main(args) -> dict:
    if args.resume:
        est, ck = _resumed(args)
        name = args.model = est.kind
        ds = get_data(args, est.options.likelihood)
        if est.n_features_in_ != ds.D:
            raise CheckpointError(f"the checkpoint was trained on {est.n_features_in_} features "
                                  f"but {args.data!r} has {ds.D}; use the same data set")
        est.check_memory(est.n_features_in_)
        resume_dir = os.path.dirname(os.path.abspath(ck))
    else:
        name = args.model
        e = entry(name)
        explicit = explicit_options(args)
        _refuse_foreign(name, e, explicit)
        est = e.make(chosen_options(args, explicit), verbose=not args.quiet)
        ds = get_data(args, est.options.likelihood)
        est.check(ds.x_train)                    # everything fit would refuse, before any output
        resume_dir = None
    shown = resume_dir and os.path.relpath(resume_dir)       # printed as the other commands do
    out = args.out or (shown if shown and not shown.startswith("..") else resume_dir) \
        or default_out(name)
    resuming = resume_dir is not None and os.path.abspath(out) == resume_dir
    with run_folder(out, args, resuming=resuming):
        res = run_model(name, est, ds, out, args)
        record = {**res, "config": config_record(args), "options": est.get_params(),
                  "versions": versions(), **est.backend_.describe(), "data": args.data,
                  "seed": est.options.random_state}
        write_json(os.path.join(out, "metrics.json"), record)     # still under the run's lock
    return {"out": out, **res, "report": os.path.join(out, "report.md")}


def _refuse_foreign(name, e, explicit):
    """An option of another model given for this one is a mistake worth one sentence."""
    mine = set(e.estimator().get_params())
    for k in explicit:
        if k not in mine:
            from .registry import REGISTRY

            owners = [m for m, x in REGISTRY.items() if k in x.estimator().get_params()]
            raise UsageError(f"--{k.replace('_', '-')} is an option of {', '.join(owners)}, not "
                             f"of --model {name}; drop it or choose another --model")
