"""The library: scikit-learn-style estimators over the hand-written models.

The README's example must cluster blobs; a saved estimator must predict the same; the command
line must be a thin client (same options, same parameters); resuming must equal not stopping;
bad input must be one ValueError sentence."""
import json

import numpy as np
import pytest

import scratchvae
from scratchvae import GMVAE, VAE, VQVAE, load
from scratchvae.data import load_dataset


def _blobs():
    from sklearn.datasets import make_blobs

    X, y = make_blobs(1000, 20, centers=4, random_state=0)
    return (X - X.min(0)) / (X.max(0) - X.min(0)), y


def test_readme_example_clusters_blobs_and_load_predicts_the_same(tmp_path):
    from sklearn.metrics import adjusted_rand_score

    X, y = _blobs()
    est = GMVAE(clusters=4).fit(X)
    labels = est.predict(X)
    assert adjusted_rand_score(y, labels) >= 0.95
    path = est.save(tmp_path / "gm.npz")
    again = GMVAE.load(path)
    np.testing.assert_array_equal(again.predict(X), labels)
    assert type(load(path)) is GMVAE and again.get_params() == est.get_params()
    proba = again.predict_proba(X[:50])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(proba.argmax(axis=1), labels[:50])


def test_cli_is_a_thin_client_of_the_estimator(tmp_path, no_drawing):
    """`run.py train` with some options and the estimator with the same options train the
    same parameters, bit for bit."""
    from scratchvae.cli import main
    from scratchvae.train import load_checkpoint

    out = tmp_path / "run"
    assert main(["--model", "fullcov", "--epochs", "2", "--hidden", "16", "--latent-dim", "3",
                 "--iwae-k", "5", "--seed", "3", "--limit", "300", "--quiet",
                 "--out", str(out)]) == 0
    ds = load_dataset("digits", limit=300)
    est = VAE(posterior="cholesky", epochs=2, hidden=(16,), latent_dim=3, iwae_k=5,
              random_state=3).fit(ds.x_train)
    params, _, info = load_checkpoint(out / "checkpoint.npz")
    assert set(params) == set(est.params_)
    for k, v in params.items():
        np.testing.assert_array_equal(v, est.params_[k])
    m = json.loads((out / "metrics.json").read_text())
    assert m["iwae_ll"] == est.evaluate(ds.x_test)["iwae_ll"]
    assert type(load(out / "checkpoint.npz")) is VAE and info["meta"]["model"] == "fullcov"


@pytest.mark.parametrize("cls,kw", [(VAE, {}), (VQVAE, {}),
                                    (GMVAE, {"clusters": 3, "pretrain_epochs": 1,
                                             "anchor_epochs": 1})])
def test_warm_start_continues_exactly(cls, kw, tmp_path):
    """2 epochs, save, load, 2 more (warm_start) == 4 epochs without stopping."""
    ds = load_dataset("digits", limit=200)
    common = dict(hidden=(16,), latent_dim=3, batch_size=64, dtype="float64", **kw)
    straight = cls(epochs=4, **common).fit(ds.x_train)
    half = cls(epochs=2, **common).fit(ds.x_train)
    resumed = cls.load(half.save(tmp_path / "half.npz"))
    resumed.set_params(epochs=4, warm_start=True).fit(ds.x_train)
    assert resumed.step_ == straight.step_
    for k, v in straight.params_.items():
        np.testing.assert_array_equal(resumed.params_[k], v, err_msg=k)


def test_methods_and_their_mathematics():
    ds = load_dataset("digits", limit=300)
    vae = VAE(epochs=3, hidden=(32,), latent_dim=4, iwae_k=20).fit(ds.x_train)
    ev = vae.evaluate(ds.x_test)
    assert ev["iwae_ll"] >= ev["elbo"]                    # the importance-weighted bound is tighter
    assert ev["kl"] > 0 and vae.score(ds.x_test) == ev["iwae_ll"]
    assert vae.transform(ds.x_test).shape == (ds.x_test.shape[0], 4)
    r = vae.reconstruct(ds.x_test[:5])
    assert r.shape == (5, 64) and r.min() >= 0 and r.max() <= 1      # Bernoulli means
    assert vae.sample(7).shape == (7, 64)
    np.testing.assert_array_equal(vae.sample(3, random_state=1), vae.sample(3, random_state=1))
    q = VQVAE(epochs=2, hidden=(32,), codebook_size=8, codes_per_input=2).fit(ds.x_train)
    codes = q.transform(ds.x_test)
    assert codes.shape == (ds.x_test.shape[0], 2) and codes.min() >= 0 and codes.max() < 8
    ev = q.evaluate(ds.x_test)
    assert q.score(ds.x_test) == pytest.approx(-(ev["recon"] + 2 * np.log(8)))
    g = GMVAE(epochs=2, pretrain_epochs=2, anchor_epochs=1, hidden=(32,), latent_dim=3,
              clusters=5).fit(ds.x_train, ds.y_train)
    xs, c = g.sample(40)
    assert xs.shape == (40, 64) and c.shape == (40,) and set(c) <= set(range(5))
    np.testing.assert_allclose(g.weights_.sum(), 1.0, rtol=1e-6)
    assert {"acc", "nmi", "ari", "iwae_ll"} <= set(g.evaluate(ds.x_test, ds.y_test))
    assert "partition_acc" in g.fit_info_ and "train_acc" in g.history_[-1]


