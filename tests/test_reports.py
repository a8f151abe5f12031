"""Issue 14, what a user sees: every command's last line names its report; progress off a
terminal is one line per epoch; history.csv carries the held-out loss and the terms; eval works
on a checkpoint of every model and reports what train reported; data that are not images are
never drawn as padded images; the KL figure tells the two reverse-KL minima apart."""
import csv
import json

import numpy as np
import pytest

from _reports import check_png, check_report
from scratchvae.cli import main

SMALL = ["--limit", "200", "--hidden", "16", "--latent-dim", "2"]
PER_MODEL = {"vae": ["--iwae-k", "5"], "fullcov": ["--iwae-k", "5"], "vqvae": [],
             "gmvae": ["--iwae-k", "5", "--pretrain-epochs", "1", "--anchor-epochs", "1",
                       "--clusters", "3"]}


@pytest.mark.parametrize("model", sorted(PER_MODEL))
def test_eval_on_every_model_reports_what_train_reported(tmp_path, capsys, model, monkeypatch):
    run, ev = tmp_path / "run", tmp_path / "ev"
    def skip(fig, path, **kw):
        import matplotlib.pyplot as plt

        plt.close(fig)
        return str(path)

    with monkeypatch.context() as m:            # train's figures: checked in the other tests
        m.setattr("scratchvae.plots.save_fig", skip)
        m.setattr("scratchvae.paperfigs.save_fig", skip)
        m.setattr("scratchvae.paperfigs.embedding", lambda *a, **kw: None)
        assert main(["train", "--model", model, "--epochs", "1", "--quiet", "--out", str(run)]
                    + SMALL + PER_MODEL[model]) == 0
    trained = json.loads((run / "metrics.json").read_text())
    rows = list(csv.DictReader((run / "history.csv").open()))
    last = [r for r in rows if r["phase"] == "train"][-1]
    assert float(last["lr"]) > 0 and float(last["heldout_recon"]) > 0     # held-out, every N
    if model != "vqvae":
        assert abs(float(last["heldout_recon"]) + float(last["heldout_reg"])
                   - float(last["heldout_loss"])) < 1e-6 * abs(float(last["heldout_loss"]))
    capsys.readouterr()
    assert main(["eval", "--resume", str(run), "--out", str(ev)]) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out.strip().splitlines()[-1])
    assert cap.err.strip().splitlines()[-1] == f"report: {ev / 'report.md'}"
    keys = {"vae": ("iwae_ll", "elbo", "recon", "kl"), "fullcov": ("iwae_ll", "elbo", "kl"),
            "gmvae": ("iwae_ll", "acc", "nmi", "ari"),
            "vqvae": ("recon", "perplexity", "usage", "bits_per_dim")}[model]
    for k in keys:                     # same checkpoint, same data, same draws: same numbers
        assert res[k] == trained[k], k
    text = check_report(ev, min_figures=2)      # eval's own figures, from the checkpoint
    assert "checkpoint" in text and f"{trained[keys[0]]:.4g}" in text


def test_progress_is_one_line_per_epoch_and_the_last_line_names_the_report(tmp_path, capsys,
                                                                           no_drawing):
    out = tmp_path / "r"
    assert main(["train", "--model", "vae", "--epochs", "3", "--out", str(out)] + SMALL) == 0
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert [ln.split("  ")[0] for ln in err[:-1]] == [f"vae: epoch {e}/3" for e in (1, 2, 3)]
    assert err[-1] == f"report: {out / 'report.md'}"
    assert json.loads(cap.out)["report"] == str(out / "report.md")       # stdout: JSON only
    # the §1 study's report: tests/test_kl.py::test_run_experiment_quick


def test_data_that_are_not_images_are_not_drawn_as_images(tmp_path, capsys):
    x = np.random.default_rng(0).random((120, 20))
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "t"
    assert main(["train", "--model", "vae", "--data", str(tmp_path / "x.npy"), "--epochs", "1",
                 "--quiet", "--out", str(out)] + SMALL[2:]) == 0
    assert not (out / "samples.png").exists() and not (out / "reconstructions.png").exists()
    check_png(out / "features.png")
    text = check_report(out, min_figures=2)
    assert "not images" in text


def test_the_reverse_kl_minima_are_drawn_apart(tmp_path, monkeypatch):
    """Two global minima of KL(q||p) are two Gaussians q: two colours and line styles, never
    one colour that reads as one bimodal q."""
    from scratchvae.kl import figures as F

    seen = {}
    monkeypatch.setattr(F, "save_fig", lambda fig, path, **kw: seen.setdefault("fig", fig))
    rev = [{"m": -2.0, "rho": -0.69, "var": 0.25, "kl": 0.69, "global": True},
           {"m": 0.0, "rho": 0.55, "var": 3.0, "kl": 1.87, "global": False},
           {"m": 2.0, "rho": -0.69, "var": 0.25, "kl": 0.69, "global": True}]
    F.plot_fits(tmp_path / "f.png", 2.0, 0.5, rev, [{"m": 0.0, "rho": 0.72, "var": 4.25}])
    lines = [ln for ln in seen["fig"].axes[0].get_lines() if "global" in ln.get_label()]
    assert len(lines) == 2
    assert lines[0].get_color() != lines[1].get_color()
    assert lines[0].get_linestyle() != lines[1].get_linestyle()


def test_gmvae_epochs_help_names_the_other_phases(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--pretrain-epochs" in help_text and "--anchor-epochs" in help_text
    assert "only the final ELBO phase" in help_text


def test_what_is_drawn_as_an_image(tmp_path):
    """Stored as images (N, H, W): images of that shape, square or not; a table (N, D): an
    image only for D = s^2 with every value a [0, 1] intensity, never for standardised
    features."""
    from scratchvae.data import load_dataset

    rng = np.random.default_rng(0)
    cases = {"wide.npy": (rng.random((40, 3, 5)), (3, 5)),
             "pixels.npy": (rng.random((40, 16)), (4, 4)),
             "table.npy": (rng.normal(size=(40, 16)), None),
             "odd.npy": (rng.random((40, 20)), None)}
    for name, (x, shape) in cases.items():
        np.save(tmp_path / name, x)
        assert load_dataset(path=tmp_path / name).image_shape == shape, name
