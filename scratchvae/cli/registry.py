"""The models the command line knows: one :class:`ModelEntry` each, in one place.

An entry names its estimator (floor 6; its options become the command's flags), the options it
pins, the figures its run folder gets, its tiny gradcheck problems and its bench network (what
it refuses is the estimator's to say: ``Estimator.check``).  Everything has a default that fits a VAE-family model, so a
new model is one model file plus one line here (README, "Adding a model")::

    register(ModelEntry("betavae", VAE.variant("betavae", BetaVAE, BetaVAEConfig)))

No command branches on a model's name; what differs between models is a field of its entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import UsageError
from ..estimators import GMVAE, VAE, VQVAE
from . import figures

VADE_HIDDEN = (500, 500, 2000)


def _loss_fn(model, params, x, noise):
    """The function whose gradient ``loss_and_grads`` returns: the loss itself."""
    return lambda p: model.loss(p, x, noise)


def _vq_loss_fn(model, params, x, noise):
    """The straight-through gradient is the exact gradient of the surrogate in which the code
    assignment and the offset e_k - z_e are frozen at ``params``."""
    return model.surrogate_fn(params, x)


def _vae_bench(explicit: dict) -> dict:
    """The VaDE network 784-500-500-2000-J, mirrored decoder."""
    return {"latent_dim": explicit.get("latent_dim", 10), "hidden": VADE_HIDDEN, "act": "relu",
            "likelihood": "bernoulli", "n_samples": 1}


@dataclass
class ModelEntry:
    name: str
    estimator: type
    summary: str = ""
    fixed: dict = field(default_factory=dict)        # options this entry pins
    figures: Callable = figures.vae_family             # (est, ds, out, data_name) -> dict
    gradcheck_cases: tuple = ({"likelihood": "bernoulli"}, {"likelihood": "gaussian"})
    gradcheck_base: dict = field(default_factory=lambda: {
        "latent_dim": 3, "hidden": (5, 4), "act": "tanh", "n_samples": 2})
    gradcheck_prepare: Callable | None = None          # (model, params, rng): non-trivial params
    gradcheck_loss: Callable = _loss_fn
    bench: Callable = _vae_bench                        # explicit options -> bench options

    def make(self, explicit: dict | None = None, *, strict: bool = True, **runtime):
        """The estimator with the given options.  Names the estimator does not have are
        ignored (the tour passes every model the same command line); an option this entry pins
        is refused when ``strict`` (one model asked for), else left pinned (the tour)."""
        names = set(self.estimator().get_params())
        chosen = {k: v for k, v in {**(explicit or {}), **runtime}.items() if k in names}
        for k, v in self.fixed.items():
            if strict and k in chosen and chosen[k] != v:
                flag = "--" + k.replace("_", "-")
                raise UsageError(f"the {self.name} model always has {k} {v}; drop {flag} or "
                                 f"choose another --model")
            chosen[k] = v
        return self.estimator(**chosen)


def _gmvae_prepare(model, params, rng):
    K, J = model.prior.K, model.J
    params["prior.pi_logits"] = rng.normal((K,))
    params["prior.logvar_c"] = 0.5 * rng.normal((K, J))


def _vq_bench(explicit: dict) -> dict:
    """The PyTorch peer's network (784-500-500-16, one code per input) unless --latent-dim /
    --codebook-size say otherwise."""
    return {"latent_dim": explicit.get("latent_dim", 16), "codes_per_input": 1,
            "codebook_size": explicit.get("codebook_size", 64), "hidden": (500, 500),
            "act": "relu", "likelihood": "bernoulli",
            "codebook_update": explicit.get("codebook_update", "ema"),
            "beta": explicit.get("beta", 0.25)}


REGISTRY: dict = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Add (or replace) a model the command line can train, evaluate, check and time."""
    REGISTRY[entry.name] = entry
    return entry


register(ModelEntry("vae", VAE, "mean-field VAE (the assignment's §2 baseline)",
                    fixed={"posterior": "diag"}))
register(ModelEntry(
    "fullcov", VAE, "full-covariance posterior, z = mu + L eps (§2)",
    fixed={"posterior": "cholesky"},
    gradcheck_cases=tuple({**c, "cholesky_diag": d} for c in ({"likelihood": "bernoulli"},
                                                               {"likelihood": "gaussian"})
                          for d in ("softplus", "exp")),
    bench=lambda e: {**_vae_bench(e), "posterior": "cholesky"}))
register(ModelEntry(
    "gmvae", GMVAE, "Gaussian-mixture VAE with the clustering recipe (§3)",
    figures=figures.gmvae, gradcheck_prepare=_gmvae_prepare,
    gradcheck_base={"latent_dim": 3, "hidden": (5, 4), "act": "tanh", "n_samples": 2,
                    "clusters": 3},
    bench=lambda e: {**_vae_bench(e), "clusters": e.get("clusters", 10),
                     "posterior": e.get("posterior", "diag")}))
register(ModelEntry(
    "vqvae", VQVAE, "VQ-VAE: quantiser, straight-through estimator, codebook learning (§4)",
    figures=figures.vqvae, gradcheck_loss=_vq_loss_fn,
    gradcheck_base={"latent_dim": 3, "codes_per_input": 2, "codebook_size": 5,
                    "hidden": (5, 4), "act": "tanh", "codebook_update": "grad"},
    bench=_vq_bench))


def entry(name: str) -> ModelEntry:
    if name not in REGISTRY:
        raise UsageError(f"unknown model {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]