def test_scikit_learn_protocol():
    from sklearn.base import clone

    est = GMVAE(clusters=3, lr=5e-4)
    c = clone(est)
    assert c.get_params() == est.get_params() and c is not est
    assert est.clusters == 3 and est.set_params(clusters=5).clusters == 5
    assert "clusters=5" in repr(est)
    opts = scratchvae.GMVAEOptions(clusters=2, epochs=3)
    assert GMVAE(opts, lr=0.1).get_params()["epochs"] == 3


def test_bad_input_is_one_value_error_sentence():
    X, _ = _blobs()
    with pytest.raises(ValueError, match="no option 'n_cluster'"):
        GMVAE(n_cluster=3)
    for kw, says in (({"epochs": 0}, r"epochs=0 \(--epochs\): must be positive"),
                     ({"lr": float("inf")}, "must be a finite number"),
                     ({"likelihood": "poisson"}, "choose one of bernoulli, gaussian"),
                     ({"hidden": (16, -1)}, "positive integers"),
                     ({"clusters": 5000}, r"clusters=5000 \(--clusters\) exceeds the 1000 "),
                     ({"init": "gmm", "anchor_epochs": 7}, r"anchor_epochs \(--anchor-epochs\) "
                                                           "applies to init graph"),
                     ({"gmm_restarts": 3}, "applies to init gmm"),
                     ({"graph_k": 5000}, r"graph_k=5000 \(--graph-k\) needs more than")):
        with pytest.raises(scratchvae.ScratchVAEError, match=says):
            GMVAE(**{"epochs": 1, "pretrain_epochs": 1, **kw}).fit(X)
    bad = X.copy()
    bad[[3, 17], 0] = np.nan
    with pytest.raises(scratchvae.DataError, match=r"rows 3, 17"):
        VAE(epochs=1).fit(bad)
    with pytest.raises(scratchvae.DataError, match=r"outside \[0, 1\].*gaussian"):
        VAE(epochs=1).fit(3 * X)
    with pytest.raises(scratchvae.DataError, match="2-D"):
        VAE(epochs=1).fit(X[:, 0])
    with pytest.raises(scratchvae.NotFittedError, match="not fitted"):
        VAE().transform(X)
    with pytest.raises(scratchvae.NotFittedError):
        VAE().params_
    est = VAE(epochs=1, hidden=(8,)).fit(X)
    with pytest.raises(scratchvae.DataError, match="5 features but this model was trained on 20"):
        est.transform(X[:, :5])
    assert issubclass(scratchvae.ScratchVAEError, ValueError)


def test_every_option_is_a_flag_with_its_help():
    """The command line is built from the options: every estimator option (but verbose and
    warm_start) has a flag, and --help shows each model's own default."""
    import dataclasses

    import re

    from scratchvae.cli.options import build_parser, option_table
    from scratchvae.cli.registry import REGISTRY

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train._actions}
    helps = {a.dest: a.help for a in train._actions}
    for e in REGISTRY.values():
        for f in dataclasses.fields(e.estimator.Options):
            if f.name in ("verbose", "warm_start", "random_state"):
                continue
            assert f.name in dests, (e.name, f.name)
    assert "seed" in dests
    # the help text names every model's own default: parse it back and compare
    table = option_table()
    for name, (f, per_model) in table.items():
        m = re.search(r"\(default ([^;)]*)((?:; [\w-]+: [^;)]*)*)(?:; for [^)]*)?\)$", helps[name])
        assert m, (name, helps[name])
        said = dict(re.findall(r"; ([\w-]+): ([^;)]*)", m.group(2)))
        for model, default in per_model.items():
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
            assert said.get(model, m.group(1)) == shown, (name, model, helps[name])
    assert "vqvae: 8" in helps["latent_dim"] and "gmvae: 0.002" in helps["lr"]


