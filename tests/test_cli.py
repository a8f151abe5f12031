"""The command line end to end: outputs of a run, and one clear error (exit 2, no partial
output) for every kind of bad input."""
import json
import re
import os

import numpy as np
import pytest

from scratchvae.cli import main


def test_train_writes_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["--model", "vae", "--epochs", "2", "--out", str(out), "--quiet", "--iwae-k", "10",
               "--hidden", "32", "--latent-dim", "2"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    for k in ("elbo", "iwae_ll", "recon", "kl"):
        assert np.isfinite(m[k]), k
    assert m["iwae_ll"] >= m["elbo"]
    assert m["config"]["epochs"] == 2 and m["versions"]["numpy"]
    for f in ("curve.png", "reconstructions.png", "samples.png", "checkpoint.npz"):
        assert (out / f).stat().st_size > 0, f
    # resume to 3 epochs, then evaluate the checkpoint
    assert main(["--model", "vae", "--epochs", "3", "--resume", str(out), "--quiet",
                 "--iwae-k", "10"]) == 0
    m2 = json.loads((out / "metrics.json").read_text())
    assert m2["steps"] > m["steps"]
    capsys.readouterr()
    assert main(["eval", "--resume", str(out / "checkpoint.npz"), "--iwae-k", "5", "--out",
                 str(tmp_path / "ev")]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.isfinite(ev["iwae_ll"])


def _err(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    return err


def test_nan_rows_named_and_nothing_written(tmp_path, capsys):
    x = np.random.default_rng(0).random((30, 16))
    x[[3, 17]] = np.nan
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "run"
    err = _err(capsys, ["--data", str(tmp_path / "x.npy"), "--out", str(out), "--quiet"])
    assert "3" in err and "17" in err and ("nan" in err.lower())
    assert not out.exists()


def test_out_of_range_for_bernoulli(tmp_path, capsys, no_drawing):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((30, 16)) * 3)
    err = _err(capsys, ["--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "r"), "--quiet"])
    assert "[0, 1]" in err and "gaussian" in err
    assert not (tmp_path / "r").exists()
    # the Gaussian likelihood accepts it
    assert main(["--model", "vae", "--data", str(tmp_path / "x.npy"), "--likelihood", "gaussian",
                 "--epochs", "1",
                 "--out", str(tmp_path / "g"), "--quiet", "--iwae-k", "5", "--hidden", "8"]) == 0


def test_wrong_feature_count_for_checkpoint(tmp_path, capsys, no_drawing):
    out = tmp_path / "run"
    assert main(["--model", "vae", "--epochs", "1", "--out", str(out), "--quiet", "--iwae-k", "5",
                 "--hidden", "8"]) == 0
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((30, 10)))
    err = _err(capsys, ["eval", "--resume", str(out), "--data", str(tmp_path / "x.npy")])
    assert "64" in err and "10" in err and "features" in err
    err = _err(capsys, ["--model", "vae", "--resume", str(out), "--data", str(tmp_path / "x.npy"),
                        "--quiet"])
    assert "features" in err
    err = _err(capsys, ["--model", "vae", "--resume", str(tmp_path / "missing.npz"), "--quiet"])
    assert "does not exist" in err


def test_unknown_option_values(capsys):
    for argv in (["--model", "nope"], ["--backend", "torch"], ["--epochs", "0"],
                 ["--hidden", "a,b"], ["--likelihood", "poisson"], ["--graph-k", "0"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "error" in err and len(err.strip().splitlines()) == 1, err   # one line, no usage block


def test_cupy_missing_is_one_sentence(capsys):
    pytest.importorskip("numpy")
    try:
        import cupy  # noqa: F401  (only whether it imports)
        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    err = _err(capsys, ["--backend", "cupy", "--quiet", "--out", "/nonexistent/never"])
    assert "pip install cupy" in err and "Traceback" not in err
    assert not os.path.exists("/nonexistent/never")


def test_gradcheck_command_passes(capsys):
    assert main(["gradcheck", "--model", "all"]) == 0
    assert '"passed"' in capsys.readouterr().out


def test_option_overrides_survive_per_model_defaults():
    """Flags the user gives apply to every model; the rest take each model's own defaults."""
    from scratchvae.cli.options import chosen_options, parse
    from scratchvae.cli.registry import entry

    args = parse(["compare"])
    vae = entry("vae").make(chosen_options(args))
    assert vae.latent_dim == 10 and vae.epochs == 100
    g = entry("gmvae").make(chosen_options(parse(["--epochs", "7"])))
    assert g.epochs == 7 and g.lr == 2e-3 and g.lr_decay == 0.9
    q = entry("vqvae").make(chosen_options(parse(["--quick"])))
    assert q.epochs == 2 and q.latent_dim == 8
    assert entry("fullcov").make({}).posterior == "cholesky"


def test_compare_and_seeds_commands(tmp_path, capsys, request):
    out = tmp_path / "cmp"
    assert main(["compare", "--epochs", "1", "--seeds", "2", "--hidden", "16", "--iwae-k", "5",
                 "--quiet", "--out", str(out)]) == 0
    rec = json.loads((out / "compare.json").read_text())
    assert rec["summary"]["vae"]["n"] == 2 and len(rec["rows"]) == 4
    d = rec["summary"]["fullcov_minus_vae"]["values"]
    f = [r["iwae_ll"] for r in rec["rows"] if r["model"] == "fullcov"]
    v = [r["iwae_ll"] for r in rec["rows"] if r["model"] == "vae"]
    np.testing.assert_allclose(d, np.subtract(f, v))
    assert rec["latent_2d"]["vae"]["mean_abs_corr"] == 0.0      # mean-field: axis-aligned
    assert rec["latent_2d"]["vae"]["mean_abs_corr_test"] == 0.0
    assert rec["latent_2d"]["fullcov"]["mean_abs_corr_test"] > 0.0
    text = _check_report(out, min_figures=3)    # both models side by side, their manifolds
    assert "(latent2d.png)" in text and "(manifold.png)" in text
    for sub in ("vae-seed0", "fullcov-seed1", "vae-2d"):       # each run's own report: its links
        _check_report(out / sub)                                  # (metrics.json) exist too
    assert "fullcov_minus_vae" in text and "(compare-iwae_ll.png)" in text
    capsys.readouterr()
    request.getfixturevalue("no_drawing")        # seeds' figures: the report test checks them
    assert main(["seeds", "--model", "vqvae", "--seeds", "2", "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "s")]) == 0
    s = json.loads((tmp_path / "s" / "seeds.json").read_text())
    assert s["summary"]["perplexity"]["n"] == 2


def test_gradcheck_command_fails_on_a_wrong_gradient(monkeypatch, capsys):
    """The GPU user's trust check must be able to say no: break one backward pass."""
    from scratchvae import nn

    orig = nn.tanh_backward
    monkeypatch.setattr(nn, "tanh_backward", lambda b, dy, y: 1.001 * orig(b, dy, y))
    monkeypatch.setitem(nn.ACTIVATIONS, "tanh", (nn.tanh_forward, nn.tanh_backward))
    assert main(["gradcheck", "--model", "vae"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and '"FAILED"' in out


def test_cholesky_exp_diagonal_option(tmp_path, no_drawing):
    out = tmp_path / "fc"
    assert main(["--model", "fullcov", "--cholesky-diag", "exp", "--epochs", "1", "--hidden", "16",
                 "--iwae-k", "5", "--quiet", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(m["iwae_ll"])
    assert m["config"]["cholesky_diag"] == "exp"


def test_output_folder_rules(tmp_path, capsys, no_drawing):
    out = tmp_path / "run"
    base = ["--model", "vae", "--epochs", "1", "--hidden", "8", "--iwae-k", "5", "--quiet"]
    assert main(base + ["--out", str(out)]) == 0
    err = _err(capsys, base + ["--out", str(out)])          # would overwrite a run
    assert "already holds files" in err and "--force" in err
    assert main(base + ["--out", str(out), "--force"]) == 0
    (tmp_path / "afile").write_text("x")
    assert "is a file" in _err(capsys, base + ["--out", str(tmp_path / "afile")])
    # a run that fails before its first checkpoint leaves nothing behind
    err = _err(capsys, base + ["--lr", "1e6", "--out", str(tmp_path / "diverged")])
    assert "diverged" in err and "Warning" not in err
    assert not (tmp_path / "diverged").exists()
    err = _err(capsys, ["--model", "gmvae", "--clusters", "5000", "--quiet",
                        "--out", str(tmp_path / "k")])
    assert "clusters=5000 (--clusters)" in err and not (tmp_path / "k").exists()
    for combo, says in ((["--init", "gmm", "--anchor-epochs", "3"],
                         "anchor_epochs (--anchor-epochs) applies to init graph"),
                        (["--init", "gmm", "--graph-k", "5"], "graph_k (--graph-k) applies to init graph"),
                        (["--graph-k", "5000"], "graph_k=5000 (--graph-k) needs more than 5000 training"),
                        (["--gmm-restarts", "3"], "gmm_restarts (--gmm-restarts) applies to init gmm")):
        err = _err(capsys, ["--model", "gmvae", "--quiet", "--out", str(tmp_path / "c")] + combo)
        assert says in err and not (tmp_path / "c").exists()
    for bad in (["--pretrain-dropout", "1.0"], ["--beta", "-1"], ["--checkpoint-every", "-1"]):
        with pytest.raises(SystemExit) as e:
            main(["--model", "gmvae"] + bad)
        assert e.value.code == 2


def test_eval_hints(tmp_path, capsys, no_drawing):
    tour = tmp_path / "tour"
    (tour / "vae").mkdir(parents=True)
    assert main(["--model", "vae", "--epochs", "1", "--hidden", "8", "--iwae-k", "5", "--quiet",
                 "--out", str(tour / "vae"), "--force"]) == 0
    err = _err(capsys, ["eval", "--resume", str(tour)])
    assert "sub-folders vae" in err
    err = _err(capsys, ["eval", "--resume", str(tour / "vae"), "--model", "gmvae"])
    assert "holds a 'vae' model" in err


@pytest.mark.parametrize("doc, least", [("README.md", 3), ("RESULTS.md", 6)])
def test_readme_commands_parse(doc, least):
    """Every concrete `python run.py ...` in the README and in RESULTS.md is a valid command
    line (placeholders such as M, J and [a|b] are filled with real values)."""
    import pathlib
    import shlex

    from scratchvae.cli import parse

    readme = (pathlib.Path(__file__).resolve().parents[1] / doc).read_text()
    cmds = set(re.findall(r"`python run\.py([^`]*)`", readme))
    assert len(cmds) >= least                           # the check sees the commands
    for c in cmds:
        if "[train|" in c:
            continue                                    # the synopsis line
        c = c.replace("[--latent-dim J]", "--latent-dim 10").replace(" M ", " vae ").replace(" J ", " 10 ")
        c = re.sub(r"\bJ$", "10", c.strip())
        if c.strip() == "--help":
            continue
        parse(shlex.split(c))                           # no command means train


def test_config_replays_a_run(tmp_path, capsys, no_drawing):
    """--config metrics.json (or seeds.json) reruns a run with the same options: bit-identical
    parameters; options given beside it win."""
    from scratchvae.train import load_checkpoint

    a = tmp_path / "a"
    assert main(["train", "--model", "gmvae", "--epochs", "1", "--pretrain-epochs", "1",
                 "--anchor-epochs", "1", "--hidden", "16", "--latent-dim", "3", "--clusters", "4",
                 "--limit", "150", "--iwae-k", "5", "--seed", "2", "--quiet", "--out", str(a)]) == 0
    b = tmp_path / "b"
    assert main(["--config", str(a / "metrics.json"), "--out", str(b)]) == 0
    pa, _, _ = load_checkpoint(a / "checkpoint.npz")
    pb, _, info = load_checkpoint(b / "checkpoint.npz")
    assert info["meta"]["model"] == "gmvae"
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
    c = tmp_path / "c"
    assert main(["--config", str(a / "metrics.json"), "--epochs", "2", "--out", str(c)]) == 0
    assert json.loads((c / "metrics.json").read_text())["epochs"] == 2
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(SystemExit) as e:
        main(["--config", str(tmp_path / "junk.json")])
    assert e.value.code == 2 and "holds no options" in capsys.readouterr().err


def test_resume_and_eval_continue_on_the_checkpoints_own_data(tmp_path, capsys, no_drawing):
    out = tmp_path / "r"
    base = ["--hidden", "8", "--latent-dim", "2", "--iwae-k", "5", "--quiet"]
    assert main(["--model", "vae", "--epochs", "1", "--limit", "200", "--out", str(out)] + base) == 0
    assert main(["--resume", str(out), "--epochs", "2", "--quiet"]) == 0    # no --model, no --data
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_train"] == 200 and m["epochs"] == 2 and m["config"]["model"] == "vae"
    hist = [h["epoch"] for h in __import__("scratchvae").load(out / "checkpoint.npz").history_]
    assert hist == [1, 2]
    capsys.readouterr()
    assert main(["eval", "--resume", str(out), "--out", str(tmp_path / "ev")]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["data"] == "digits" and ev["iwae_ll"] == m["iwae_ll"]        # same rows, same draws
    for argv, says in ((["--batch-size", "32"], "batch_size (--batch-size) was 128"),
                       (["--latent-dim", "3"], "latent_dim (--latent-dim) was 2"),
                       (["--clusters", "3"], "--clusters is an option of gmvae"),
                       (["--quick"], "--quick sets the budgets of a new run"),
                       (["--epochs", "2"], "trained 2 epochs already")):
        err = _err(capsys, ["--resume", str(out), "--quiet"] + argv)
        assert says in err, err
    # a resumed run's record replays as a run of the same model, not the tour
    from scratchvae.cli import parse

    a = parse(["--config", str(out / "metrics.json")])
    assert a.command == "train" and a.model == "vae" and a.epochs == 2


def test_more_option_mistakes_are_one_sentence(tmp_path, capsys):
    err = _err(capsys, ["--model", "vae", "--posterior", "cholesky", "--quiet"])
    assert "the vae model always has posterior diag" in err
    err = _err(capsys, ["--model", "kl", "--epochs", "3", "--quiet"])
    assert "takes no --epochs" in err
    err = _err(capsys, ["--data", "MNIST", "--data-dir", str(tmp_path), "--model", "vae", "--quiet"])
    assert "mnist" in err and ".npy" not in err                             # a name, not a path
    (tmp_path / "bad.json").write_text(json.dumps({"command": "seeds", "model": "vae", "seeds": 0}))
    with pytest.raises(SystemExit) as e:
        main(["--config", str(tmp_path / "bad.json")])
    assert e.value.code == 2 and "--seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:                                   # help, not a KeyError
        main(["-h", "--config", str(tmp_path / "bad.json")])
    assert e.value.code == 0
    for argv in (["eval", "--resume", "x", "--epochs", "3"], ["seeds", "--model", "vae", "--seed", "1"],
                 ["gradcheck", "--latent-dim", "3"]):
        with pytest.raises(SystemExit) as e:                               # not offered there
            main(argv)
        assert e.value.code == 2


def test_baselines_command_scores_every_method(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["baselines", "--quick", "--limit", "200", "--seeds", "1", "--hidden", "16",
                 "--latent-dim", "3", "--quiet", "--out", str(out)]) == 0
    rec = json.loads((out / "baselines.json").read_text())
    assert set(rec["summary"]) == {"kmeans", "pca10_gmm", "ae_kmeans", "partition", "gmvae"}
    for m, r in rec["summary"].items():
        assert 0 <= r["acc"]["mean"] <= 1 and np.isfinite(r["nmi"]["mean"]), m
    assert "test_acc" in rec["summary"]["gmvae"]
    _check_report(out)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((60, 8)))
    err = _err(capsys, ["baselines", "--data", str(tmp_path / "x.npy"), "--quiet"])
    assert "has none" in err


def _check_report(folder, min_figures=1):
    """report.md exists, every figure and page it links exists, figures are legible PNGs."""
    from _reports import check_report

    return check_report(folder, min_figures)


def test_every_command_leaves_a_report_and_a_history(tmp_path):
    import csv

    small = ["--limit", "200", "--hidden", "16", "--latent-dim", "2", "--iwae-k", "5", "--quiet"]
    t = tmp_path / "t"
    assert main(["train", "--model", "gmvae", "--epochs", "2", "--pretrain-epochs", "2",
                 "--anchor-epochs", "1", "--clusters", "3", "--out", str(t)] + small) == 0
    text = _check_report(t)
    assert "history.csv" in text and "partition_agreement" in text
    rows = list(csv.DictReader((t / "history.csv").open()))
    assert [r["phase"] for r in rows] == ["pretrain"] * 2 + ["warm-up"] + ["train"] * 2
    assert all(float(r["loss"]) == float(r["loss"]) for r in rows)          # no NaN
    s = tmp_path / "s"
    assert main(["seeds", "--model", "vae", "--seeds", "2", "--epochs", "1", "--out", str(s)]
                + small) == 0
    assert "seed1/report.md" in _check_report(s) and (s / "seeds-iwae_ll.png").exists()
    # compare's report: test_compare_and_seeds_commands


def test_config_fifo_and_figures_to_file_are_refused_before_work(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(SystemExit) as e:
        main(["--config", str(fifo)])
    assert e.value.code == 2 and "is not a file" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    err = _err(capsys, ["--quick", "--quiet", "--figures-to", str(tmp_path / "afile"),
                        "--out", str(tmp_path / "t")])
    assert "--figures-to" in err and not (tmp_path / "t").exists()


def test_a_resumed_gmvae_keeps_its_earlier_phases_in_history_csv(tmp_path, no_drawing):
    """The checkpoint keeps only the ELBO phase's history; history.csv keeps the pretraining
    and warm-up rows of the first run and gains the new ELBO epochs."""
    import csv

    out = tmp_path / "g"
    assert main(["--model", "gmvae", "--quick", "--limit", "200", "--hidden", "16", "--quiet",
                 "--out", str(out)]) == 0
    before = list(csv.DictReader(open(out / "history.csv")))
    assert main(["--resume", str(out), "--epochs", "4", "--quiet"]) == 0
    after = list(csv.DictReader(open(out / "history.csv")))
    phases = [r["phase"] for r in after]
    assert phases == ["pretrain"] * 2 + ["warm-up"] * 2 + ["train"] * 4
    assert [r["loss"] for r in after[:4]] == [r["loss"] for r in before[:4]]
    assert [r["epoch"] for r in after[4:]] == ["1", "2", "3", "4"]
    # --config of the resumed run replays the whole model (its --quick budgets included) in one
    # go, and gets the same numbers
    m = json.loads((out / "metrics.json").read_text())
    assert main(["--config", str(out / "metrics.json"), "--out", str(tmp_path / "h"),
                 "--quiet"]) == 0
    h = json.loads((tmp_path / "h" / "metrics.json").read_text())
    assert h["iwae_ll"] == m["iwae_ll"] and h["acc"] == m["acc"] and h["pretrain_epochs"] == 2


def test_compare_offers_only_its_models_options(capsys):
    """compare trains the mean-field and full-covariance VAEs: GMVAE and VQ-VAE options are
    neither listed nor accepted (they used to be listed, then refused as 'not of --model vae')."""
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    assert "--hidden" in text and "--clusters" not in text and "--codebook-size" not in text
    with pytest.raises(SystemExit) as e:
        main(["compare", "--quick", "--clusters", "3"])
    assert e.value.code == 2 and "unrecognized arguments: --clusters" in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["tarin"], "unknown command 'tarin': choose one of train, eval"),
    (["train", "--model", "vae", "--seeds", "3"],
     "run.py train: error: unrecognized arguments: --seeds 3 (python run.py train --help"),
    (["--seeds", "3"], "run.py train: error: unrecognized arguments: --seeds 3"),
])
def test_a_mistyped_command_or_option_is_named_with_where_to_look(argv, says, capsys):
    """A misspelt command is called one (with the commands listed), and an option the command
    does not take points at that command's --help; both one line, exit 2."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err and len(err.strip().splitlines()) == 1
