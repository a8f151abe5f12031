"""Floor 6: the command line, thin -- parse, build, call (``run.py`` calls :func:`main`)."""
from __future__ import annotations

import argparse
import json
import sys

COMMANDS = ("train", "eval", "gradcheck", "bench", "compare", "seeds")


def _number(kind, ok, says):
    """An argparse type: parse with ``kind`` (int or float), accept when ``ok(v)``; the error
    names what was expected (``says``)."""
    name = "an integer" if kind is int else "a number"

    def parse(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not {name}")
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {says}, got {v}")
        return v

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _number(int, lambda v: v >= 0, ">= 0")
_positive_float = _number(float, lambda v: v > 0, "positive")
_nonneg_float = _number(float, lambda v: v >= 0, ">= 0")
_fraction = _number(float, lambda v: 0.0 <= v < 1.0, "in [0, 1)")


def _hidden(s):
    try:
        sizes = tuple(int(t) for t in s.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden takes comma-separated integers like 256,256; got {s!r}")
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--hidden needs at least one positive size; got {s!r}")
    return sizes


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option value is one line (what is wrong, and where to look), not the
    whole usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (python {self.prog} --help lists the options)\n")


def build_parser():
    from .experiment import MODELS

    p = _Parser(
        prog="run.py", description="Variational autoencoders written by hand on NumPy / CuPy.")
    p.add_argument("command", nargs="?", default="train", choices=COMMANDS,
                   help="train (default), eval a checkpoint, gradcheck, bench, compare "
                        "(mean-field vs full-covariance posterior over seeds), or seeds (one "
                        "model over --seeds seeds, mean +- std)")
    p.add_argument("--model", default=None, choices=MODELS + ("all", "kl"),
                   help="which model (default: all for train and gradcheck -- the whole "
                        "assignment --, vae for bench; see README)")
    p.add_argument("--backend", default="numpy", choices=("numpy", "cupy", "strict"))
    p.add_argument("--dtype", default=None, choices=("float32", "float64"),
                   help="float32 to train (default), float64 for gradcheck (its default)")
    p.add_argument("--data", default="digits",
                   help="digits (bundled, default), mnist, fashion-mnist, or a .npy/.npz path")
    p.add_argument("--data-dir", default="data", help="folder with the IDX files (default: data)")
    p.add_argument("--download", action="store_true",
                   help="download missing MNIST / Fashion-MNIST files (SHA-256 checked)")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="use only the first N training and the first N test examples (quick runs)")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="training epochs (default per model: see scratchvae/experiment.py DEFAULTS)")
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--lr", type=_positive_float, default=None, help="Adam learning rate (default per model)")
    p.add_argument("--latent-dim", type=_positive_int, default=None,
                   help="latent size J (default 10; vqvae: size of each code vector, default 8)")
    p.add_argument("--hidden", type=_hidden, default=(256, 256),
                   help="hidden layer sizes of the encoder (decoder mirrors), e.g. 500,500,2000")
    p.add_argument("--act", default="relu", choices=("relu", "tanh", "softplus"))
    p.add_argument("--likelihood", default="bernoulli", choices=("bernoulli", "gaussian"))
    p.add_argument("--posterior", default="diag", choices=("diag", "cholesky"),
                   help="q(z|x) head: mean-field (diag) or full covariance (cholesky)")
    p.add_argument("--cholesky-diag", default="softplus", choices=("softplus", "exp"),
                   help="activation of the Cholesky factor's diagonal (softplus + 1e-5, or exp)")
    p.add_argument("--samples", type=_positive_int, default=1,
                   help="Monte Carlo samples L per example in the ELBO")
    p.add_argument("--iwae-k", type=_positive_int, default=None,
                   help="importance samples for the held-out log-likelihood bound")
    p.add_argument("--lr-decay", type=_positive_float, default=None,
                   help="multiply the learning rate by this every --decay-every epochs (default per model)")
    p.add_argument("--decay-every", type=_positive_int, default=10)
    # gmvae
    p.add_argument("--clusters", type=_positive_int, default=10, help="gmvae: mixture components K")
    p.add_argument("--gamma", default="sample", choices=("sample", "optimal"),
                   help="gmvae: q(c|x) as p(c|z) averaged over the samples (seed §3.3, default) "
                        "or the ELBO's exact maximiser softmax(log pi - T/2)")
    p.add_argument("--pretrain-epochs", type=_nonneg_int, default=None,
                   help="gmvae: autoencoder pretraining epochs before the mixture is fitted")
    p.add_argument("--pretrain-dropout", type=_fraction, default=0.0,
                   help="gmvae: input dropout of the (denoising) pretraining autoencoder")
    p.add_argument("--init", default="graph", choices=("graph", "gmm"),
                   help="gmvae: mixture initialisation -- spectral partition of the consensus "
                        "neighbour graph of data and latent means, then the anchored warm-up "
                        "(default), or GaussianMixture on the latent means")
    p.add_argument("--graph-k", type=_positive_int, default=None,
                   help="gmvae --init graph: neighbours per point in each k-NN graph (default 10)")
    p.add_argument("--anchor-epochs", type=_nonneg_int, default=None,
                   help="gmvae --init graph: warm-up epochs with q(c|x) fixed to the partition "
                        "(default 20)")
    p.add_argument("--gmm-restarts", type=_positive_int, default=None,
                   help="gmvae --init gmm: GaussianMixture restarts on the latent means (best "
                        "likelihood wins)")
    # vqvae
    p.add_argument("--codebook-size", type=_positive_int, default=64, help="vqvae: codes K")
    p.add_argument("--codes-per-input", type=_positive_int, default=4,
                   help="vqvae: latent vectors M per input")
    p.add_argument("--beta", type=_nonneg_float, default=0.25, help="vqvae: commitment weight")
    p.add_argument("--codebook-update", default="ema", choices=("ema", "grad"),
                   help="vqvae: codebook learned by moving averages (ema) or by its loss (grad)")
    p.add_argument("--figures-to", default=None,
                   help="tour: also copy the figures the derivations embed into this folder "
                        "(python run.py --figures-to derivations/figures regenerates them)")
    p.add_argument("--quick", action="store_true",
                   help="tiny budgets for every stage (seconds; for smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run folder (default runs/<model>-<timestamp>)")
    p.add_argument("--resume", default=None,
                   help="checkpoint .npz (or run folder) to continue training / to evaluate")
    p.add_argument("--checkpoint-every", type=_nonneg_int, default=0,
                   help="epochs between checkpoints (0: only at the end)")
    p.add_argument("--force", action="store_true",
                   help="allow --out to name a folder that already holds a run (it is overwritten)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--seeds", type=_positive_int, default=None,
                   help="compare / seeds: number of seeds (default 3)")
    # bench
    p.add_argument("--bench-steps", type=_positive_int, default=20)
    p.add_argument("--bench-batch", type=_positive_int, default=256)
    return p


