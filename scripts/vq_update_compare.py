"""Train the VQ-VAE four times -- codebook moved by moving averages (EMA) or by its loss (grad),
each with and without dead-code restarts -- and draw their codebook perplexity during training.

    python scripts/vq_update_compare.py --out derivations/figures

regenerates ``derivations/figures/vq_update_compare.png`` and prints, as JSON, the numbers of
the comparison rows of ``derivations/04-vqvae.md``'s results table: for each variant its model
config, the number of steps, the :meth:`VQVAE.evaluate` metrics of the test split before and
after training and of the training split after, and the first and last epochs of its history.
The other rows of that table come from ``--codebook-size 256`` and ``--kmeans-init``.

Fixed: the bundled 8x8 digits, numpy backend, float32, batch 128, Adam with learning rate
1e-3 (the :class:`scratchvae.train.TrainConfig` defaults), hidden layers 256-256 (ReLU),
Bernoulli likelihood.  ``--limit N`` keeps the first N training (and at most N test) images,
for quick checks.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from anywhere, uninstalled

from scratchvae import plots  # noqa: E402
from scratchvae.backend import Backend  # noqa: E402
from scratchvae.data import load_dataset  # noqa: E402
from scratchvae.models.vqvae import VQVAE, VQVAEConfig  # noqa: E402
from scratchvae.train import TrainConfig, fit  # noqa: E402

FIGURE = "vq_update_compare.png"
VARIANTS = {  # label -> (codebook_update, restart)
    "ema + restarts": ("ema", True),
    "ema, no restarts": ("ema", False),
    "grad + restarts": ("grad", True),
    "grad, no restarts": ("grad", False),
}


def train_variant(backend, ds, cfg: VQVAEConfig, epochs: int):
    """Train one VQ-VAE from the backend's "init" parameters -> (history, results dict)."""
    X, Xt = backend.asarray(ds.x_train), backend.asarray(ds.x_test)
    model = VQVAE(cfg, backend)
    params = model.init_params(backend.rng("init"))
    before = model.evaluate(params, Xt)
    params, _, step, history = fit(model, params, X, TrainConfig(epochs=epochs), progress=False)
    res = {"config": cfg.to_dict(), "steps": step, "test_before": before,
           "test": model.evaluate(params, Xt), "train": model.evaluate(params, X),
           "first_epoch": history[0], "last_epoch": history[-1]}
    return history, res


def compare(backend, ds, *, epochs=60, codebook_size=64, codes_per_input=4, latent_dim=8,
            beta=0.25, kmeans_init=False, out=None) -> dict:
    """Train the four :data:`VARIANTS`; with ``out``, also write ``out/vq_update_compare.png``.
    -> {label: results, ..., "figure": path}.  Every variant draws its randomness from
    ``backend.rng(...)`` keys, so each is the run it would be on its own."""
    results, histories = {}, {}
    for label, (update, restart) in VARIANTS.items():
        cfg = VQVAEConfig(D=ds.D, latent_dim=latent_dim, codes_per_input=codes_per_input,
                          codebook_size=codebook_size, beta=beta, codebook_update=update,
                          restart=restart, kmeans_init=kmeans_init)
        histories[label], results[label] = train_variant(backend, ds, cfg, epochs)
    if out:
        os.makedirs(out, exist_ok=True)
        results["figure"] = plots.vq_compare_figure(
            histories, codebook_size, os.path.join(out, FIGURE),
            f"digits, K = {codebook_size}, M = {codes_per_input}: per-batch codebook perplexity")
    return results


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/vq_update_compare.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=_positive_int, default=60)
    p.add_argument("--codebook-size", type=_positive_int, default=64, help="codes K")
    p.add_argument("--codes-per-input", type=_positive_int, default=4,
                   help="latent vectors M per input")
    p.add_argument("--latent-dim", type=_positive_int, default=8,
                   help="size J of each code vector")
    p.add_argument("--beta", type=float, default=0.25, help="commitment weight")
    p.add_argument("--kmeans-init", action="store_true",
                   help="k-means codebook from the first batch's encoder outputs (all variants)")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="keep the first N training (and at most N test) images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/vq_update_compare", help=f"folder for {FIGURE}")
    return p


def main(argv=None) -> dict:
    a = build_parser().parse_args(argv)
    backend = Backend("numpy", "float32", seed=a.seed)
    ds = load_dataset("digits", limit=a.limit)
    res = compare(backend, ds, epochs=a.epochs, codebook_size=a.codebook_size,
                  codes_per_input=a.codes_per_input, latent_dim=a.latent_dim, beta=a.beta,
                  kmeans_init=a.kmeans_init, out=a.out)
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
