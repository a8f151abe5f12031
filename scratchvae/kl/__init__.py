"""The assignment's section 1: which direction of the KL divergence, and what each direction does.

Derivation: ``derivations/01-kl-direction.md``.  Target p = 1/2 N(-a, s^2) + 1/2 N(a, s^2),
approximation q = N(m, exp(2 rho)).  Imports flow down this list:

* :mod:`~scratchvae.kl.estimators` -- device side (array API): the target, the access oracles
  Full / SampleOnly / UnnormalisedDensity, q's log density and score, the Monte Carlo
  estimators (reparameterisation, score function, SNIS) with hand-written gradients.
* :mod:`~scratchvae.kl.exact` -- host side, exact: both KLs, their gradients and Hessians by
  quadrature, p's moments, the closed-form forward-KL minimiser.
* :mod:`~scratchvae.kl.minima` -- host side: located minima, critical points, the fold and
  switch separations, descent paths, the sweep over a/s.
* :mod:`~scratchvae.kl.figures` -- the three figures.
* :mod:`~scratchvae.kl.experiment` -- :func:`run_experiment` for ``run.py``: tables, SGD fits,
  figures, metrics.

The names below are re-exported, so ``from scratchvae import kl; kl.NAME`` keeps working.
"""
from .estimators import (BASELINES, LOG2PI, AccessError, Estimate, Full, SampleOnly,
                         TwoModeMixture, UnnormalisedDensity, draw_p_noise, draw_q_noise,
                         forward_kl_full, forward_kl_mle, forward_kl_snis, init_params, log_q,
                         log_q_grad, reverse_kl_full, reverse_kl_reparam, reverse_kl_score)
from .exact import (_EXACT, QUAD_HALF_WIDTH, QUAD_NODES, _p_moments, exact_forward_kl,
                    exact_forward_kl_grad, exact_forward_kl_hessian, exact_reverse_kl,
                    exact_reverse_kl_grad, exact_reverse_kl_hessian, forward_kl_minimiser,
                    log_p_host, mixture_entropy)
from .minima import (_offcentre_minus_centre, centre_rho, default_starts, descent_path,
                     fold_separation, global_switch_separation, locate_minima, minimise_from,
                     reverse_critical_points, separation_sweep)
from .figures import plot_contours, plot_fits, plot_separation
from .experiment import run_experiment, sgd_fit, snis_table, variance_table
