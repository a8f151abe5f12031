"""Floor 4: one file per model; each exposes ``init_params``, ``loss`` and ``loss_and_grads``."""
