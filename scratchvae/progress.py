"""Floor 5: what a training run shows while it runs.  On a terminal a tqdm bar with the running
loss (whatever the epoch's size) and each epoch's mean loss; where stderr is not a terminal (a
log file, a pipe, a test), one line per epoch instead of hundreds of bar redraws."""
from __future__ import annotations

import sys


def progress_bar(total, desc, enabled, epochs=None):
    """A bar over ``total`` steps, or None when ``enabled`` is false."""
    if not enabled:
        return None
    if not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        return EpochLines(desc, epochs)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return EpochLines(desc, epochs)
    return _Bar(tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True))


class _Bar:
    """tqdm, plus ``epoch_done``: the epoch's mean loss in the postfix."""

    def __init__(self, bar):
        self.bar = bar

    def update(self, n=1):
        self.bar.update(n)

    def set_postfix(self, **kw):
        self.bar.set_postfix(**kw)

    def epoch_done(self, rec):
        self.bar.set_postfix(loss=f"{rec['loss']:.3f}", epoch=rec["epoch"])

    def close(self):
        self.bar.close()


class EpochLines:
    """The bar's stand-in off a terminal: one line on stderr per epoch."""

    def __init__(self, desc, epochs=None):
        self.desc, self.epochs = desc, epochs

    def update(self, n=1):
        pass

    def set_postfix(self, **kw):
        pass

    def epoch_done(self, rec):
        of = f"/{self.epochs}" if self.epochs else ""
        print(f"{self.desc}: epoch {rec['epoch']}{of}  loss {rec['loss']:.3f}  lr {rec['lr']:.3g}",
              file=sys.stderr, flush=True)

    def close(self):
        pass