def main(argv=None) -> int:
    from .backend import BackendError
    from .data import DataError
    from .experiment import UsageError
    from .train import CheckpointError

    args = build_parser().parse_args(argv)
    if args.model is None:
        if args.command in ("bench",):
            args.model = "vae"
        elif args.command in ("seeds",):
            build_parser().error("seeds needs --model (vae, fullcov, gmvae or vqvae)")
        else:
            args.model = "all"
    try:
        from .experiment import resolve_defaults

        args = resolve_defaults(args)
        from . import experiment as E

        if args.command == "train" and args.model in ("all", "kl"):
            res = E.main_all(args) if args.model == "all" else E.main_kl(args)
            print(json.dumps(res))
            return 0
        if args.command == "train":
            res = E.main_train(args)
            print(json.dumps({k: v for k, v in res.items() if not isinstance(v, (dict, list))},
                             default=str))
            return 0
        if args.command == "eval":
            res = E.main_eval(args)
        elif args.command == "compare":
            res = E.main_compare(args)
        elif args.command == "seeds":
            res = E.main_seeds(args)
        elif args.command == "gradcheck":
            res = E.main_gradcheck(args)
            print(json.dumps(res["summary"]))
            return 0 if res["ok"] else 1
        else:
            res = E.main_bench(args)
        print(json.dumps(res, default=str))
        return 0
    except (UsageError, DataError, CheckpointError, BackendError, FloatingPointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (checkpoints written so far are kept; continue with --resume)",
              file=sys.stderr)
        return 130
