"""Floor 5: every option of every estimator, declared once.

An estimator's options are one flat dataclass (:func:`make_options`) made of

* the fields of its model's config dataclass (``scratchvae/models/*.py``), except ``D``, which
  the data decide -- so a new model's new config field is an option with no further code;
* :class:`TrainOptions` (epochs, learning rate, ...), with per-model defaults, and
  :class:`ScoreOptions` for the models scored by importance sampling;
* extra groups, such as the GMVAE's :class:`scratchvae.recipe.ClusteringRecipe`;
* :class:`RuntimeOptions` (backend, dtype, seed).

Each field carries its help text and its check in ``metadata``; the command line builds its
flags from the same fields (``scratchvae/cli/options.py``), so a default, a help text or a range
is written in one place, and the library and the command line refuse the same values with the
same sentence.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from .errors import UsageError

CHECKS = {  # name -> (test, what the value must be)
    "positive": (lambda v: v > 0, "positive"),
    "nonneg": (lambda v: v >= 0, ">= 0"),
    "fraction": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "unit": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
}


def option(default, help: str, *, check: str | None = None, choices=None, flag: str | None = None,
           cli: bool = True):
    """A dataclass field with its help text, range check, allowed values and command-line flag
    (default ``--name-with-dashes``); ``cli=False`` keeps it out of the command line."""
    return field(default=default, metadata={"help": help, "check": check, "choices": choices,
                                            "flag": flag, "cli": cli})


def about(help: str, **kw) -> dict:
    """The metadata of an option whose field (and default) lives elsewhere: a model config."""
    return {"help": help, "check": kw.get("check"), "choices": kw.get("choices"),
            "flag": kw.get("flag"), "cli": kw.get("cli", True)}


def flag_of(name: str, meta=None) -> str:
    """The command-line spelling of an option."""
    return (meta or {}).get("flag") or "--" + name.replace("_", "-")


def spell(name: str, meta=None) -> str:
    """An option named for both audiences: ``clusters (--clusters)``."""
    return f"{name} ({flag_of(name, meta)})"


@dataclass
class TrainOptions:
    epochs: int = option(60, "training epochs (GMVAE: only the final ELBO phase; its "
                         "pretraining and anchored warm-up epochs are separate options: "
                         "pretrain_epochs (--pretrain-epochs) or pretrain_steps "
                         "(--pretrain-steps), and anchor_epochs (--anchor-epochs))", check="positive")
    batch_size: int = option(128, "minibatch size (GMVAE: every phase)", check="positive")
    lr: float = option(1e-3, "Adam learning rate (GMVAE: of the warm-up and ELBO phases; the "
                       "pretraining has pretrain_lr, --pretrain-lr)", check="positive")
    lr_decay: float = option(1.0, "multiply the learning rate by this every decay_every epochs "
                             "(GMVAE: in the ELBO phase)", check="positive")
    decay_every: int = option(10, "epochs between learning-rate decays", check="positive")
    checkpoint_every: int = option(0, "epochs between checkpoints (0: only at the end; GMVAE: "
                                   "during the ELBO phase)", check="nonneg")


@dataclass
class ScoreOptions:
    iwae_k: int = option(200, "importance samples of the held-out log-likelihood bound",
                         check="positive")


@dataclass
class RuntimeOptions:
    backend: str = option("numpy", "array library", choices=("numpy", "cupy", "strict"))
    dtype: str = option("float32", "float type (float32 to train, float64 to check gradients)",
                        choices=("float32", "float64"))
    random_state: int = option(0, "seed of every random draw (initialisation, minibatches, "
                                  "noise)", check="nonneg", flag="--seed")
    verbose: bool = option(False, "progress bars while training", cli=False)
    warm_start: bool = option(False, "fit continues from the fitted (or loaded) state instead of "
                                     "starting afresh", cli=False)


# Help texts and checks of the model configs' fields (the models' own files stay free of
# command-line concerns).  A config field missing here is still an option, with a plain help.
MODEL_FIELDS = {
    "latent_dim": about("latent size J (VQ-VAE: size of each code vector)", check="positive"),
    "hidden": about("hidden layer sizes of the encoder (the decoder mirrors them), "
                    "e.g. 500,500,2000"),
    "act": about("hidden activation", choices=("relu", "tanh", "softplus")),
    "likelihood": about("p(x|z): bernoulli (data in [0, 1]) or gaussian (any "
                        "real data)", choices=("bernoulli", "gaussian")),
    "posterior": about("q(z|x) head: mean-field (diag) or full covariance (cholesky)",
                       choices=("diag", "cholesky")),
    "n_samples": about("Monte Carlo samples L per example in the ELBO", check="positive",
                       flag="--samples"),
    "cholesky_diag": about("activation of the Cholesky factor's diagonal "
                           "(softplus + 1e-5, or exp)", choices=("softplus", "exp")),
    "clusters": about("mixture components K", check="positive"),
    "var_min": about("floor of the component variances", check="positive"),
    "gamma": about("q(c|x): p(c|z) averaged over the samples (the assignment's "
                   "§3.3) or the ELBO's exact maximiser softmax(log pi - T/2)",
                   choices=("sample", "optimal")),
    "codes_per_input": about("latent vectors M per input", check="positive"),
    "codebook_size": about("codes K in the codebook", check="positive"),
    "beta": about("weight of the commitment term", check="nonneg"),
    "codebook_update": about("codebook learned by moving averages (ema) or by its loss "
                             "(grad)", choices=("ema", "grad")),
    "decay": about("EMA decay of the codebook statistics", check="fraction"),
    "ema_eps": about("Laplace smoothing of the EMA counts", check="nonneg"),
    "dead_after": about("steps unused after which a code is dead", check="positive"),
    "restart": about("re-seed dead codes at recent encoder outputs"),
    "restart_every": about("steps between dead-code checks", check="positive"),
    "kmeans_init": about("k-means codebook from the first batch's encoder outputs"),
    "kmeans_iters": about("k-means iterations of kmeans_init", check="positive"),
}


def _copy(f, default):
    """A fresh field with ``f``'s metadata and the given default."""
    return field(default=default, metadata=f.metadata)


