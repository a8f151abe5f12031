"""The command line's parser, built from the registry: every estimator option is a flag whose
help text, range and choices come from its dataclass field (``scratchvae/options.py``), with each
model's default shown.  Flags default to None, so a command knows which options the user gave
(``explicit``) and every model fills in its own defaults for the rest."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from ..options import CHECKS
from .registry import REGISTRY

COMMANDS = {
    "train": "train one model (--model) or, by default, run the whole assignment (the tour)",
    "eval": "evaluate a checkpoint (--resume) on the held-out split",
    "gradcheck": "finite-difference check (float64) of every model's gradients",
    "bench": "ms per training step of the VaDE network against its GEMM floor",
    "compare": "mean-field vs full-covariance posterior over --seeds seeds",
    "seeds": "train --model with seeds 0..--seeds-1; mean +- std of every metric",
    "baselines": "the GMVAE beside k-means, PCA + GaussianMixture, autoencoder + k-means and "
                 "its own graph partition, on the same data, split and seeds",
}
# --quick: tiny budgets for every stage (seconds; smoke tests)
QUICK = {"epochs": 2, "pretrain_epochs": 2, "iwae_k": 10, "anchor_epochs": 2}
NOT_FLAGS = {"random_state"}          # spelled --seed, handled with the common options


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option value is one line (what is wrong, and where to look), not the
    whole usage block.  No abbreviations: ``--seed`` must never be read as ``--seeds``."""

    def __init__(self, *a, **kw):
        kw.setdefault("allow_abbrev", False)
        super().__init__(*a, **kw)

    def error(self, message):
        top = "python run.py" if self.prog.startswith("run.py") else "scratchvae"
        self.exit(2, f"{self.prog}: error: {message} ({top} {self._cmd()}--help lists the "
                     "options)\n")

    def _cmd(self):
        parts = self.prog.split()
        return parts[-1] + " " if len(parts) > 1 else ""


def _number(kind, check):
    """An argparse type: parse with ``kind``, accept what ``check`` (a CHECKS name) allows."""
    name = "an integer" if kind is int else "a number"
    ok, says = CHECKS[check] if check else (lambda v: True, "")

    def parse(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not {name}")
        if v != v or v in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {says}, got {v}")
        return v

    return parse


def _hidden(s):
    try:
        sizes = tuple(int(t) for t in s.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden takes comma-separated integers like 256,256; got {s!r}")
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--hidden needs at least one positive size; got {s!r}")
    return sizes


def _show(v):
    return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)


def option_table() -> dict:
    """flag name -> (field, {model: default}) over every registered model's options."""
    table = {}
    for name, e in REGISTRY.items():
        opts = e.estimator.Options()
        for f in dataclasses.fields(opts):
            if not f.metadata.get("cli", True) or f.name in NOT_FLAGS:
                continue
            default = e.fixed.get(f.name, getattr(opts, f.name))
            table.setdefault(f.name, (f, {}))[1][name] = default
    return table


def _default_text(per_model: dict) -> str:
    values = list(per_model.values())
    common = max(set(map(_show, values)), key=[_show(v) for v in values].count)
    rest = [f"{m}: {_show(v)}" for m, v in per_model.items() if _show(v) != common]
    models = "" if len(per_model) == len(REGISTRY) else f"; for {', '.join(per_model)}"
    return f"(default {common}{'; ' + '; '.join(rest) if rest else ''}{models})"


# the estimator options each command uses (None: all of them)
COMMAND_OPTIONS = {
    "eval": ("iwae_k", "backend", "dtype"),
    "gradcheck": ("backend", "dtype"),
    "bench": ("latent_dim", "clusters", "posterior", "codebook_size", "codebook_update", "beta",
              "backend", "dtype"),
}


# the models a command trains, where it is not --model's choice
COMMAND_MODELS = {"compare": ("vae", "fullcov")}


def add_model_options(p, only=None, models=None):
    g = p.add_argument_group("model and training options (flags left out take each model's "
                             "default)")
    for name, (f, per_model) in option_table().items():
        if only is not None and name not in only:
            continue
        if models is not None and not set(per_model) & set(models):
            continue                     # an option of none of the command's models
        flag = f.metadata.get("flag") or "--" + name.replace("_", "-")
        kind = type(f.default)
        kw = {"dest": name, "default": None,
              "help": f"{f.metadata['help']} {_default_text(per_model)}".replace("%", "%%")}
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif kind is tuple:
            kw["type"], kw["metavar"] = _hidden, "SIZES"
        elif f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]           # shown in place of a metavar
        elif kind in (int, float):
            kw["type"] = _number(kind, f.metadata.get("check"))
            kw["metavar"] = "N" if kind is int else "X"
        g.add_argument(flag, **kw)


