"""What a training run (or ``eval``) adds to its folder after ``fit``, per model family:
figures, and the metrics that go with them.  Each function takes the fitted estimator, the data
set, the run folder and the data set's name, draws through ``scratchvae/plots.py`` and
``scratchvae/paperfigs.py`` and returns the extra entries of ``metrics.json`` (with
``figure_notes``: what was not drawn, and why, for the report)."""
from __future__ import annotations

import os

import numpy as np

from .. import paperfigs as P
from .. import plots


def _phases(est):
    return [*getattr(est, "phase_history_", {}).items(), ("train", est.history_)]


def _curve_and_reconstructions(est, ds, out, data_name) -> list:
    """curve.png (training and held-out loss, split into terms, every phase) and the
    reconstructions (one per class; feature by feature for non-image data).  -> notes."""
    P.curves(_phases(est), os.path.join(out, "curve.png"),
             f"{est.kind} on {data_name}: negative ELBO = reconstruction + KL, per epoch")
    n = min(2000, ds.x_test.shape[0])
    y = ds.y_test[:n] if ds.y_test is not None else None
    x = ds.x_test[:n]
    idx = P.one_per_class(y, min(10, n))
    xr = np.zeros_like(x)
    xr[idx] = est.reconstruct(x[idx])
    name = "reconstructions.png" if ds.image_shape is not None else "features.png"
    note = P.reconstructions_or_features(
        x, xr, y, ds.image_shape, os.path.join(out, name),
        f"{est.kind}: held-out inputs and reconstructions E[x | z = mu(x)]"
        + (", one per class" if y is not None else ""))
    return [note] if note else []


def vae_family(est, ds, out, data_name) -> dict:
    """Training curve, reconstructions, and decoder means of 30 prior samples."""
    notes = _curve_and_reconstructions(est, ds, out, data_name)
    if ds.image_shape is not None:
        m, b = est.model_, est.backend_
        z = b.rng("prior-samples").normal((30, m.J))
        xs = b.to_numpy(m.decode_mean(est.params_, z))
        plots.image_grid(xs, ds.image_shape, os.path.join(out, "samples.png"),
                         f"{est.kind}: decoder means E[x | z] of 30 prior samples z ~ N(0, I)")
    return {"figure_notes": notes} if notes else {}


def gmvae(est, ds, out, data_name) -> dict:
    """Clustering metrics (held-out and training split, when labels exist), mixture weights,
    samples per component, the latent means coloured by cluster (PCA, and a t-SNE beside the
    true labels), the confusion matrix after the Hungarian matching, ACC/NMI over training."""
    from ..metrics import clustering_metrics

    notes = _curve_and_reconstructions(est, ds, out, data_name)
    if not getattr(est, "phase_history_", None):
        notes.append("curve.png shows the ELBO phase only: a checkpoint keeps that phase's "
                     "history (the training run's history.csv has pretraining and warm-up too)")
    m, b, params = est.model_, est.backend_, est.params_
    track = est.__dict__.get("tracking_", {})
    pi = est.weights_
    res = {"reseeded_components": track.get("reseeded", 0), "pi": pi.tolist()}
    Xt = b.asarray(ds.x_test)
    yp_test = m.predict(params, Xt)
    if ds.y_test is not None:
        res.update(clustering_metrics(ds.y_test, yp_test))
        P.confusion(ds.y_test, yp_test, os.path.join(out, "confusion.png"),
                    f"gmvae on {data_name}: held-out clusters against labels")
    if ds.y_train is not None:
        yp_train = m.predict(params, b.asarray(ds.x_train))
        res.update({f"train_{k}": v
                    for k, v in clustering_metrics(ds.y_train, yp_train).items()})
    K, J = m.prior.K, m.J
    mu_c = est.means_
    if ds.image_shape is not None:
        sd_c = np.exp(0.5 * b.to_numpy(m.prior.logvar_c(b, params)))
        eps = b.to_numpy(b.rng("component-samples").normal((K, 10, J)))
        z = (mu_c[:, None, :] + sd_c[:, None, :] * eps).reshape(-1, J)
        xs = b.to_numpy(m.decode_mean(params, b.asarray(z)))
        plots.image_grid(xs, ds.image_shape, os.path.join(out, "samples.png"),
                         "gmvae: row c decodes z ~ N(mu_c, sigma_c^2 I)",
                         row_labels=[f"c={c} pi={pi[c]:.2f}" for c in range(K)])
    Z = b.to_numpy(m.latent_means(params, Xt))
    plots.latent_scatter(Z, yp_test, mu_c, os.path.join(out, "latent.png"),
                         "gmvae: test latent means (PCA to 2-D)", true_labels=ds.y_test)
    P.embedding(Z, yp_test, ds.y_test, os.path.join(out, "tsne.png"),
                f"gmvae on {data_name}: t-SNE of the held-out latent means")
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
    if notes:
        res["figure_notes"] = notes
    return res


def vqvae(est, ds, out, data_name) -> dict:
    """Metrics on the training split too, the vq_*.png figures (with a decoded atlas of the
    codes and samples from their empirical distribution) and the training curve."""
    res = {"train": est.model_.evaluate(est.params_, est.backend_.asarray(ds.x_train))}
    P.curves(_phases(est), os.path.join(out, "curve.png"),
             f"vqvae on {data_name}: recon + codebook + beta commit, per epoch",
             terms=(("recon", "reconstruction"),
                    ("commit", "commitment ||z_e - sg[e]||^2")), loss_label="VQ-VAE objective")
    if ds.image_shape is None:
        _curve_and_reconstructions_vq(est, ds, out)
        res["figure_notes"] = ["the data are not images; reconstructions are drawn feature by "
                               "feature (features.png) and no decoded codes are drawn"]
        return res
    res["figures"] = plots.vq_figures(est.model_, est.params_, ds, est.history_, out,
                                      est.backend_)
    m, b, params = est.model_, est.backend_, est.params_
    freq = P.vq_code_stats(est.transform(ds.x_train), m.K)

    def decode(k):
        return b.to_numpy(m.decode_mean(params, m.codes_to_z(params, b.asindex(k))))

    res["figures"] += [
        P.vq_atlas(decode, freq, ds.image_shape, os.path.join(out, "vq_atlas.png"),
                   "vqvae: the typical input's codes, one position changed to each of its "
                   "most used codes"),
        P.vq_empirical_samples(decode, freq, ds.image_shape,
                               os.path.join(out, "vq_samples_empirical.png"),
                               "vqvae: codes drawn from their training frequencies (each "
                               "position independently), decoded")]
    return res


def _curve_and_reconstructions_vq(est, ds, out):
    n = min(2000, ds.x_test.shape[0])
    y = ds.y_test[:n] if ds.y_test is not None else None
    x = ds.x_test[:n]
    P.reconstructions_or_features(x, est.reconstruct(x), y, None,
                                  os.path.join(out, "features.png"),
                                  "vqvae: held-out rows and reconstructions")
