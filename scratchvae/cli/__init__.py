"""Floor 7: the command line, a client of the estimators (``run.py`` and the ``scratchvae``
console script call :func:`main`).

    registry.py     the models: one ModelEntry each (estimator, figures, checks, gradcheck
                    and bench problems); adding a model is one line there
    options.py      the parser, built from the estimators' option dataclasses
    runs.py         run folders, JSON records, data loading
    train.py        train one model;  tour.py: the whole assignment and report.md
    experiments.py  seeds and compare;  evaluate.py: eval;  gradcheck.py;  bench.py
"""
from __future__ import annotations

import json
import sys
import warnings

from .options import build_parser, parse  # noqa: F401  (build_parser: tests, README check)


def _run(args):
    """-> (result dict, exit code)."""
    from . import baselines, bench, evaluate, experiments, gradcheck, tour, train

    if args.command == "train":
        if args.model in (None, "all") and not args.resume:
            return tour.main(args), 0
        if args.model == "kl":
            return _kl(args), 0
        res = train.main(args)
        return {k: v for k, v in res.items() if not isinstance(v, (dict, list))}, 0
    if args.command == "gradcheck":
        res = gradcheck.main(args)
        return res["summary"], 0 if res["ok"] else 1
    run = {"eval": evaluate.main, "compare": experiments.main_compare,
           "seeds": experiments.main_seeds, "bench": bench.main,
           "baselines": baselines.main}[args.command]
    return run(args), 0


def _kl(args) -> dict:
    """``--model kl``: the assignment's §1 study alone (float64 quadrature and estimators)."""
    import os

    from .. import kl as KL
    from ..backend import Backend
    from ..errors import UsageError
    from .runs import default_out, run_folder, write_json

    from .options import explicit_options

    extra = sorted(set(explicit_options(args)) - {"random_state", "backend"})
    if extra or args.resume or args.limit or (args.data not in (None, "digits")):
        what = f"--{extra[0].replace('_', '-')}" if extra else (
            "--resume" if args.resume else "--data/--limit")
        raise UsageError(f"--model kl is the §1 study of two 1-D Gaussians; it takes no {what} "
                         "(only --seed, --backend, --quick, --out)")
    seed = args.seed or 0
    out = args.out or default_out("kl")
    with run_folder(out, args):
        res = KL.run_experiment(Backend(args.backend or "numpy", "float64", seed=seed), out,
                                seed=seed, quick=args.quick)
        write_json(os.path.join(out, "metrics.json"), res)
    return {"out": out, **{k: v for k, v in res.items() if not isinstance(v, (list, dict))}}


def _one_line(message, category, filename, lineno, file=None, line=None):
    """Warnings on the command line are one line each, like errors."""
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    from ..errors import ScratchVAEError

    args = parse(argv)
    warnings.showwarning = _one_line
    try:
        res, code = _run(args)
    except (ScratchVAEError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (checkpoints written so far are kept; continue with --resume)",
              file=sys.stderr)
        return 130
    print(json.dumps(res, default=str))
    return code