def add_data_options(p):
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None,
                   help="digits (bundled, default; with --resume or eval: the checkpoint's data), "
                        "mnist, fashion-mnist, or a .npy/.npz path (arrays under x/X/data and, "
                        "optionally, y/Y/labels)")
    g.add_argument("--data-dir", default=None,
                   help="folder with the IDX files (default: data, or the checkpoint's)")
    g.add_argument("--download", action="store_true",
                   help="download missing MNIST / Fashion-MNIST files (SHA-256 checked)")
    g.add_argument("--limit", type=_number(int, "positive"), default=None,
                   help="use only the first N training and the first N test examples")


def add_run_options(p, *, seeds=False, seed=True, out=True, quick=True):
    g = p.add_argument_group("run")
    if seed:
        g.add_argument("--seed", type=_number(int, "nonneg"), default=None,
                       help="seed of every random draw (default 0)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--config", metavar="FILE",
                   help="replay a run: the config block of its metrics.json or seeds.json "
                        "supplies every option left out here (not --out, --force, --resume)")
    if not out:
        return
    g.add_argument("--out", default=None,
                   help="run folder (default runs/<model>-<timestamp>; the tour: "
                        "runs/<timestamp>; --resume: the checkpoint's folder; eval: "
                        "runs/eval-<model>-<timestamp>)")
    g.add_argument("--force", action="store_true",
                   help="allow --out to name a folder that already holds a run (it is overwritten)")
    if quick:
        g.add_argument("--quick", action="store_true",
                       help="tiny budgets for every stage (seconds; for smoke tests)")
    if seeds:
        g.add_argument("--seeds", type=_number(int, "positive"), default=None,
                       help="number of seeds (default 3; --quick: 2)")


def model_choice(p, default_text, extra=()):
    p.add_argument("--model", default=None, choices=tuple(REGISTRY) + tuple(extra),
                   help=f"which model: {'; '.join(f'{k}: {e.summary}' for k, e in REGISTRY.items())}"
                        f" ({default_text})")


def build_parser():
    prog = "scratchvae" if os.path.basename(sys.argv[0]) == "scratchvae" else "run.py"
    p = Parser(prog=prog, description="Variational autoencoders written by hand on NumPy / "
               "CuPy.  python run.py with no command runs the whole assignment (train --model "
               "all).  Each command has its own --help.")
    sub = p.add_subparsers(dest="command", metavar="command", parser_class=Parser)
    for cmd, text in COMMANDS.items():
        s = sub.add_parser(cmd, help=text, description=text)
        if cmd == "train":
            model_choice(s, "default all: the whole assignment -- KL study, vae, fullcov, gmvae, "
                            "vqvae -- and report.md; kl: the §1 study alone", extra=("all", "kl"))
        elif cmd == "eval":
            model_choice(s, "default: the checkpoint's")
        elif cmd in ("gradcheck", "bench"):
            model_choice(s, "default all" if cmd == "gradcheck" else "default vae; all: each",
                         extra=("all",))
        elif cmd == "seeds":
            model_choice(s, "required")
        if cmd in ("train", "eval", "compare", "seeds", "baselines"):
            add_data_options(s)
        if cmd in ("train", "eval"):
            s.add_argument("--resume", default=None,
                           help="checkpoint .npz (or its run folder) to continue training (train) "
                                "or to evaluate (eval)")
        if cmd == "train":
            s.add_argument("--figures-to", default=None,
                           help="tour: also copy the figures the derivations embed into this "
                                "folder (--figures-to derivations/figures regenerates them)")
        if cmd == "bench":
            s.add_argument("--bench-steps", type=_number(int, "positive"), default=20,
                           metavar="N", help="timed training steps (default 20)")
            s.add_argument("--bench-batch", type=_number(int, "positive"), default=256,
                           metavar="N", help="batch size of the timed steps (default 256)")
            s.add_argument("--threads", type=_number(int, "positive"), default=1, metavar="N",
                           help="BLAS threads of the timed steps (default 1: on a shared "
                                "machine threads fighting for cores cost up to 5x)")
        add_run_options(s, seeds=cmd in ("compare", "seeds", "baselines"),
                        seed=cmd not in ("compare", "seeds", "eval", "baselines"),
                        out=cmd in ("train", "compare", "seeds", "baselines", "eval"),
                        quick=cmd != "eval")
        add_model_options(s, COMMAND_OPTIONS.get(cmd), COMMAND_MODELS.get(cmd))
    return p


