"""What a training run adds to its folder after ``fit``, per model family: figures, and the
metrics that go with them.  Each function takes the fitted estimator, the data set, the run
folder and the data set's name, draws through ``scratchvae/plots.py`` and returns the extra
entries of ``metrics.json``."""
from __future__ import annotations

import os

import numpy as np

from .. import plots


def _curve_and_reconstructions(est, ds, out, data_name, what="training loss (negative ELBO)"):
    plots.training_curve(est.history_, os.path.join(out, "curve.png"),
                         f"{est.kind}: {what} on {data_name}")
    n = min(10, ds.x_test.shape[0])
    plots.reconstructions(ds.x_test[:n], est.reconstruct(ds.x_test[:n]), ds.image_shape,
                          os.path.join(out, "reconstructions.png"),
                          f"{est.kind}: test images and reconstructions E[x | z = mu]")


def vae_family(est, ds, out, data_name) -> dict:
    """Training curve, reconstructions, and decoder means of 30 prior samples."""
    _curve_and_reconstructions(est, ds, out, data_name)
    m, b = est.model_, est.backend_
    z = b.rng("prior-samples").normal((30, m.J))
    xs = b.to_numpy(m.decode_mean(est.params_, z))
    plots.image_grid(xs, ds.image_shape, os.path.join(out, "samples.png"),
                     f"{est.kind}: decoder means of 30 prior samples z ~ N(0, I)")
    return {}


def gmvae(est, ds, out, data_name) -> dict:
    """Clustering metrics (held-out and training split, when labels exist), mixture weights,
    samples per component, the latent means coloured by cluster, ACC/NMI over training."""
    from ..metrics import clustering_metrics

    _curve_and_reconstructions(est, ds, out, data_name)
    m, b, params = est.model_, est.backend_, est.params_
    track = est.__dict__.get("tracking_", {})
    pi = est.weights_
    res = {"reseeded_components": track.get("reseeded", 0), "pi": pi.tolist()}
    Xt = b.asarray(ds.x_test)
    yp_test = m.predict(params, Xt)
    if ds.y_test is not None:
        res.update(clustering_metrics(ds.y_test, yp_test))
    if ds.y_train is not None:
        yp_train = m.predict(params, b.asarray(ds.x_train))
        res.update({f"train_{k}": v
                    for k, v in clustering_metrics(ds.y_train, yp_train).items()})
    K, J = m.prior.K, m.J
    mu_c = est.means_
    sd_c = np.exp(0.5 * b.to_numpy(m.prior.logvar_c(b, params)))
    eps = b.to_numpy(b.rng("component-samples").normal((K, 10, J)))
    z = (mu_c[:, None, :] + sd_c[:, None, :] * eps).reshape(-1, J)
    xs = b.to_numpy(m.decode_mean(params, b.asarray(z)))
    plots.image_grid(xs, ds.image_shape, os.path.join(out, "samples.png"),
                     "gmvae: row c decodes z ~ N(mu_c, sigma_c^2 I)",
                     row_labels=[f"c={c} pi={pi[c]:.2f}" for c in range(K)])
    plots.latent_scatter(m.latent_means(params, Xt), yp_test, mu_c,
                         os.path.join(out, "latent.png"),
                         "gmvae: test latent means (PCA to 2-D)", true_labels=ds.y_test)
    plots.bar(pi, os.path.join(out, "weights.png"), "gmvae: mixture weights pi_c",
              "component c", "pi_c")
    if track.get("epoch"):
        warm = min(track["epoch"]) <= 0
        plots.series(track["epoch"], {"ACC": track["acc"], "NMI": track["nmi"]},
                     os.path.join(out, "clustering.png"),
                     "gmvae: clustering of the training set over training",
                     "epoch (<= 0: anchored warm-up, q(c|x) = graph partition)" if warm else "epoch",
                     "score", vline=0.5 if warm else None,
                     vline_label="q(c|x) = p(c|z) from here" if warm else None)
    return res


def vqvae(est, ds, out, data_name) -> dict:
    """Metrics on the training split too, the vq_*.png figures and the training curve."""
    res = {"train": est.model_.evaluate(est.params_, est.backend_.asarray(ds.x_train))}
    res["figures"] = plots.vq_figures(est.model_, est.params_, ds, est.history_, out,
                                      est.backend_)
    plots.training_curve(est.history_, os.path.join(out, "curve.png"),
                         f"vqvae: training loss (recon + codebook + beta commit) on {data_name}")
    return res