def make_options(name: str, model_config, *groups, defaults: dict | None = None, doc: str = "",
                 module: str = __name__):
    """The options dataclass of an estimator: the model config's fields (minus ``D``), then
    :class:`TrainOptions`, ``groups``, :class:`RuntimeOptions`; ``defaults`` overrides their
    defaults (per-model epochs, learning rate, ...)."""
    defaults = dict(defaults or {})
    specs = []
    for f in dataclasses.fields(model_config):
        if f.name == "D":
            continue
        meta = MODEL_FIELDS.get(f.name) or about(f"model option {f.name} (see "
                                                  f"{model_config.__name__})")
        specs.append((f.name, field(default=f.default, metadata=meta)))
    for g in (TrainOptions, *groups, RuntimeOptions):
        specs += [(f.name, _copy(f, f.default)) for f in dataclasses.fields(g)]
    names = [n for n, _ in specs]
    unknown = set(defaults) - set(names)
    if unknown:
        raise TypeError(f"defaults for unknown options {sorted(unknown)}")
    specs = [(n, _copy(f, defaults.pop(n)) if n in defaults else f) for n, f in specs]
    cls = dataclasses.make_dataclass(name, [(n, type(f.default), f) for n, f in specs])
    cls.__doc__ = doc or f"Options of an estimator: {', '.join(names)}."
    cls.__module__ = module          # where the class is reachable by name (pickle)
    return cls


def check_options(opts) -> None:
    """Raise :class:`UsageError` (one sentence) for the first option value that cannot work."""
    for f in dataclasses.fields(opts):
        v, meta = getattr(opts, f.name), f.metadata
        kind, who = type(f.default), f"{f.name}={v!r} ({flag_of(f.name, meta)})"
        if kind is tuple:
            ok = (isinstance(v, (tuple, list)) and len(v) > 0
                  and all(isinstance(t, numbers.Integral) and not isinstance(t, bool) and t >= 1
                          for t in v))
            if not ok:
                raise UsageError(f"{who}: give a non-empty sequence of positive integers, "
                                 "e.g. (256, 256)")
            continue
        if kind is bool:
            if not isinstance(v, (bool, np.bool_)):
                raise UsageError(f"{who}: must be True or False")
            continue
        if kind in (int, float):
            want = numbers.Integral if kind is int else numbers.Real
            if not isinstance(v, want) or isinstance(v, (bool, np.bool_)) or not math.isfinite(v):
                raise UsageError(f"{who}: must be {'an integer' if kind is int else 'a finite number'}")
        if meta.get("choices") and v not in meta["choices"]:
            raise UsageError(f"{who}: choose one of {', '.join(map(str, meta['choices']))}")
        check = meta.get("check")
        if check and not CHECKS[check][0](v):
            raise UsageError(f"{who}: must be {CHECKS[check][1]}")


def plain(v):
    """An option value as plain JSON-able Python (NumPy scalars and tuples included)."""
    if isinstance(v, (tuple, list)):
        return [plain(t) for t in v]
    return v.item() if isinstance(v, np.generic) else v
