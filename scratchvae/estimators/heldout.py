"""Held-out scores during training: what a training curve needs beside the training loss.

Every ``max(1, epochs // 20)`` epochs and at the last, the estimator's ``_heldout_scores``
(the negative ELBO and its terms for the VAE family, with one sample of noise from the
``heldout`` stream; the reconstruction and quantisation error for the VQ-VAE) is added to the
epoch's record as ``heldout_*``.  It reads the parameters and draws from its own named
generator, so the training run itself is unchanged."""
from __future__ import annotations


def heldout_hook(est, on_epoch, Xe):
    """``on_epoch`` followed, every few epochs, by the held-out scores in the epoch's record."""
    every, last = max(1, int(est.options.epochs) // 20), int(est.options.epochs)
    scores = getattr(est, "_heldout_scores", None)
    if scores is None:
        return on_epoch

    def hook(rec, params, opt):
        if on_epoch is not None:
            on_epoch(rec, params, opt)
        if rec["epoch"] % every == 0 or rec["epoch"] == last:
            rec.update({f"heldout_{k}": float(v)
                        for k, v in scores(params, Xe).items()})
    return hook