REPLAY_SKIPS = {"command", "out", "force", "resume", "quiet", "config", "figures_to"}


def parse(argv=None):
    """Parsed options; ``python run.py [options]`` means ``python run.py train [options]``.
    ``--config FILE`` replays a run: the ``config`` block of its ``metrics.json`` or
    ``seeds.json`` (or a JSON object of option names) supplies every option the command line
    leaves out; its command is used when none is given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    block = _config_block(argv)
    p = build_parser()
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):   # a mistyped command
        p.error(f"unknown command {argv[0]!r}: choose one of {', '.join(COMMANDS)}")
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = [block.get("command") if block.get("command") in COMMANDS else "train"] + argv
    if block and argv[0] in COMMANDS:
        sub = p._subparsers._group_actions[0].choices[argv[0]]
        actions = {a.dest: a for a in sub._actions}
        replay = {}
        for k, v in block.items():
            if k in actions and k not in REPLAY_SKIPS and v is not None:
                replay[k] = _replayed(sub, actions[k], v)
        sub.set_defaults(**replay)
    args, extra = p.parse_known_args(argv)
    if extra:                            # said by the command's parser: its --help lists them
        p._subparsers._group_actions[0].choices[argv[0]].error(
            f"unrecognized arguments: {' '.join(extra)}")
    return args


def _replayed(sub, action, v):
    """A value from --config, checked as if it had been typed."""
    flag = action.option_strings[0] if action.option_strings else action.dest
    if action.type is not None and not isinstance(v, bool):
        text = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
        try:
            v = action.type(text)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            sub.error(f"--config: {flag}: {exc}")
    if action.choices is not None and v not in action.choices:
        sub.error(f"--config: {flag}: {v!r} is not one of {', '.join(map(str, action.choices))}")
    return v


def _config_block(argv) -> dict:
    """The replayed options of ``--config FILE`` (removed from ``argv``), or {}."""
    import json

    for i, a in enumerate(argv):
        if a == "--config" or a.startswith("--config="):
            path = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else None)
            del argv[i:i + (1 if "=" in a else 2)]
            break
    else:
        return {}
    prog = "run.py" if os.path.basename(sys.argv[0]) != "scratchvae" else "scratchvae"
    if path is None or not os.path.isfile(path):         # never open a FIFO or a folder
        Parser(prog=prog).error(f"--config {path!r} is not a file; give a run's metrics.json or "
                                "seeds.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except (TypeError, OSError, ValueError) as exc:
        Parser(prog=prog).error(f"--config {path!r} is not a readable JSON file ({exc})")
    block = data.get("config", data) if isinstance(data, dict) else None
    if not isinstance(block, dict):
        Parser(prog=prog).error(f"--config {path!r} holds no options: give a metrics.json or "
                                "seeds.json of a run, or a JSON object of option names")
    if block.get("resume") and isinstance(data.get("options"), dict):
        # a resumed run's command line holds only what changed; the model's every option
        # (budgets of all phases included) is in its record, and trained in one go it gives
        # the same model
        opts = dict(data["options"])
        if "random_state" in opts:
            opts["seed"] = opts.pop("random_state")
        block = {**opts, **{k: v for k, v in block.items() if v is not None}}
    return block


def explicit_options(args) -> dict:
    """Estimator options the user gave: the flags not left at None."""
    given = {k: getattr(args, k) for k in option_table() if getattr(args, k, None) is not None}
    if getattr(args, "seed", None) is not None:
        given["random_state"] = args.seed
    return given


def chosen_options(args, explicit=None) -> dict:
    """What the estimators get: the user's options over the --quick budgets (if --quick)."""
    explicit = explicit_options(args) if explicit is None else explicit
    quick = dict(QUICK) if getattr(args, "quick", False) else {}
    if explicit.get("init") == "gmm":
        quick.pop("anchor_epochs", None)         # the warm-up belongs to init graph
    return {**quick, **explicit}