def test_warm_start_refuses_what_it_cannot_continue():
    ds = load_dataset("digits", limit=200)
    est = VAE(epochs=2, hidden=(16,), latent_dim=2).fit(ds.x_train)
    with pytest.raises(scratchvae.UsageError, match="latent_dim .* was 2 when this model was fitted"):
        est.set_params(latent_dim=5, warm_start=True, epochs=3).fit(ds.x_train)
    est.set_params(latent_dim=2)
    with pytest.raises(scratchvae.UsageError, match="same data \\(200 rows\\); this X has 100"):
        est.fit(ds.x_train[:100])
    with pytest.raises(scratchvae.UsageError, match="trained 2 epochs already"):
        est.set_params(epochs=2).fit(ds.x_train)
    est.set_params(latent_dim=7)              # changed after fit, never refitted: not saved
    again = load(_saved(est))
    assert again.latent_dim == 2 and again.transform(ds.x_test).shape[1] == 2


def _saved(est):
    import tempfile

    return est.save(tempfile.mkdtemp() + "/e.npz")


def test_labels_of_any_kind_are_encoded():
    from scratchvae.metrics import cluster_acc

    assert cluster_acc([-1, -1, 1, 1], [0, 0, 1, 1]) == 1.0
    assert cluster_acc([10**9, 10**9, 7, 7], [3, 3, 5, 5]) == 1.0
    assert cluster_acc(["a", "b", "b"], [1, 0, 0]) == 1.0
    ds = load_dataset("digits", limit=150)
    names = np.array(list("abcdefghij"))[ds.y_train]
    g = GMVAE(epochs=1, pretrain_epochs=1, anchor_epochs=1, hidden=(16,), latent_dim=3,
              clusters=4).fit(ds.x_train, names)
    assert 0 < g.fit_info_["partition_acc"] <= 1
    with pytest.raises(scratchvae.DataError, match="NaN or inf labels"):
        g.evaluate(ds.x_train, np.full(len(ds.x_train), np.nan))


def test_python_and_numpy_conventions():
    import copy
    import pickle

    from sklearn.utils.validation import check_is_fitted

    ds = load_dataset("digits", limit=150)
    est = VAE(epochs=np.int64(1), lr=np.float32(1e-3), hidden=(np.int64(8),), latent_dim=2)
    est.latent_dim = 3                         # routed to the options, as set_params would
    assert est.get_params()["latent_dim"] == 3
    Z = est.fit_transform(ds.x_train)
    assert Z.shape == (150, 3)
    check_is_fitted(est)
    for twin in (pickle.loads(pickle.dumps(est)), copy.deepcopy(est)):
        np.testing.assert_array_equal(twin.transform(ds.x_test), est.transform(ds.x_test))
    g = GMVAE(epochs=1, pretrain_epochs=1, anchor_epochs=1, hidden=(16,), latent_dim=3,
              clusters=4)
    labels = g.fit_predict(ds.x_train)
    np.testing.assert_array_equal(labels, g.labels_)
    np.testing.assert_array_equal(labels, g.predict(ds.x_train))
    for twin in (pickle.loads(pickle.dumps(g)), copy.deepcopy(g)):   # a fitted GMVAE too
        np.testing.assert_array_equal(twin.predict(ds.x_test), g.predict(ds.x_test))
    with pytest.raises(AttributeError, match="no attribute 'partition_'"):
        GMVAE(init="gmm", epochs=1, pretrain_epochs=1, gmm_restarts=1, clusters=3,
              hidden=(8,)).fit(ds.x_train).partition_


def test_a_gmvae_that_leaves_its_partition_says_so(monkeypatch):
    """A fit whose final clusters agree with the starting partition on under 90 % of the rows
    (a tiny budget drifts: 4 ELBO epochs after a 1-epoch warm-up) warns with the share; with
    the bar below that share the same fit is silent."""
    import warnings

    from scratchvae.estimators import gmvae as gmvae_est

    ds = load_dataset("digits", limit=200)
    common = dict(hidden=(16,), latent_dim=3, batch_size=64, dtype="float64", clusters=3,
                  pretrain_epochs=1, anchor_epochs=1)
    with pytest.warns(UserWarning, match="agree with its starting partition on only") as rec:
        g = GMVAE(epochs=4, **common).fit(ds.x_train)
    assert g.fit_info_["partition_agreement"] < 0.9
    assert f"{100 * g.fit_info_['partition_agreement']:.1f}%" in str(rec[0].message)
    monkeypatch.setattr(gmvae_est, "AGREEMENT_WARN", g.fit_info_["partition_agreement"] - 0.01)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*starting partition")
        GMVAE(epochs=4, **common).fit(ds.x_train)
