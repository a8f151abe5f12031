"""Floor 6: the Gaussian-mixture VAE as a clustering estimator (the assignment's §3).

    est = GMVAE(clusters=4).fit(X)       # the whole recipe: pretraining, graph partition,
    labels = est.predict(X)              #   anchored warm-up, the ELBO, the collapse guard
    est.predict_proba(X)                 # q(c|x) at z = mu(x)
    GMVAE.load(est.save("gm.npz")).predict(X)   # the same labels

``fit`` runs :func:`scratchvae.recipe.initialise` and then trains the ELBO of eq. 3.5 with
:func:`scratchvae.recipe.epoch_hook` after every epoch; labels passed as ``y`` are only scored.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import UsageError
from ..models.gmvae import GMVAE as GMVAEModel, GMVAEConfig
from ..options import make_options
from ..recipe import ClusteringRecipe, epoch_hook, initialise
from .vae import VAE

_TRAIN_DEFAULTS = {"epochs": 60, "lr": 2e-3, "lr_decay": 0.9}
GMVAEOptions = make_options(
    "GMVAEOptions", GMVAEConfig, ClusteringRecipe, defaults=_TRAIN_DEFAULTS,
    doc="Options of :class:`GMVAE`: the network and mixture (clusters, var_min, gamma, ...), "
        "training, the clustering recipe (:class:`scratchvae.recipe.ClusteringRecipe`) and "
        "runtime.")


class GMVAE(VAE):
    """Gaussian-mixture VAE (VaDE) with the project's clustering recipe; scikit-learn's
    clustering interface (``fit``, ``predict``, ``predict_proba``, ``fit_predict``)."""

    Options = GMVAEOptions
    model_class, config_class = GMVAEModel, GMVAEConfig
    kinds = ("gmvae",)
    option_groups = (ClusteringRecipe,)
    train_defaults = _TRAIN_DEFAULTS

    @property
    def kind(self) -> str:
        return self.kinds[0]

    def recipe(self) -> ClusteringRecipe:
        return ClusteringRecipe(**{f.name: getattr(self.options, f.name)
                                   for f in dataclasses.fields(ClusteringRecipe)})

    def _check_data(self, Xh):
        if self.options.clusters > Xh.shape[0]:
            raise UsageError(f"clusters={self.options.clusters} exceeds the {Xh.shape[0]} "
                             "training rows; use fewer clusters or more data")

    def _initialise(self, Xd, y):
        o = self.options
        self._on_epoch, self.tracking_ = epoch_hook(self.model_, Xd, y, o.collapse_pi_min)
        rep = initialise(self.model_, self.params_, Xd, self.recipe(), seed=o.random_state,
                         batch_size=o.batch_size, lr=o.lr, progress=o.verbose,
                         score=self.tracking_["score"])
        part = rep.pop("partition", None)
        if part is not None:
            self.partition_ = part
            if y is not None:                         # reported only, never used
                from ..metrics import cluster_acc

                rep["partition_acc"] = cluster_acc(y, part)
        self.fit_info_ = rep

    def _epoch_hook(self, Xd, y):
        if "tracking_" not in self.__dict__:          # warm start: a fresh guard
            self._on_epoch, self.tracking_ = epoch_hook(self.model_, Xd, y,
                                                        self.options.collapse_pi_min)
        return self._on_epoch

    def _meta_extra(self) -> dict:
        return {"fit_info": {k: v for k, v in self.fit_info_.items()
                             if isinstance(v, (int, float, str, bool, list))}}

    def predict_proba(self, X):
        """q(c|x) at z = mu(x), (n_samples, clusters); rows sum to 1."""
        Xd = self._rows(X)
        return self._batched(lambda xb: self.model_.gamma(self.params_, xb), Xd)

    def predict(self, X):
        """Cluster of each row: argmax_c q(c|x), (n_samples,) int64."""
        Xd = self._rows(X)
        return self.model_.predict(self.params_, Xd)

    def fit_predict(self, X, y=None, **fit_kw):
        return self.fit(X, y, **fit_kw).predict(X)

    @property
    def weights_(self) -> np.ndarray:
        """Mixture weights pi_c, (clusters,)."""
        self._require_fitted()
        b = self.backend_
        return np.exp(b.to_numpy(self.model_.prior.log_pi(b, self.params_)))

    @property
    def means_(self) -> np.ndarray:
        """Component means mu_c in the latent space, (clusters, latent_dim)."""
        self._require_fitted()
        return self.backend_.to_numpy(self.params_["prior.mu_c"])

    def sample(self, n_samples: int = 1, random_state: int = 0):
        """``(X, c)``: decoder means of ``n_samples`` draws c ~ Cat(pi), z ~ N(mu_c, var_c)
        and their components c (as scikit-learn's ``GaussianMixture.sample``)."""
        self._require_fitted()
        b, xp, prior, n = self.backend_, self.backend_.xp, self.model_.prior, int(n_samples)
        w = self.weights_
        c = np.random.default_rng(random_state).choice(prior.K, size=n, p=w / w.sum())
        ci = b.asindex(c)
        mu = xp.take(self.params_["prior.mu_c"], ci, axis=0)                     # (n, J)
        sd = xp.exp(0.5 * xp.take(prior.logvar_c(b, self.params_), ci, axis=0))
        z = mu + sd * b.rng("sample", random_state).normal((n, self.model_.J))
        return b.to_numpy(self.model_.decode_mean(self.params_, z)), c

    def evaluate(self, X, y=None, *, k: int | None = None) -> dict:
        """The VAE's metrics, plus ACC / NMI / ARI against ``y`` when given."""
        res = super().evaluate(X, k=k)
        if y is not None:
            from ..metrics import clustering_metrics

            res.update(clustering_metrics(self._check_y(y, np.shape(X)[0]), self.predict(X)))
        return res
