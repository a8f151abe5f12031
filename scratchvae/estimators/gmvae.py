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
import warnings

import numpy as np
from sklearn.base import ClusterMixin

from ..errors import UsageError
from ..models.gmvae import GMVAE as GMVAEModel, GMVAEConfig, HeldEncoder
from ..options import ScoreOptions, spell
from ..recipe import ClusteringRecipe, epoch_hook, initialise
from .vae import VAE


AGREEMENT_WARN = 0.9   # warn when the final assignment keeps less of the starting partition


class GMVAE(ClusterMixin, VAE):
    """Gaussian-mixture VAE (VaDE) with the project's clustering recipe; scikit-learn's
    clustering interface (``fit``, ``predict``, ``predict_proba``, ``fit_predict``,
    ``labels_``).  Options: :class:`GMVAEOptions`."""

    model_class, config_class = GMVAEModel, GMVAEConfig
    kinds = ("gmvae",)
    option_groups = (ScoreOptions, ClusteringRecipe)
    train_defaults = {"epochs": 60, "lr": 2e-3, "lr_decay": 0.9}

    def recipe(self) -> ClusteringRecipe:
        return ClusteringRecipe(**{f.name: getattr(self.options, f.name)
                                   for f in dataclasses.fields(ClusteringRecipe)})

    def _check_data(self, Xh):
        """The recipe's options against each other and against the data.  An option counts as
        chosen when it differs from its default."""
        o, n, d = self.options, Xh.shape[0], self.Options()
        meta = {f.name: f.metadata for f in dataclasses.fields(o)}
        graph_only = ("anchor_epochs", "anchor_steps", "anchor_agreement", "anchor_tighten",
                      "graph_k")
        chosen = {k for k in graph_only + ("gmm_restarts",) if getattr(o, k) != getattr(d, k)}
        if o.clusters > n:
            raise UsageError(f"clusters={o.clusters} (--clusters) exceeds the {n} training "
                             "rows; use fewer clusters or more data")
        for k in graph_only:
            if o.init == "gmm" and k in chosen:
                raise UsageError(f"{spell(k, meta[k])} applies to init graph (the neighbour-graph "
                                 "partition and its warm-up); drop it or use init graph")
        if o.init == "graph" and "gmm_restarts" in chosen:
            raise UsageError(f"{spell('gmm_restarts', meta['gmm_restarts'])} applies to init "
                             "gmm; drop it or use init gmm")
        if o.likelihood == "gaussian" and Xh.min() >= 0.0 and Xh.max() <= 1.0:
            warnings.warn("every feature lies in [0, 1] and the likelihood is gaussian: on [0, 1] "
                          "images the learned pixel variances take over and the clusters fail "
                          "(bundled digits, 3 seeds: ACC 0.75 against 0.88 with bernoulli); use "
                          "likelihood='bernoulli' (--likelihood bernoulli) for [0, 1] data, and "
                          "gaussian for standardised real-valued features", stacklevel=4)
        D = int(np.prod(Xh.shape[1:]))
        if o.latent_dim > D and o.latent_dim != d.latent_dim:             # the default: quietly
            warnings.warn(f"latent_dim={o.latent_dim} is more than the {D} features: the code "
                          f"gets {D} dimensions (a code wider than its input is no compression; "
                          "metrics.json records latent_dim_used)", stacklevel=4)
        if o.init == "graph" and "graph_k" in chosen and o.graph_k >= n:   # the default is clipped
            raise UsageError(f"graph_k={o.graph_k} (--graph-k) needs more than {o.graph_k} "
                             f"training rows ({n} here); use a smaller graph_k")

    def _initialise(self, Xd, y):
        o = self.options
        self._new_hook(Xd, y)
        rep = initialise(self.model_, self.params_, Xd, self.recipe(), seed=int(o.random_state),
                         batch_size=int(o.batch_size), lr=float(o.lr), progress=o.verbose,
                         score=self.tracking_["score"])
        self.opt_ = rep.pop("optimizer", None)      # the recipe's optimiser trains on
        self.pretrained_codes_ = rep.pop("codes")
        self.phase_history_ = rep.pop("history", {})
        part = rep.pop("partition", None)
        if part is not None:
            self.partition_ = self.tracking_["partition"] = part
            if y is not None:                         # reported only, never used
                from ..metrics import cluster_acc

                rep["partition_acc"] = cluster_acc(y, part)
        rep["latent_dim_used"] = int(self.model_.J)  # at most the features (model_config)
        self.fit_info_ = rep

    def _new_hook(self, Xd, y):
        carried = self.__dict__.get("tracking_", {}).get("reseeded", 0)
        self._on_epoch, self.tracking_ = epoch_hook(self.model_, Xd, y, self.options.collapse_pi_min)
        self.tracking_["reseeded"] = carried

    def _epoch_hook(self, Xd, y):
        if "_on_epoch" not in self.__dict__ or self.step_ > 0:   # a warm start: this X and y
            self._new_hook(Xd, y)
        return self._on_epoch

    def model_config(self, D: int) -> dict:
        """The VAE's, with latent_dim at most the number of features: a code wider than its
        input is no compression (iris, 4 features, 3 seeds: ACC 0.838 with 10 latent
        dimensions, 0.907 with 4)."""
        cfg = super().model_config(D)
        cfg["latent_dim"] = min(int(cfg["latent_dim"]), int(D))
        return cfg

    @classmethod
    def options_from_meta(cls, meta) -> dict:
        out = super().options_from_meta(meta)
        out.setdefault("elbo_encoder", "trained")   # checkpoints from before the option trained it
        return out

    def _trained_model(self):
        """The ELBO stage's model: the codes held (default) or the encoder trained too."""
        if self.options.elbo_encoder != "held":
            return self.model_
        held = HeldEncoder(self.model_)
        if self.opt_ is not None:                  # the recipe's optimiser trains on
            held.hold(self.opt_)
        return held

    def _after_fit(self, Xd):
        self.labels_ = self.model_.predict(self.params_, Xd)
        self.__dict__.pop("_on_epoch", None)          # no reference to the data is kept
        self.tracking_.pop("score", None)             # nor the closure over it (pickling)
        part = self.__dict__.get("partition_")
        if part is not None and len(part) == len(self.labels_):
            from ..metrics import cluster_acc

            agree = cluster_acc(part, self.labels_)   # label-free: model vs its own start
            self.fit_info_["partition_agreement"] = agree
            if agree < AGREEMENT_WARN:
                warnings.warn(f"the GMVAE's final clusters agree with its starting partition on "
                              f"only {agree:.1%} of the training rows (below "
                              f"{AGREEMENT_WARN:.0%}): the ELBO stage moved away from the graph "
                              "partition; compare both (partition_ and labels_)", stacklevel=3)

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


GMVAE.Options = GMVAEOptions = GMVAE.options_class("GMVAEOptions")
GMVAEOptions.__doc__ = ("Options of :class:`GMVAE`: the network and mixture (clusters, var_min, "
                        "gamma, ...), training, scoring, the clustering recipe "
                        "(:class:`scratchvae.recipe.ClusteringRecipe`) and runtime.")
