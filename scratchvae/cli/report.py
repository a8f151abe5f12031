"""What every command leaves beside its numbers: ``history.csv`` (one row per epoch, phase by
phase) and ``report.md`` (data, seeds, machine, the metrics, the figures), built from the run's
own files and written atomically.  The tour writes its own, longer report (``tour.py``)."""
from __future__ import annotations

import csv
import io
import math
import os
import sys

from ..train import atomic_write
from .runs import versions


def write_history(path, est) -> str:
    """Every epoch the estimator trained, one CSV row each: the phase (pretrain, warm-up,
    train), the epoch within it, the step, the loss and its parts, the learning rate, and what
    the epoch hook recorded (training ACC, agreement with the partition, re-seeded components)."""
    rows = []
    for phase, hist in (*getattr(est, "phase_history_", {}).items(), ("train", est.history_)):
        rows += [{"phase": phase, **h} for h in hist]
    cols = ["phase", "epoch", "step", "loss"]
    cols += sorted({k for r in rows for k in r} - set(cols))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue()), mode="w")
    return path


def _fmt(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v)


def _header(title, args, extra=()) -> list:
    v = versions()
    prog = "scratchvae" if os.path.basename(sys.argv[0]) == "scratchvae" else "python run.py"
    cmd = " ".join([prog, *sys.argv[1:]]) if sys.argv and sys.argv[0] else f"{prog} ..."
    return [f"# {title}", "", f"Command `{cmd}`.", "",
            f"Data `{getattr(args, 'data', None)}`"
            + (f" (first {args.limit} rows of each split)" if getattr(args, "limit", None) else "")
            + "; " + "; ".join(extra) + ".", "",
            f"Machine: {v['platform']}, {v['cpus']} CPUs; Python {v['python']}, NumPy {v['numpy']}"
            + (f", CuPy {v['cupy']}" if "cupy" in v else "") + ".", ""]


def _table(rows: dict) -> list:
    """{name: value} -> a two-column Markdown table of the scalar entries."""
    out = ["| metric | value |", "|---|---|"]
    out += [f"| {k} | {_fmt(v)} |" for k, v in rows.items()
            if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    return out + [""]


def _figures(out, sub="") -> list:
    folder = os.path.join(out, sub)
    pngs = sorted(f for f in os.listdir(folder) if f.endswith(".png")) if os.path.isdir(folder) else []
    return [f"![{os.path.splitext(f)[0]}]({os.path.join(sub, f) if sub else f})\n" for f in pngs]


def write(out, lines) -> str:
    path = os.path.join(out, "report.md")
    atomic_write(path, lambda f: f.write("\n".join(lines) + "\n"), mode="w")
    return path


def train_report(out, args, res, est) -> str:
    """One model's run: its metrics (held-out), how it trained, its figures."""
    lines = _header(f"scratchvae: {res['model']}", args,
                    [f"{res['n_train']} train / {res['n_test']} test rows",
                     f"seed {est.options.random_state}",
                     f"backend `{est.options.backend}` ({est.options.dtype})"])
    lines += ["Held-out metrics (nats per example where a likelihood; clustering scores use the "
              "labels only to score):", ""]
    lines += _table({k: v for k, v in res.items() if k not in ("model", "pi")})
    lines += ["Per-epoch record: [history.csv](history.csv); every number: "
              "[metrics.json](metrics.json).", ""]
    return write(out, lines + _figures(out))


def seeds_report(out, args, record, sub_of) -> str:
    """One format for ``seeds``, ``compare`` and ``baselines``: the summary (mean +- std over
    seeds), one row per seed, the figure across seeds, and each seed's run folder."""
    lines = _header(f"scratchvae: {record['title']}", args, record["extra"])
    lines += ["| metric | mean | std | values |", "|---|---|---|---|"]
    for k, s in record["summary"].items():
        lines.append(f"| {k} | {_fmt(s['mean'])} | {_fmt(s['std'])} | "
                     f"{', '.join(_fmt(v) for v in s['values'])} |")
    lines += ["", *_figures(out)]
    subs = [sub_of(r) for r in record["runs"]]
    lines += ["Runs: " + ", ".join(f"[{s}]({s}/report.md)" for s in subs if s
                                   and os.path.exists(os.path.join(out, s, "report.md"))), ""]
    return write(out, lines)


def eval_report(out, args, res) -> str:
    lines = _header(f"scratchvae: evaluation of {res['model']}", args,
                    [f"checkpoint `{res['checkpoint']}`"])
    return write(out, lines + _table({k: v for k, v in res.items() if k != "checkpoint"}))
