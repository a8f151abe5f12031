#!/usr/bin/env python
"""scratchvae command line:  python run.py [train|eval|gradcheck|bench|compare|seeds] [options].

    python run.py                       # the whole assignment (seed §1-§4) on the bundled digits
    python run.py --backend cupy        # the same on a GPU
    python run.py train --model gmvae   # one model; --model vae|fullcov|gmvae|vqvae|kl
    python run.py seeds --model gmvae   # several seeds, mean +- std of every metric
    python run.py compare               # mean-field vs full-covariance posterior
    python run.py gradcheck             # finite-difference check of every model's gradients
    python run.py bench                 # ms per training step vs the GEMM floor (JSON)

Run ``python run.py --help`` (and ``python run.py COMMAND --help``) for the options.  The
command line is ``scratchvae/cli/``, a client of the estimators in ``scratchvae/estimators/``;
after ``pip install -e .`` the ``scratchvae`` command is the same program.
"""
import sys

from scratchvae.cli import main

if __name__ == "__main__":
    sys.exit(main())
