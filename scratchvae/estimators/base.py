"""Floor 6: what every estimator shares -- options, fitting, checkpoints, input checks.

An estimator owns a hand-written model (``scratchvae/models/``), its parameters, its optimiser
state and its recipe.  It follows scikit-learn's conventions: the constructor only stores options
(keyword arguments, or an options dataclass, or both: keywords win); ``fit`` checks them and the
data, builds the model and trains it; attributes ending in ``_`` exist once fitted (or loaded);
``get_params`` / ``set_params`` make ``sklearn.base.clone`` work.  ``save`` writes the project's
``.npz`` checkpoint (parameters, Adam state, step, history and these options as JSON; read back
with ``allow_pickle=False``), so a saved estimator resumes bit for bit.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from ..backend import Backend
from ..data import DataError, validate
from ..errors import NotFittedError, UsageError
from ..options import check_options, make_options
from ..train import (CheckpointError, TrainConfig, fit as train_fit, load_checkpoint, restore,
                     save_checkpoint)

KINDS: dict = {}   # checkpoint "model" name -> estimator class (filled by __init_subclass__)


class Estimator:
    """Base class; subclasses set ``Options`` (from :func:`scratchvae.options.make_options`),
    ``model_class``, ``config_class`` and ``kinds`` (the model names they save under)."""

    Options = None
    model_class = None
    config_class = None
    kinds: tuple = ()
    option_groups: tuple = ()      # extra option dataclasses (the GMVAE's recipe)
    train_defaults: dict = {}      # per-model defaults of the training options

    @classmethod
    def variant(cls, name: str, model_class, config_class, defaults: dict | None = None):
        """A new estimator class for another model of this family: ``model_class`` (with
        ``init_params``, ``sample_noise``, ``loss``, ``loss_and_grads`` and this family's
        inference methods) configured by ``config_class``; its options are that config's
        fields plus this family's training, recipe and runtime options.  Registered under
        ``name`` for :func:`load` (how a new model joins; see README "Adding a model")."""
        title = "".join(w.capitalize() for w in name.replace("-", "_").split("_"))
        opts = make_options(f"{title}Options", config_class, *cls.option_groups,
                            defaults={**cls.train_defaults, **(defaults or {})})
        return type(title, (cls,), {"Options": opts, "model_class": model_class,
                                    "config_class": config_class, "kinds": (name,),
                                    "__module__": cls.__module__,
                                    "__doc__": f"{cls.__name__} estimator over {model_class.__name__}."})

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        for k in cls.__dict__.get("kinds", ()):
            KINDS[k] = cls

    def __init__(self, options=None, **kwargs):
        if options is not None and not isinstance(options, self.Options):
            raise UsageError(f"{type(self).__name__} takes a {self.Options.__name__}, got "
                             f"{type(options).__name__}")
        names = {f.name for f in dataclasses.fields(self.Options)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise UsageError(f"{type(self).__name__} has no option {unknown[0]!r}; its options "
                             f"are {', '.join(sorted(names))}")
        self.options = dataclasses.replace(options if options is not None else self.Options(),
                                           **kwargs)

    # ------------------------------------------------------------------ scikit-learn protocol
    def get_params(self, deep=True) -> dict:
        return {f.name: getattr(self.options, f.name) for f in dataclasses.fields(self.options)}

    def set_params(self, **params):
        bad = sorted(set(params) - set(self.get_params()))
        if bad:
            raise UsageError(f"{type(self).__name__} has no option {bad[0]!r}")
        self.options = dataclasses.replace(self.options, **params)
        return self

    def __getattr__(self, name):
        # options read as attributes (est.latent_dim); fitted attributes explain themselves
        opts = self.__dict__.get("options")
        if opts is not None and name in {f.name for f in dataclasses.fields(opts)}:
            return getattr(opts, name)
        if name.endswith("_") and not name.startswith("_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) or "
                                 f"{type(self).__name__}.load(path) first")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self):
        default = self.Options()
        changed = [f"{k}={v!r}" for k, v in self.get_params().items()
                   if v != getattr(default, k)]
        return f"{type(self).__name__}({', '.join(changed)})"

    # ------------------------------------------------------------------ the model
    @property
    def kind(self) -> str:
        """The model's name in checkpoints and on the command line."""
        return self.kinds[0]

    def model_config(self, D: int) -> dict:
        """The model config as a plain dict (what checkpoints store)."""
        cfg = {"D": int(D)}
        for f in dataclasses.fields(self.config_class):
            if f.name != "D":
                v = getattr(self.options, f.name)
                cfg[f.name] = list(v) if isinstance(v, tuple) else v
        return cfg

    def train_config(self) -> TrainConfig:
        o = self.options
        return TrainConfig(epochs=o.epochs, batch_size=o.batch_size, lr=o.lr,
                           lr_decay=o.lr_decay, decay_every=o.decay_every,
                           checkpoint_every=o.checkpoint_every)

    def _build(self, D: int):
        o = self.options
        self.backend_ = Backend(o.backend, o.dtype, seed=o.random_state)
        cfg = self.model_config(D)
        cfg["hidden"] = tuple(cfg.get("hidden", ()))
        try:
            self.model_ = self.model_class(self.config_class(**cfg), self.backend_)
        except ValueError as exc:   # the model's own argument checks
            raise UsageError(str(exc)) from exc
        self.n_features_in_ = int(D)

    def _fitted(self) -> bool:
        return "params_" in self.__dict__

    # ------------------------------------------------------------------ input
    def _check_X(self, X, what="X"):
        """Host array (N, D) of floats, checked for the likelihood -> device array."""
        try:
            Xh = np.asarray(X, dtype=np.float64 if self.options.dtype == "float64" else np.float32)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{what} must be a numeric array of shape (n_samples, n_features); "
                            f"got {type(X).__name__} ({exc})") from exc
        if Xh.ndim != 2 or Xh.shape[0] < 1 or Xh.shape[1] < 1:
            raise DataError(f"{what} must be a non-empty 2-D array (n_samples, n_features); got "
                            f"shape {Xh.shape} (reshape images to rows, e.g. X.reshape(len(X), -1))")
        if self._fitted() and Xh.shape[1] != self.n_features_in_:
            raise DataError(f"{what} has {Xh.shape[1]} features but this model was trained on "
                            f"{self.n_features_in_}; use data of the same shape")
        validate(Xh, self.options.likelihood, where=what)
        return Xh

    def _device(self, Xh):
        return self.backend_.asarray(Xh)

    def _check_y(self, y, n):
        if y is None:
            return None
        y = np.asarray(y)
        if y.shape != (n,):
            raise DataError(f"y must have one label per row of X ({n}); got shape {y.shape}")
        return y

    # ------------------------------------------------------------------ training
    def fit(self, X, y=None, *, checkpoint=None, meta=None):
        """Train on the rows of ``X`` (n_samples, n_features).  ``y`` (optional) is only
        reported (e.g. the GMVAE's training accuracy per epoch), never used to train.
        ``checkpoint``: a path to write the checkpoint to (every ``checkpoint_every`` epochs
        and at the end).  With ``warm_start=True`` a fitted or loaded estimator trains on from
        its current step up to ``epochs``.  Returns ``self``."""
        check_options(self.options)
        resume = self.options.warm_start and self._fitted()
        if not resume:
            for k in [k for k in self.__dict__ if k.endswith("_") and not k.startswith("_")]:
                del self.__dict__[k]             # a fresh fit forgets the previous one
        Xh = self._check_X(X)
        if not resume:
            self._build(Xh.shape[1])
        y = self._check_y(y, Xh.shape[0])
        self._check_data(Xh)
        Xd = self._device(Xh)
        t0 = time.perf_counter()
        if not resume:
            self.params_ = self.model_.init_params(self.backend_.rng("init"))
            self.opt_, self.step_, self.history_, self.fit_info_ = None, 0, [], {}
            self._initialise(Xd, y)
        on_epoch = self._epoch_hook(Xd, y)
        self._meta = {**(meta or {}), **self._meta_extra()}
        self.params_, self.opt_, self.step_, self.history_ = train_fit(
            self.model_, self.params_, Xd, self.train_config(), opt=self.opt_, step=self.step_,
            history=self.history_, desc=self.kind, progress=self.options.verbose,
            ckpt_path=checkpoint, meta=self.checkpoint_meta(), on_epoch=on_epoch)
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _check_data(self, Xh):
        """Option values that can only be judged against the data (subclasses)."""

    def _initialise(self, Xd, y):
        """Work between parameter initialisation and training (the GMVAE's recipe)."""

    def _epoch_hook(self, Xd, y):
        """``on_epoch(record, params, opt)`` called after every epoch, or None."""
        return None

    def _meta_extra(self) -> dict:
        return {}

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_meta(self) -> dict:
        o = self.options
        return {"model": self.kind, "model_config": self.model_config(self.n_features_in_),
                "train_config": self.train_config().__dict__, "estimator": type(self).__name__,
                "options": {k: list(v) if isinstance(v, tuple) else v
                            for k, v in self.get_params().items()},
                "seed": o.random_state, **self.backend_.describe(),
                **getattr(self, "_meta", {})}

    def save(self, path):
        """Write the fitted estimator to ``path`` (``.npz``; written atomically)."""
        if not self._fitted():
            raise NotFittedError(f"nothing to save: this {type(self).__name__} is not fitted yet")
        save_checkpoint(path, self.backend_, self.params_, self.opt_, self.step_,
                        self.checkpoint_meta(), self.history_)
        return path

    @classmethod
    def load(cls, path, **overrides):
        """A fitted estimator from a checkpoint written by :meth:`save` or the command line.
        ``overrides`` replace stored runtime options (e.g. ``backend="cupy"``)."""
        params_h, opt_h, info = load_checkpoint(path)
        meta = info.get("meta", {})
        kind = meta.get("model")
        target = KINDS.get(kind)
        if target is None or meta.get("model_config") is None:
            raise CheckpointError(f"{path!r} holds no model scratchvae knows ({kind!r}); was it "
                                  "written by scratchvae?")
        if cls is not Estimator and not issubclass(target, cls):
            raise CheckpointError(f"{path!r} holds a {kind!r} model, not a {cls.__name__}; load "
                                  f"it with scratchvae.load or {target.__name__}.load")
        est = target(**{**target.options_from_meta(meta), **overrides})
        est._build(meta["model_config"]["D"])
        est.params_, est.opt_ = restore(est.model_, params_h, opt_h, info, est.train_config())
        est.step_, est.history_ = info["step"], info.get("history", [])
        est.fit_info_ = meta.get("fit_info", {})
        est._meta = {k: v for k, v in meta.items() if k in ("data", "fit_info")}
        return est

    @classmethod
    def options_from_meta(cls, meta) -> dict:
        """Options stored in a checkpoint; older checkpoints carry only the model and training
        configs, and the seed."""
        names = {f.name for f in dataclasses.fields(cls.Options)}
        if "options" in meta:
            src = meta["options"]
        else:
            src = {**meta.get("train_config", {}), **meta["model_config"],
                   "random_state": meta.get("seed", 0)}
            if "backend" in meta:
                src.update(backend=meta["backend"], dtype=meta.get("dtype", "float32"))
        out = {k: (tuple(v) if isinstance(v, list) else v) for k, v in src.items() if k in names}
        out.pop("warm_start", None)
        return out

    # ------------------------------------------------------------------ helpers for subclasses
    def _rows(self, X):
        self._require_fitted()
        return self._device(self._check_X(X))

    def _require_fitted(self):
        if not self._fitted():
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) or "
                                 f"{type(self).__name__}.load(path) first")

    def _batched(self, fn, Xd, batch: int = 1024) -> np.ndarray:
        """``fn`` over row blocks of device array ``Xd``, concatenated on the host."""
        b = self.backend_
        parts = [b.to_numpy(fn(Xd[i:min(i + batch, Xd.shape[0]), ...]))
                 for i in range(0, Xd.shape[0], batch)]
        return np.concatenate(parts, axis=0)


def load(path, **overrides):
    """Any scratchvae estimator from its checkpoint (the class is read from the file)."""
    from . import gmvae, vae, vqvae  # noqa: F401  (register the built-in kinds)

    return Estimator.load(path, **overrides)
