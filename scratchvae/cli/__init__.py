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
        from .report import kl_report

        path = kl_report(out, args, res)
    return {"out": out, **{k: v for k, v in res.items() if not isinstance(v, (list, dict))},
            "report": path}


def _one_line(message, category, filename, lineno, file=None, line=None):
    """Warnings on the command line are one line each, like errors."""
    print(f"warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    """Run one command; every failure a user can act on is one line on stderr: bad input (a
    ScratchVAEError) and divergence exit 2, as do a full disk, a missing permission or any other
    OSError, and running out of memory; Ctrl-C (SIGINT) and SIGTERM stop the run, keep the
    checkpoints written so far and say how to continue (exit 130 / 143)."""
    import signal

    from ..errors import ScratchVAEError
    from . import runs

    args = parse(argv)
    warnings.showwarning = _one_line
    runs.OPENED.clear()
    try:
        previous = signal.signal(signal.SIGTERM, _sigterm)
    except ValueError:                   # not the main thread: leave signals alone
        previous = None
    try:
        res, code = _run(args)
    except (ScratchVAEError, FloatingPointError) as exc:
        return _fail(exc)
    except MemoryError:
        return _fail("out of memory: the sizes asked for (--hidden, --samples, --iwae-k, "
                     "--codes-per-input, --batch-size, --bench-batch, the data) need more memory "
                     "than this machine has; choose smaller ones")
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}; fix that (free space, permissions, the "
                     "path) and run again")
    except KeyboardInterrupt as exc:
        print(f"{'terminated' if isinstance(exc, _Terminated) else 'interrupted'}; "
              f"{_kept(runs.OPENED)}", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    try:
        text = json.dumps(res, default=str, allow_nan=False)
    except ValueError:
        return _fail("the result holds a NaN or inf, which is never reported as a success; the "
                     "model diverged or gives NaN on this data")
    print(text, flush=True)
    if isinstance(res, dict) and res.get("report"):      # the last line: where to look
        print(f"report: {res['report']}", file=sys.stderr, flush=True)
    return code


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the run is so that it unwinds like Ctrl-C."""


def _sigterm(signum, frame):
    raise _Terminated()


def _fail(exc) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def _kept(folders) -> str:
    """What an interrupted run leaves: its checkpoints and how to continue, or nothing."""
    import os

    kept = [os.path.join(d, f) for folder in folders for d, _, fs in os.walk(folder)
            for f in fs if f == "checkpoint.npz"]
    if not kept:
        return "no checkpoint had been written, so nothing was kept; run again to start over"
    more = f" (and {len(kept) - 1} more)" if len(kept) > 1 else ""
    folder = os.path.dirname(kept[0])
    return (f"checkpoint kept: {kept[0]}{more}; continue it with python run.py --resume {folder} "
            "--epochs N (N the total)")
