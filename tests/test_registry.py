"""Adding a model is one model file plus one registry line (README, "Adding a model").

The proof: a beta-VAE defined here -- its config adds ``kl_weight`` and its prior scales the
ELBO's KL term -- is registered in one line, and then the command line trains it (with its new
option as a flag), evaluates its checkpoint, gradient-checks it, and the library loads it."""
import json
from dataclasses import asdict, dataclass

import numpy as np
import pytest

from scratchvae.distributions import StandardNormalPrior
from scratchvae.models.vae import VAE as VAEModel, VAEConfig


# ----------------------------------------------------------------- the "new model file"
class ScaledPrior(StandardNormalPrior):
    """reg = -w KL(q || N(0, I)); its backward scales the upstream gradient by w."""

    def __init__(self, w):
        self.w = float(w)

    def terms(self, b, params, z, post, q_c=None):
        reg, cache = super().terms(b, params, z, post, q_c)
        return self.w * reg, cache

    def backward(self, b, dreg, cache):
        return super().backward(b, self.w * dreg, cache)


@dataclass
class BetaVAEConfig(VAEConfig):
    kl_weight: float = 4.0


class BetaVAE(VAEModel):
    kind = "betavae"

    def __init__(self, cfg: BetaVAEConfig, backend):
        base = {k: v for k, v in asdict(cfg).items() if k != "kl_weight"}
        super().__init__(VAEConfig(**{**base, "hidden": tuple(cfg.hidden)}), backend,
                         prior=ScaledPrior(cfg.kl_weight))
        self.cfg = cfg


# ----------------------------------------------------------------- the test
@pytest.fixture
def betavae():
    from scratchvae.cli.registry import REGISTRY, ModelEntry, register
    from scratchvae.estimators import VAE
    from scratchvae.estimators.base import KINDS

    register(ModelEntry("betavae", VAE.variant("betavae", BetaVAE, BetaVAEConfig)))  # the one line
    yield REGISTRY["betavae"]
    REGISTRY.pop("betavae")
    KINDS.pop("betavae")


def test_a_registered_toy_model_trains_evaluates_and_gradchecks(betavae, tmp_path, capsys):
    from scratchvae import load
    from scratchvae.cli import main

    out = tmp_path / "beta"
    assert main(["train", "--model", "betavae", "--kl-weight", "2.5", "--epochs", "2",
                 "--hidden", "16", "--latent-dim", "3", "--iwae-k", "5", "--quiet",
                 "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "betavae" and m["options"]["kl_weight"] == 2.5
    assert np.isfinite(m["iwae_ll"]) and (out / "samples.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(["eval", "--resume", str(out), "--out", str(out.parent / "ev")]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["model"] == "betavae" and ev["iwae_ll"] == m["iwae_ll"]    # same checkpoint, same draws
    assert main(["gradcheck", "--model", "betavae"]) == 0
    assert '"passed"' in capsys.readouterr().out
    est = load(out / "checkpoint.npz")
    assert type(est).__name__ == "Betavae" and est.kl_weight == 2.5
    assert "--kl-weight" in _train_help()


def _train_help():
    from scratchvae.cli.options import build_parser

    return build_parser()._subparsers._group_actions[0].choices["train"].format_help()


def test_the_toy_model_is_the_beta_vae(betavae, b64):
    """Its loss is recon + w KL: the difference between two weights is (w2 - w1) KL."""
    cfg = dict(D=6, latent_dim=3, hidden=(5,), n_samples=2)
    rng = b64.rng("toy")
    x = rng.uniform((4, 6))
    losses, kls = [], []
    for w in (1.0, 3.0):
        m = BetaVAE(BetaVAEConfig(kl_weight=w, **cfg), b64)
        p = m.init_params(b64.rng("init"))
        noise = m.sample_noise(b64.rng("noise"), 4)
        loss, _, aux = m.loss_and_grads(p, x, noise)
        losses.append(float(loss))
        kls.append(float(aux["reg"]) / w)
    assert kls[0] == pytest.approx(kls[1], rel=1e-12)
    assert losses[1] - losses[0] == pytest.approx(2.0 * kls[0], rel=1e-10)
