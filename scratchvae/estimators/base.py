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
import os
import time

import numpy as np
from sklearn.base import BaseEstimator

from ..backend import Backend
from ..data import DataError, validate
from ..errors import NotFittedError, UsageError
from .heldout import heldout_hook
from .memory import check_memory
from ..options import check_options, make_options, plain, spell
from ..train import (CheckpointError, TrainConfig, fit as train_fit, load_checkpoint, restore,
                     save_checkpoint)

KINDS: dict = {}   # checkpoint "model" name -> estimator class (filled by __init_subclass__)
# options that may change between a fit and a warm start that continues it
WARM_CHANGEABLE = {"epochs", "lr", "lr_decay", "decay_every", "checkpoint_every", "iwae_k",
                   "verbose", "warm_start"}


class Estimator(BaseEstimator):
    """Base class; subclasses set ``model_class``, ``config_class``, ``kinds`` (the model names
    they save under), ``option_groups`` and ``train_defaults``; ``Options`` is then made by
    :meth:`options_class`."""

    Options = model_class = config_class = None
    kinds: tuple = ()
    option_groups: tuple = ()      # extra option dataclasses (scoring, the GMVAE's recipe)
    train_defaults: dict = {}      # per-model defaults of the training options

    @classmethod
    def options_class(cls, name, config_class=None, defaults=None, module=None):
        """The options dataclass of this family over ``config_class`` (default: the class's)."""
        return make_options(name, config_class or cls.config_class, *cls.option_groups,
                            defaults={**cls.train_defaults, **(defaults or {})},
                            module=module or cls.__module__)

    @classmethod
    def variant(cls, name: str, model_class, config_class, defaults: dict | None = None):
        """A new estimator class for another model of this family: ``model_class`` (with
        ``init_params``, ``sample_noise``, ``loss``, ``loss_and_grads`` and this family's
        inference methods) configured by ``config_class``; its options are that config's
        fields plus this family's training, scoring, recipe and runtime options.  Registered
        under ``name`` for :func:`load` (how a new model joins; see README "Adding a model")."""
        if name in KINDS:
            raise UsageError(f"a model named {name!r} exists already ({KINDS[name].__name__}); "
                             "choose another name")
        title = "".join(w.capitalize() for w in name.replace("-", "_").split("_"))
        return type(title, (cls,), {
            "Options": cls.options_class(f"{title}Options", config_class, defaults),
            "model_class": model_class, "config_class": config_class, "kinds": (name,),
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
        self._no_such_option(kwargs)
        object.__setattr__(self, "options", dataclasses.replace(
            options if options is not None else self.Options(), **kwargs))

    # ------------------------------------------------------------------ scikit-learn protocol
    def _no_such_option(self, kw):
        names = {f.name for f in dataclasses.fields(self.Options)}
        unknown = sorted(set(kw) - names)
        if unknown:
            raise UsageError(f"{type(self).__name__} has no option {unknown[0]!r}; its options "
                             f"are {', '.join(sorted(names))}")

    def get_params(self, deep=True) -> dict:
        return {f.name: getattr(self.options, f.name) for f in dataclasses.fields(self.options)}

    def set_params(self, **params):
        self._no_such_option(params)
        object.__setattr__(self, "options", dataclasses.replace(self.options, **params))
        return self

    def __getattr__(self, name):
        # options read as attributes (est.latent_dim); fitted attributes explain themselves
        opts = self.__dict__.get("options")
        if opts is not None and name in {f.name for f in dataclasses.fields(opts)}:
            return getattr(opts, name)
        if name.endswith("_") and not name.startswith("_") and not self._fitted():
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) or "
                                 f"{type(self).__name__}.load(path) first")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        # est.latent_dim = 5 sets the option (as set_params would), never a shadowing attribute
        opts = self.__dict__.get("options")
        if opts is not None and name in {f.name for f in dataclasses.fields(opts)}:
            self.set_params(**{name: value})
        else:
            object.__setattr__(self, name, value)

    def __repr__(self, N_CHAR_MAX=700):
        default = self.Options()
        changed = [f"{k}={v!r}" for k, v in self.get_params().items()
                   if v != getattr(default, k)]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_is_fitted__(self) -> bool:
        return self._fitted()

    # ------------------------------------------------------------------ the model
    @property
    def fitted_options(self):
        """The options the fitted model was built with (the current ones before a fit)."""
        return self.__dict__.get("_built_with", self.options)

    @property
    def kind(self) -> str:
        """The model's name in checkpoints and on the command line."""
        return self.kinds[0]

    def model_config(self, D: int) -> dict:
        """The model config as a plain dict (what checkpoints store)."""
        o = self.fitted_options
        cfg = {"D": int(D)}
        for f in dataclasses.fields(self.config_class):
            if f.name != "D":
                cfg[f.name] = plain(getattr(o, f.name))
        return cfg

    def train_config(self) -> TrainConfig:
        o = self.options
        return TrainConfig(epochs=int(o.epochs), batch_size=int(o.batch_size), lr=float(o.lr),
                           lr_decay=float(o.lr_decay), decay_every=int(o.decay_every),
                           checkpoint_every=int(o.checkpoint_every))

    def _build(self, D: int):
        object.__setattr__(self, "_built_with", self.options)
        o = self.options
        self.backend_ = Backend(o.backend, o.dtype, seed=int(o.random_state))
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
    def _check_X(self, X, what="X", fresh=False):
        """Host array (N, D) of floats, checked for the likelihood the model has (``fresh``:
        the one a new fit would build)."""
        opts = self.options if fresh else self.fitted_options
        X = _to_host(X)
        if np.iscomplexobj(X):
            raise DataError(f"{what} is complex; give real-valued features")
        try:
            Xh = np.asarray(X, dtype=np.float64 if opts.dtype == "float64" else np.float32)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DataError(f"{what} must be a numeric array of shape (n_samples, n_features); "
                            f"got {type(X).__name__} ({exc})") from exc
        if Xh.ndim != 2 or Xh.shape[0] < 1 or Xh.shape[1] < 1:
            raise DataError(f"{what} must be a non-empty 2-D array (n_samples, n_features); got "
                            f"shape {Xh.shape} (reshape images to rows, e.g. X.reshape(len(X), -1))")
        if not fresh and self._fitted() and Xh.shape[1] != self.n_features_in_:
            raise DataError(f"{what} has {Xh.shape[1]} features but this model was trained on "
                            f"{self.n_features_in_}; use data of the same shape")
        validate(Xh, opts.likelihood, where=what)
        return Xh

    def _device(self, Xh):
        return self.backend_.asarray(Xh)

    def _check_y(self, y, n):
        """Labels (any hashable values) -> int64 codes 0..C-1, or None."""
        if y is None:
            return None
        y = _to_host(y)
        y = np.asarray(y)
        if y.shape != (n,):
            raise DataError(f"y must have one label per row of X ({n}); got shape {y.shape}")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise DataError("y holds NaN or inf labels; give a label for every row")
        try:
            return np.unique(y, return_inverse=True)[1].astype(np.int64).reshape(n)
        except TypeError as exc:
            raise DataError(f"y must hold comparable labels (all numbers or all strings): {exc}") from exc

    # ------------------------------------------------------------------ training
    def fit(self, X, y=None, *, checkpoint=None, meta=None, eval_set=None):
        """Train on the rows of ``X`` (n_samples, n_features).  ``y`` (optional) is only
        reported (e.g. the GMVAE's training accuracy per epoch), never used to train.
        ``checkpoint``: a path to write the checkpoint to (every ``checkpoint_every`` epochs
        and at the end).  With ``warm_start=True`` a fitted or loaded estimator trains on, on
        the same data, from its current epoch up to ``epochs`` (in total).  ``eval_set``:
        held-out rows scored every few epochs (:func:`.heldout.heldout_hook`).  -> ``self``."""
        check_options(self.options)
        resume = bool(self.options.warm_start) and self._fitted()
        if resume:
            self._check_warm_start()
        else:
            for k in [k for k in self.__dict__ if k.endswith("_") and not k.startswith("_")]:
                del self.__dict__[k]             # a fresh fit forgets the previous one
            self.__dict__.pop("_built_with", None)
            self.__dict__.pop("_meta", None)
        Xh = self._check_X(X)
        y = self._check_y(y, Xh.shape[0])
        if resume:
            self._check_same_data(Xh)
        else:
            self._check_data(Xh)
            self.check_memory(Xh.shape[1])
            self._build(Xh.shape[1])
        Xd = self._device(Xh)
        t0 = time.perf_counter()
        if not resume:
            self.params_ = self.model_.init_params(self.backend_.rng("init"))
            self.opt_, self.step_, self.history_, self.fit_info_ = None, 0, [], {}
            self.n_train_ = int(Xh.shape[0])
            self._initialise(Xd, y)
        on_epoch = self._epoch_hook(Xd, y)
        if eval_set is not None:
            on_epoch = heldout_hook(self, on_epoch, self._device(self._check_X(eval_set)))
        self._meta = {**getattr(self, "_meta", {}), **(meta or {}), **self._meta_extra()}
        self.params_, self.opt_, self.step_, self.history_ = train_fit(
            self._trained_model(), self.params_, Xd, self.train_config(), opt=self.opt_, step=self.step_,
            history=self.history_, desc=self.kind, progress=self.options.verbose,
            ckpt_path=checkpoint, meta=self.checkpoint_meta(), on_epoch=on_epoch)
        self.fit_seconds_ = time.perf_counter() - t0
        self._after_fit(Xd)
        return self

    def check(self, X):
        """Raise now what ``fit(X)`` would refuse (options, data, their combination), without
        training: the command line calls it before it creates any output."""
        check_options(self.options)
        if bool(self.options.warm_start) and self._fitted():
            self._check_warm_start()
            self._check_same_data(self._check_X(X))
        else:
            Xh = self._check_X(X, fresh=True)
            self._check_data(Xh)
            self.check_memory(Xh.shape[1])
        return self

    def check_memory(self, D: int, batch: int | None = None):
        """Refuse, before anything is allocated, a model whose training or scoring would need
        more memory than the machine has free (see :func:`.memory.check_memory`)."""
        check_memory(self, D, batch)

    def _check_warm_start(self):
        """A warm start continues the same model: only the training budget may change."""
        before, now = self.fitted_options, self.options
        for f in dataclasses.fields(now):
            if f.name not in WARM_CHANGEABLE and getattr(before, f.name) != getattr(now, f.name):
                raise UsageError(
                    f"{spell(f.name, f.metadata)} was {getattr(before, f.name)!r} when this model "
                    f"was fitted; a warm start continues the same model and changes only "
                    f"{', '.join(sorted(WARM_CHANGEABLE - {'verbose', 'warm_start'}))} -- fit "
                    "afresh (warm_start=False) to change it")
        done = len(self.history_)
        if int(now.epochs) <= done:
            raise UsageError(f"epochs={now.epochs} (--epochs): this model has trained {done} "
                             f"epochs already; epochs counts the total, so set it above {done} "
                             "to train on")

    def _check_same_data(self, Xh):
        n = self.__dict__.get("n_train_")
        if n is not None and Xh.shape[0] != n:
            raise UsageError(f"a warm start continues training on the same data ({n} rows); "
                             f"this X has {Xh.shape[0]}: fit afresh (warm_start=False) for other "
                             "data")

    def _check_data(self, Xh):
        """Option values that can only be judged against the data (subclasses)."""

    def _initialise(self, Xd, y):
        """Work between parameter initialisation and training (the GMVAE's recipe)."""

    def _epoch_hook(self, Xd, y):
        """``on_epoch(record, params, opt)`` called after every epoch, or None."""
        return None

    def _trained_model(self):
        return self.model_                  # what the main training stage trains

    def _after_fit(self, Xd):
        """Fitted attributes computed from the trained model (the GMVAE's ``labels_``)."""

    def _meta_extra(self) -> dict:
        return {}

    @property
    def run_record(self) -> dict:
        """What the run that trained this model recorded beside it (the command line's data
        source: ``data``, ``data_dir``, ``limit``), as saved in the checkpoint."""
        return dict(self.__dict__.get("_meta", {}))

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_meta(self) -> dict:
        opts = {**dataclasses.asdict(self.fitted_options),
                **{k: getattr(self.options, k) for k in WARM_CHANGEABLE
                   if hasattr(self.options, k)}}
        return {"model": self.kind, "model_config": self.model_config(self.n_features_in_),
                "train_config": self.train_config().__dict__, "estimator": type(self).__name__,
                "options": {k: plain(v) for k, v in opts.items()},
                "seed": plain(self.fitted_options.random_state), "n_train": self.n_train_,
                **self.backend_.describe(), **getattr(self, "_meta", {})}

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
        try:
            est = target(**target.options_from_meta(meta))
            check_options(est.options)
        except UsageError as exc:
            raise CheckpointError(f"{os.fspath(path)!r} stores an invalid option: {exc}") from exc
        est.set_params(**overrides)            # a runtime override (backend, dtype) at load
        check_options(est.options)
        est._build(meta["model_config"]["D"])
        est.params_, est.opt_ = restore(est.model_, params_h, opt_h, info, est.train_config())
        est.step_, est.history_ = info["step"], info.get("history", [])
        est.fit_info_ = meta.get("fit_info", {})
        if isinstance(meta.get("n_train"), int):
            est.n_train_ = meta["n_train"]
        est._meta = {k: v for k, v in meta.items()
                     if k in ("data", "data_dir", "limit", "fit_info")}
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
        out.pop("verbose", None)
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


def _to_host(a):
    """Array-like from any array library -> something ``np.asarray`` takes."""
    if isinstance(a, np.ndarray) or not hasattr(a, "__array_namespace__"):
        return a
    if hasattr(a, "get"):                      # CuPy: an explicit device-to-host copy
        return a.get()
    if type(a).__module__.startswith("array_api_strict"):
        import array_api_strict as xps

        return np.asarray(a.to_device(xps.Device("CPU_DEVICE")))
    return np.from_dlpack(a)

