"""Floor 5: the GMVAE clustering recipe as one driver, configured by a dataclass.

:func:`initialise` runs the phases before the ELBO of the assignment's §3.5 is trained
(autoencoder pretraining, the neighbour-graph partition or VaDE's GaussianMixture start, the
variance head, the anchored warm-up); :func:`epoch_hook` is the collapse guard run after every
epoch of that ELBO, and the label-only-for-reporting score.  The host-side steps they call are
in ``scratchvae/cluster.py``; the models in ``scratchvae/models/gmvae.py``.  Labels never steer
anything here.  [05-clustering-recipe.md#the-steps]
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .options import option
from .train import TrainConfig, fit


@dataclass
class ClusteringRecipe:
    pretrain_epochs: int = option(0, "autoencoder pretraining epochs before the mixture is "
                                     "fitted; 0: as many as pretrain_steps needs",
                                  check="nonneg")
    pretrain_steps: int = option(10000, "autoencoder pretraining length in Adam steps when "
                                       "pretrain_epochs is 0 (whole epochs, 30 to 300; 0 with "
                                       "pretrain_epochs 0: no pretraining)", check="nonneg")
    pretrain_dropout: float = option(0.0, "input dropout of the (denoising) pretraining "
                                          "autoencoder", check="fraction")
    pretrain_lr: float = option(1e-3, "Adam learning rate of the pretraining", check="positive")
    init: str = option("graph", "mixture initialisation: spectral partition of the consensus "
                                "neighbour graph of data and latent means, then the anchored "
                                "warm-up (graph), or GaussianMixture on the latent means (gmm)",
                       choices=("graph", "gmm"))
    graph_k: int = option(10, "init graph: neighbours per point in each k-NN graph",
                          check="positive")
    anchor_epochs: int = option(20, "init graph: warm-up epochs with q(c|x) fixed to the "
                                    "partition (0: none); left at 20, also at least "
                                    "anchor_steps Adam steps", check="nonneg")
    anchor_steps: int = option(240, "init graph: with anchor_epochs left at 20, the warm-up runs "
                                    "at least this many Adam steps (whole epochs, at most 300): "
                                    "20 epochs of the bundled digits, as many updates on "
                                    "smaller data", check="nonneg")
    anchor_agreement: float = option(0.98, "init graph: after the warm-up, the share of training "
                                           "rows whose own q(c|x) must pick their partition "
                                           "cluster; below it the warm-up runs again from its "
                                           "start with components sqrt(10) times narrower",
                                     check="unit")
    anchor_tighten: int = option(2, "init graph: at most this many such narrower warm-ups "
                                    "(0: never)", check="nonneg")
    gmm_restarts: int = option(10, "init gmm: GaussianMixture restarts on the latent means (best "
                                   "likelihood wins)", check="positive")
    elbo_encoder: str = option("held", "the ELBO stage: hold the codes mu(x) as the warm-up "
                                       "left them and train the decoder, the mixture and the "
                                       "posterior spread (held), or train the whole encoder too "
                                       "(trained, as VaDE)", choices=("held", "trained"))
    collapse_pi_min: float = option(0.1, "re-seed a component whose weight falls below this / K",
                                    check="nonneg")


ANCHOR_VAR_RATIO = 0.01   # the warm-up's components: this times their cluster's code scatter
TIGHTEN = 10 ** 0.5       # each further warm-up's components: this many times narrower


def initialise(model, params, X, r: ClusteringRecipe, *, seed: int, batch_size: int, lr: float,
               progress: bool = False, score=None) -> dict:
    """Pretrain, initialise the mixture and the variance head from the latent means, and (init
    "graph") run the anchored warm-up; ``params`` is updated in place.  Only ``X`` (device,
    (N, D)) is seen.  ``score(epoch, params)``, if given, is called after each warm-up epoch with
    epochs -A+1 .. 0 (for a figure).  Returns a report; its ``"partition"`` entry holds the
    graph partition's labels, ``"codes"`` the pretrained latent means (host arrays),
    ``"history"`` the per-epoch records of each phase, and ``"optimizer"`` the Adam state."""
    from .cluster import (graph_partition, init_logvar_head, init_mixture_from_codes,
                          init_mixture_from_partition)
    from .models.gmvae import PretrainAE

    t0 = time.perf_counter()
    rep = {"init": r.init}
    epochs = rep["pretrain_epochs"] = pretrain_epochs(r, X.shape[0], batch_size)
    A = anchor_epochs(r, X.shape[0], batch_size)
    if epochs > 0:
        pcfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=r.pretrain_lr)
        _, popt, _, ph = fit(PretrainAE(model, drop=r.pretrain_dropout), params, X, pcfg,
                             desc="gmvae pretrain", progress=progress, rng_tag="pretrain")
        rep["optimizer"] = popt      # one optimiser through every phase (see _anchored_warm_up)
        rep["pretrain_recon"] = ph[-1]["loss"]
        rep["history"] = {"pretrain": ph}
    Z = model.latent_means(params, X)
    rep["codes"] = Z                     # the pretrained latent means (host), for baselines
    if r.init == "gmm":
        rep.update(init_mixture_from_codes(model, params, Z, seed=seed, n_init=r.gmm_restarts))
        init_logvar_head(model, params, Z)
    else:
        Xh = model.b.to_numpy(X)
        labels, grep_ = graph_partition(Xh.reshape(Xh.shape[0], -1), Z, model.prior.K,
                                        k=r.graph_k, seed=seed)
        rep.update(grep_)
        init_logvar_head(model, params, Z)
        rep["partition"] = labels
        if A > 0:
            _anchored_rounds(model, params, X, Z, labels, r, A, rep, seed=seed,
                             batch_size=batch_size, lr=lr, progress=progress, score=score)
        else:                                     # no warm-up: the plain M-step (C.2)
            rep.update(init_mixture_from_partition(model, params, Z, labels, seed=seed,
                                                   var_ratio=1.0))
            rep["anchor_rounds"] = []
        rep["anchor_epochs"] = A
    rep["recipe_seconds"] = time.perf_counter() - t0
    return rep


def _anchored_rounds(model, params, X, Z, labels, r: ClusteringRecipe, A: int, rep: dict, *,
                     seed, batch_size, lr, progress, score):
    """The anchored warm-up (``A`` epochs) and its refit (C.3), again from its start with
    narrower components while the model would not keep the partition (C.5); ``params`` and
    ``rep`` (optimizer, history, anchor_loss, anchor_rounds) are updated in place.
    [05-clustering-recipe.md#when-the-warm-up-falls-short-again-narrower]"""
    from .cluster import em_destination, init_mixture_from_partition, refit_mixture

    ratio = ANCHOR_VAR_RATIO                      # narrow components: the pull of (C.2)
    # the warm-up may run again from here, narrower: keep the state it starts from
    start = (_snapshot(model, params, rep.get("optimizer"))
             if r.anchor_tighten and r.anchor_agreement > 0 else None)
    rounds, prev = [], None   # prev: the last round before a rerun (its score, state, history)
    rep["anchor_rounds"] = rounds
    while True:
        rep.update(init_mixture_from_partition(model, params, Z, labels, seed=seed,
                                               var_ratio=ratio, opt=rep.get("optimizer")))
        if rounds and score is not None:
            score(None, None)                     # forget the abandoned warm-up's scores
        ah, rep["optimizer"] = _anchored_warm_up(
            model, params, X, labels, A, batch_size, lr, progress, score, rep.get("optimizer"))
        rep["anchor_loss"] = ah[-1]["loss"]
        rep.setdefault("history", {})["warm-up"] = ah
        # the warm-up's components started narrow (C.2); the ELBO stage gets them as wide as
        # the codes they now hold (C.3)
        refit_mixture(model, params, X, labels, opt=rep.get("optimizer"))
        # (C.5): does the model's own assignment keep the partition?  (components carry the
        # partition's cluster indices, so this is plain agreement; label-free) ...
        agree = float(np.mean(model.predict(params, X) == labels))
        # ... and where the ELBO stage, which can only move the mixture, will take it
        dest, converged = em_destination(model, params, X)
        rounds.append({"var_ratio": ratio, "agreement": agree,
                       "agreement_em": float(np.mean(dest == labels)), "em_converged": converged})
        kept = min(agree, rounds[-1]["agreement_em"])
        if prev is not None and kept <= prev[0]:
            # narrower did not help: the round before it stands, and pays no more squeeze
            rounds[-1]["kept"] = False
            rep["optimizer"] = _restore(model, params, prev[1])
            rep["history"]["warm-up"], rep["anchor_loss"] = prev[2], prev[2][-1]["loss"]
            if score is not None:
                score(None, None)                 # (its per-epoch scores went with the rerun)
            return
        if kept >= r.anchor_agreement or len(rounds) > r.anchor_tighten:
            return
        if rep["init_var_floored"]:       # every component already at the variance floor:
            rounds[-1]["floored"] = True        # narrower would rerun the same warm-up
            return
        # not Gaussian enough in the codes: the warm-up again from where it started, its
        # components narrower (a stronger pull) -- not on from here, which squeezes twice
        ratio /= TIGHTEN
        prev = (kept, _snapshot(model, params, rep.get("optimizer")), ah)
        rep["optimizer"] = _restore(model, params, start)


def _snapshot(model, params, opt):
    """Copies of the parameters and of the optimiser (its moments and step count)."""
    import copy

    xp = model.b.xp
    return {k: xp.asarray(v, copy=True) for k, v in params.items()}, copy.deepcopy(opt)


def _restore(model, params, start):
    """``params`` (in place) and a fresh copy of the optimiser as :func:`_snapshot` kept them;
    returns the optimiser."""
    import copy

    kept, opt = start
    xp = model.b.xp
    params.update({k: xp.asarray(v, copy=True) for k, v in kept.items()})
    return copy.deepcopy(opt)


def pretrain_epochs(r: ClusteringRecipe, n_rows: int, batch_size: int) -> int:
    """The pretraining's epochs: ``r.pretrain_epochs`` when given, else enough whole epochs of
    ``batch_size`` for ``r.pretrain_steps`` Adam steps, at least 30 and at most 300 (none when
    both are 0).  A step budget, not an epoch count, because the embedding improves with the
    number of updates: 30 epochs are 360 steps on the bundled digits but 16 000 on all of MNIST.
    [05-clustering-recipe.md#pretraining-length]"""
    if r.pretrain_epochs > 0 or r.pretrain_steps == 0:
        return int(r.pretrain_epochs)
    return _epochs_for(r.pretrain_steps, n_rows, batch_size, least=30)


def _epochs_for(steps: int, n_rows: int, batch_size: int, least: int) -> int:
    """Whole epochs of ``batch_size`` over ``n_rows`` rows for ``steps`` Adam steps, at least
    ``least`` and at most 300."""
    per_epoch = -(-int(n_rows) // int(batch_size))
    return min(300, max(int(least), -(-int(steps) // per_epoch)))


def anchor_epochs(r: ClusteringRecipe, n_rows: int, batch_size: int) -> int:
    """The anchored warm-up's epochs: ``r.anchor_epochs`` when it is given (not the default
    20; 0: none), else at least 20 and at least enough whole epochs of ``batch_size`` for
    ``r.anchor_steps`` Adam steps, at most 300.  On a small table 20 epochs are 20-40 steps,
    too few to reshape the codes (iris, 120 training rows, seed 0: the model's own clustering
    0.617 after 20 epochs, 0.717 = the partition's after 300).
    [05-clustering-recipe.md#the-anchored-warm-up]"""
    if r.anchor_epochs != ClusteringRecipe.anchor_epochs:
        return int(r.anchor_epochs)
    return _epochs_for(r.anchor_steps, n_rows, batch_size, least=r.anchor_epochs)


def _anchored_warm_up(model, params, X, labels, epochs, batch_size, lr, progress, score,
                      opt=None):
    """``epochs`` epochs of the ELBO with q(c|x) = one-hot(labels); returns its history and
    the optimiser.  The optimiser is the pretraining's, carried on, and the ELBO stage carries
    it on again: a fresh Adam's first steps move every weight by about the learning rate
    whatever its gradient (m/sqrt(v) = +-1 at step 1), which broke a perfect partition of four
    blobs within one epoch (ACC 1.0 -> 0.5, tests/test_gmvae.py
    test_gmvae_keeps_a_perfect_partition)."""
    from .models.gmvae import AnchoredGMVAE

    anch = AnchoredGMVAE(model)
    Q = model.b.one_hot(model.b.asindex(labels), model.prior.K)
    acfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr)
    on_anchor = (None if score is None else
                 (lambda rec, p, o: score(rec["epoch"] - epochs, p)))   # epochs -A+1 .. 0
    _, opt, _, ah = fit(anch, params, anch.pack(X, Q), acfg, desc="gmvae anchored warm-up",
                        progress=progress, rng_tag="anchor", on_epoch=on_anchor, opt=opt)
    return ah, opt


def epoch_hook(model, X, y, pi_min: float = 0.1):
    """``(on_epoch, track)``: after every epoch ``on_epoch`` assigns every row (argmax q(c|x)),
    runs the collapse guard with those counts, records the agreement of the assignment with the
    starting partition (``track["partition"]``, when the recipe made one; label-free) and, when
    labels ``y`` exist, the training ACC/NMI -- labels are only ever reported, never used to
    choose anything.  ``track["score"](epoch, params)`` records ACC/NMI alone (the warm-up
    calls it; ``score(None, None)`` drops the warm-up's records when it starts again)."""
    from .cluster import collapse_guard
    from .metrics import cluster_acc, clustering_metrics

    track = {"epoch": [], "acc": [], "nmi": [], "reseeded": 0, "partition": None}

    def score(epoch, params, labels=None):
        if epoch is None:                         # a warm-up starts again: drop its records
            keep = [i for i, e in enumerate(track["epoch"]) if e > 0]
            for k in ("epoch", "acc", "nmi"):
                track[k] = [track[k][i] for i in keep]
            return None
        if y is None:
            return None
        cm = clustering_metrics(y, model.predict(params, X) if labels is None else labels)
        track["epoch"].append(epoch)
        track["acc"].append(cm["acc"])
        track["nmi"].append(cm["nmi"])
        return cm["acc"]

    def on_epoch(rec, params, opt):
        labels = model.predict(params, X)
        counts = np.bincount(labels, minlength=model.prior.K)
        n = collapse_guard(model, params, pi_min=pi_min, opt=opt, counts=counts)
        if n:
            track["reseeded"] += n
            rec["reseeded"] = n
            labels = model.predict(params, X)
        if track["partition"] is not None:
            rec["partition_agreement"] = cluster_acc(track["partition"], labels)
        acc = score(rec["epoch"], params, labels)
        if acc is not None:
            rec["train_acc"] = acc

    track["score"] = score
    return on_epoch, track
