"""The bad-input and fault audit (issue 15), one test per unclean case: every bad input or fault
ends with one sentence and exit code 2 on the command line (a ValueError subclass with the same
message in the library), never a traceback, never a non-finite number reported as a success,
never a half-written file.  Faults that need root, a full disk or a second process are simulated
(a monkeypatched call, a lock written by hand, a subprocess that SIGKILLs itself mid-write)."""
import copy
import errno
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import scratchvae
from scratchvae import idx
from scratchvae.cli import main, runs
from scratchvae.data import DataError, load_dataset, read_idx
from scratchvae.errors import ScratchVAEError
from scratchvae.train import (CheckpointError, DivergenceError, atomic_write, load_checkpoint,
                              save_checkpoint)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--hidden", "8", "--latent-dim", "2", "--iwae-k", "5", "--limit", "200", "--quiet"]


def _run(capsys, argv):
    """(exit code, stderr, stdout) of the command line; any escaping exception fails the test."""
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.err, cap.out


def _one_line(capsys, argv, says=""):
    rc, err, out = _run(capsys, argv)
    assert rc == 2, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert says in err, err
    assert out == "", out
    return err


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """A finished one-epoch VAE run folder (copy it before changing anything in it)."""
    out = tmp_path_factory.mktemp("faults") / "vae"
    assert main(["--model", "vae", "--epochs", "1", "--out", str(out)] + TINY) == 0
    return out


def _copy(run, tmp_path, name="r"):
    dst = tmp_path / name
    shutil.copytree(run, dst)
    return dst


def _rewrite(ck, change_arrays=None, change_info=None):
    """Rewrite checkpoint ``ck`` after ``change_arrays(dict)`` / ``change_info(dict)``."""
    with np.load(ck) as z:
        arrays = {k: z[k] for k in z.files}
    info = json.loads(str(arrays.pop("__info__")))
    if change_arrays:
        change_arrays(arrays)
    if change_info:
        change_info(info)
    np.savez(ck, __info__=np.array(json.dumps(info)), **arrays)
    return ck


# ------------------------------------------------------------------ 1. eval of a VQ-VAE
def test_eval_reads_a_vqvae_checkpoint(tmp_path, capsys, no_drawing):
    out = tmp_path / "vq"
    assert main(["--model", "vqvae", "--epochs", "1", "--hidden", "8", "--limit", "200",
                 "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    rc, err, text = _run(capsys, ["eval", "--resume", str(out), "--out", str(tmp_path / "ev")])
    assert rc == 0, err
    res = json.loads(text)
    assert res["model"] == "vqvae" and np.isfinite(res["recon"])


# ------------------------------------------------------------------ 2. one run per folder
def test_a_second_run_on_a_busy_out_is_refused_even_with_force(tmp_path, capsys, monkeypatch,
                                                               no_drawing):
    """A second command on the --out of a run in progress (before its first checkpoint, when
    the folder looked empty) is refused, --force or not; the claim ends with the run."""
    from scratchvae.cli import train as cli_train

    out = tmp_path / "busy"
    second = {}
    real = cli_train.run_model

    def run_model(*a, **kw):
        assert (out / runs.LOCK).exists()
        for extra in ([], ["--force"]):
            second[tuple(extra)] = main(["--model", "vae", "--epochs", "1", "--out", str(out)]
                                        + TINY + extra)
        return real(*a, **kw)

    monkeypatch.setattr(cli_train, "run_model", run_model)
    assert main(["--model", "vae", "--epochs", "1", "--out", str(out)] + TINY) == 0
    assert second == {(): 2, ("--force",): 2}
    assert capsys.readouterr().err.count("is in use by another run") == 2
    assert not (out / runs.LOCK).exists() and (out / "checkpoint.npz").exists()


@pytest.mark.parametrize("lock", ["999999999 {node}", "", "garbage"])
def test_a_killed_runs_lock_is_taken_over(tmp_path, lock):
    import platform

    out = tmp_path / "o"
    out.mkdir()
    (out / runs.LOCK).write_text(lock.format(node=platform.node()))
    with runs.run_folder(out, None) as o:
        assert (out / runs.LOCK).read_text().split()[0] == str(os.getpid())
        with pytest.raises(ScratchVAEError, match="in use by another run"):
            runs.run_folder(o, type("A", (), {"force": True})())
    assert os.listdir(out) == []


# ------------------------------------------------------------------ 3. no non-finite success
def _poison(ck, key="param.encoder.0.W", value=np.nan):
    def change(a):
        a[key] = a[key].copy()
        a[key].flat[0] = value
    return _rewrite(ck, change)


def test_eval_of_a_nan_checkpoint_is_refused_not_printed(vae_run, tmp_path, capsys, no_drawing):
    r = _copy(vae_run, tmp_path)
    _poison(r / "checkpoint.npz")
    _one_line(capsys, ["eval", "--resume", str(r)], "holds NaN or inf")
    with pytest.raises(CheckpointError, match="param.encoder.0.W holds NaN or inf"):
        scratchvae.load(r / "checkpoint.npz")


def test_resuming_a_nan_or_inf_checkpoint_writes_nothing(vae_run, tmp_path, capsys):
    """No steps left or some: nothing runs, nothing is written, and the message is about the
    checkpoint (not 'training diverged ... lower --lr')."""
    for key, value in (("param.decoder.0.b", np.nan), ("adam.v.encoder.0.W", np.inf)):
        r = _copy(vae_run, tmp_path, key)
        _poison(r / "checkpoint.npz", key, value)
        before = (r / "metrics.json").read_bytes()
        for epochs in ("1", "3"):
            err = _one_line(capsys, ["--resume", str(r), "--epochs", epochs, "--quiet"],
                            f"{key} holds NaN or inf")
            assert "training diverged" not in err
        assert (r / "metrics.json").read_bytes() == before


def test_divergence_in_parameters_or_adam_state_is_caught():
    """The loss of the epoch's only step is finite, but the update made a parameter or an Adam
    moment inf: training stops there instead of carrying it on."""
    from scratchvae.backend import Backend
    from scratchvae.models.vae import VAE, VAEConfig
    from scratchvae.optim import Adam
    from scratchvae.train import TrainConfig, fit

    b = Backend("numpy", "float32", seed=0)
    X = b.asarray(np.random.default_rng(0).random((16, 8)))
    for where in ("params", "m", "v"):
        m = VAE(VAEConfig(D=8, latent_dim=2, hidden=(6,)), b)
        p = m.init_params(b.rng("init"))
        opt = Adam(b, p, lr=1e-3)
        step = opt.step

        def poisoned(params, grads, lr=None, keys=None, where=where, step=step, opt=opt):
            step(params, grads, lr=lr, keys=keys)
            target = params if where == "params" else getattr(opt, where)
            target["decoder.0.b"][0] = np.inf

        opt.step = poisoned
        with pytest.raises(DivergenceError, match="finite but the (parameters|Adam state)") as e:
            fit(m, p, X, TrainConfig(epochs=3, batch_size=16), opt=opt, progress=False)
        assert isinstance(e.value, ValueError) and "epoch 1" in str(e.value)


def test_an_exploding_finite_loss_is_divergence(tmp_path, capsys):
    """VQ-VAE at --lr 100 on a small subset: every number stays finite (recon 1e13 nats), but
    the loss is 1e22 times the first step's: refused, and nothing is left behind."""
    out = tmp_path / "vq"
    _one_line(capsys, ["--model", "vqvae", "--lr", "100", "--epochs", "3", "--limit", "300",
                       "--quiet", "--out", str(out)], "diverged at epoch 1")
    assert not out.exists()


def test_non_finite_json_checkpoints_scores_and_results_are_never_produced(
        vae_run, tmp_path, capsys, monkeypatch):
    with pytest.raises(DivergenceError, match=r"history\[1\].loss \(nan\)"):
        runs.write_json(tmp_path / "m.json", {"history": [{"loss": 1.0}, {"loss": float("nan")}]})
    with pytest.raises(DivergenceError, match=r"recon \(inf\)"):
        runs.write_json(tmp_path / "m.json", {"recon": np.float32("inf")})
    assert os.listdir(tmp_path) == []
    est = scratchvae.load(vae_run / "checkpoint.npz")
    est.params_["decoder.0.b"][0] = np.nan
    with pytest.raises(DivergenceError, match="not written: param.decoder.0.b holds NaN"):
        est.save(tmp_path / "ck.npz")
    assert os.listdir(tmp_path) == []
    X = load_dataset("digits", limit=20).x_test
    with pytest.raises(DivergenceError, match="held-out scores are not finite"):
        est.evaluate(X)
    monkeypatch.setattr("scratchvae.cli._run", lambda args: ({"x": float("nan")}, 0))
    _one_line(capsys, ["eval", "--resume", "x"], "NaN or inf")


# ------------------------------------------------------------------ 4. output-side failures
def test_an_unwritable_out_fails_before_any_training(tmp_path, capsys, monkeypatch):
    from scratchvae.estimators.base import Estimator

    def no_training(*a, **kw):
        raise AssertionError("training started")

    monkeypatch.setattr(Estimator, "fit", no_training)
    real_open = os.open

    def read_only(path, flags, *a, **kw):
        if str(path).endswith(runs.LOCK):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", read_only)
    existing = tmp_path / "ro"
    existing.mkdir()
    for out in (existing, tmp_path / "new"):
        _one_line(capsys, ["--model", "vae", "--out", str(out)] + TINY,
                  "cannot write to the output folder")
    assert os.listdir(existing) == [] and not (tmp_path / "new").exists()


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    import scratchvae.train as T

    def full(f, **arrays):
        f.write(b"PK" + b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(T.np, "savez", full)
    out = tmp_path / "full"
    err = _one_line(capsys, ["--model", "vae", "--epochs", "1", "--out", str(out)] + TINY,
                    "No space left on device")
    assert "checkpoint.npz" in err and not out.exists()


@pytest.mark.parametrize("exc, says", [
    (IsADirectoryError(errno.EISDIR, "Is a directory", "derivations/figures"), "Is a directory"),
    (MemoryError(), "out of memory")])
def test_oserror_and_memoryerror_are_one_line(capsys, monkeypatch, exc, says):
    """Absurd sizes (--hidden 10^9, --iwae-k 10^9, --bench-batch 10^7 ...) end in MemoryError;
    any OSError (--figures-to naming a file, a full disk) is one line too."""
    def boom(args):
        raise exc

    monkeypatch.setattr("scratchvae.cli._run", boom)
    _one_line(capsys, ["--model", "vae", "--quiet"], says)


# ------------------------------------------------------------------ 5. and 6. option rules
def test_resume_refuses_contradicting_options(vae_run, tmp_path, capsys, no_drawing):
    r = _copy(vae_run, tmp_path)
    before = sorted(os.listdir(r))
    for argv, says in ((["--seed", "3"], "random_state (--seed) was 0"),
                       (["--dtype", "float64"], "dtype (--dtype) was 'float32'"),
                       (["--hidden", "16"], "hidden (--hidden) was (8,)"),
                       (["--batch-size", "64"], "batch_size (--batch-size) was 128"),
                       (["--latent-dim", "3"], "latent_dim (--latent-dim) was 2"),
                       (["--model", "all"], "holds a 'vae' model but --model is 'all'")):
        _one_line(capsys, ["--resume", str(r), "--epochs", "2", "--quiet"] + argv, says)
    assert sorted(os.listdir(r)) == before
    # no command, no --model: the checkpoint's model continues (not the whole tour)
    rc, err, out = _run(capsys, ["--resume", str(r), "--epochs", "2", "--quiet"])
    assert rc == 0 and json.loads(out)["model"] == "vae" and not (r / "kl").exists()


def test_seed_minus_one_and_the_kl_study_rules(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--seed", "-1"])
    assert e.value.code == 2 and "must be >= 0" in capsys.readouterr().err
    out = tmp_path / "kl"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    _one_line(capsys, ["--model", "kl", "--quick", "--quiet", "--out", str(out)],
              "already holds files")
    assert (out / "metrics.json").read_text() == "{}"
    _one_line(capsys, ["--model", "kl", "--resume", str(out), "--quiet"], "takes no --resume")


# ------------------------------------------------------------------ 7. degenerate IDX sets
def _idx(a):
    a = np.asarray(a)
    codes = {"u1": 8, "i1": 9, ">i2": 11, ">i4": 12, ">f4": 13, ">f8": 14}
    be = a.dtype.newbyteorder(">") if a.dtype.itemsize > 1 else a.dtype
    dims = b"".join(int(s).to_bytes(4, "big") for s in a.shape)
    return bytes([0, 0, codes[be.str.lstrip("|")], a.ndim]) + dims + a.astype(be).tobytes()


def _idx_set(folder, images=None, labels=None, n=30):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"train-images-idx3-ubyte": rng.integers(0, 256, (n, 4, 4), dtype=np.uint8),
             "train-labels-idx1-ubyte": rng.integers(0, 3, n, dtype=np.uint8),
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 4, 4), dtype=np.uint8),
             "t10k-labels-idx1-ubyte": rng.integers(0, 3, 10, dtype=np.uint8)}
    if images is not None:
        files["train-images-idx3-ubyte"] = images
    if labels is not None:
        files["train-labels-idx1-ubyte"] = labels
    for name, a in files.items():
        (folder / name).write_bytes(_idx(a))


@pytest.mark.parametrize("images, labels, says", [
    (np.zeros((0, 4, 4), np.uint8), np.zeros(0, np.uint8), "holds 0 images"),
    (np.zeros((30, 0, 0), np.uint8), None, "of 0x0 pixels"),
    (None, np.full(30, np.nan, np.float32), "labels are float32"),
    (None, np.arange(30, dtype=np.float64) % 3, "labels are float64"),
    (None, np.arange(30, dtype=np.int8) % 3 - 1, "non-negative class indices, found -1"),
])
def test_degenerate_idx_files_are_refused(tmp_path, images, labels, says):
    _idx_set(tmp_path / "mnist", images, labels)
    with pytest.raises(DataError, match=says):
        load_dataset("mnist", data_dir=tmp_path)


def test_huge_idx_labels_are_scored(tmp_path):
    from scratchvae.metrics import clustering_metrics

    labels = np.where(np.arange(30) % 2, 2**31 - 1, 10**9).astype(">i4")
    _idx_set(tmp_path / "mnist", labels=labels)
    ds = load_dataset("mnist", data_dir=tmp_path)
    t0 = time.perf_counter()
    assert clustering_metrics(ds.y_train, ds.y_train)["acc"] == 1.0
    assert time.perf_counter() - t0 < 1


# ------------------------------------------------------------------ 8. crafted checkpoints
def _set(path, value):
    def change(info):
        *head, last = path
        d = info
        for k in head:
            d = d[k]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value
    return change


def _arr(fn):
    return lambda a: fn(a)


CRAFTED = {  # name -> (change_info, change_arrays, words of the message)
    "step missing": (_set(["step"], KeyError), None, "its step is None"),
    "step negative": (_set(["step"], -5), None, "its step is -5"),
    "step fractional": (_set(["step"], 1.5), None, "its step is 1.5"),
    "step a string": (_set(["step"], "2"), None, "its step is '2'"),
    "step past the history": (_set(["step"], 7), None, "not where its history ends"),
    "adam_t negative": (_set(["adam_t"], -1), None, "adam_t) is -1"),
    "adam_t below step": (_set(["adam_t"], 1), None, "fewer than the 2 training steps"),
    "meta missing": (_set(["meta"], KeyError), None, "meta record is not a JSON object"),
    "meta a list": (_set(["meta"], [1]), None, "meta record is not a JSON object"),
    "model a list": (_set(["meta", "model"], ["vae"]), None, "meta 'model' is ['vae']"),
    "model unknown": (_set(["meta", "model"], "zz"), None, "holds no model scratchvae knows"),
    "D missing": (_set(["meta", "model_config", "D"], KeyError), None, "feature count D"),
    "D a string": (_set(["meta", "model_config", "D"], "64"), None, "is '64'"),
    "D fractional": (_set(["meta", "model_config", "D"], 64.5), None, "is 64.5"),
    "options a list": (_set(["meta", "options"], [1]), None, "meta 'options' is [1]"),
    "n_train a string": (_set(["meta", "n_train"], "200"), None, "meta 'n_train' is '200'"),
    "data a number": (_set(["meta", "data"], 5), None, "meta 'data' is 5"),
    "limit negative": (_set(["meta", "limit"], -3), None, "meta 'limit' is -3"),
    "fit_info a list": (_set(["meta", "fit_info"], [1]), None, "meta 'fit_info' is [1]"),
    "history a dict": (_set(["history"], {"a": 1}), None, "history is not a list"),
    "history of ints": (_set(["history"], [3]), None, "history is not a list"),
    "history without epoch": (_set(["history"], [{"loss": 1.0}]), None, "history record 1"),
    "history loss a string": (_set(["history", 0, "loss"], "x"), None, "history record 1"),
    "history of another batch size": (_set(["meta", "train_config", "batch_size"], 32), None,
                                      "an epoch is 2 steps in its history but 7 for 200 rows"),
    "Adam moment missing": (None, _arr(lambda a: a.pop("adam.m.encoder.0.W")),
                            "missing ['adam.m.encoder.0.W']"),
    "Adam state missing": (None, _arr(lambda a: [a.pop(k) for k in list(a) if "adam" in k]),
                           "Adam state does not match"),
    "Adam moment misshapen": (None, _arr(lambda a: a.update({"adam.v.encoder.0.W": np.zeros(
        (3, 3), np.float32)})), "has shape (3, 3) but its parameter has (64, 8)"),
    "Adam second moment negative": (None, _arr(lambda a: a.update({"adam.v.decoder.0.b": -np.ones(
        a["adam.v.decoder.0.b"].shape, np.float32)})), "negative second moments"),
    "parameter of ints": (None, _arr(lambda a: a.update({"param.encoder.0.b": a[
        "param.encoder.0.b"].astype(np.int32)})), "holds int32 values"),
    "parameter complex": (None, _arr(lambda a: a.update({"param.encoder.0.b": a[
        "param.encoder.0.b"].astype(np.complex64)})), "holds complex64 values"),
    "parameter of text": (None, _arr(lambda a: a.update({"param.encoder.0.b": np.array(["a"])})),
                          "holds <U1 values"),
    "parameter unknown": (None, _arr(lambda a: a.update({"param.zz": np.zeros(3, np.float32)})),
                          "unexpected []"),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_checkpoint_is_one_checkpoint_error(vae_run, tmp_path, name):
    change_info, change_arrays, says = CRAFTED[name]
    ck = _rewrite(shutil.copy(vae_run / "checkpoint.npz", tmp_path / "ck.npz"),
                  change_arrays, change_info)
    with pytest.raises(CheckpointError) as e:
        scratchvae.load(ck)
    assert says in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("info", ["{not json", "[1, 2]", "3", "null"])
def test_malformed_info_record(vae_run, tmp_path, capsys, info):
    ck = shutil.copy(vae_run / "checkpoint.npz", tmp_path / "ck.npz")
    with np.load(ck) as z:
        arrays = {k: z[k] for k in z.files if k != "__info__"}
    np.savez(ck, __info__=np.array(info), **arrays)
    _one_line(capsys, ["eval", "--resume", str(ck)], "__info__ record is not a JSON object")
    np.savez(ck, __info__=np.array(info.encode()), **arrays)     # bytes, not text
    _one_line(capsys, ["eval", "--resume", str(ck)], "a text record expected")


def test_crafted_checkpoint_on_the_command_line(vae_run, tmp_path, capsys):
    r = _copy(vae_run, tmp_path)
    _rewrite(r / "checkpoint.npz", change_info=_set(["meta", "data"], 5))
    _one_line(capsys, ["eval", "--resume", str(r)], "meta 'data' is 5")
    _one_line(capsys, ["--resume", str(r), "--epochs", "2", "--quiet"], "meta 'data' is 5")


# ------------------------------------------------------------------ 10. permissions, odd files
def test_permission_errors_folders_and_fifos_as_inputs(tmp_path, monkeypatch):
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random((20, 4)))
    real_stat = os.stat

    def denied(path, *a, **kw):
        if str(path).startswith(str(tmp_path / "locked")):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_stat(path, *a, **kw)

    monkeypatch.setattr(os, "stat", denied)
    with pytest.raises(DataError, match="cannot be read \\(Permission denied\\)"):
        load_dataset(path=tmp_path / "locked" / "x.npy")
    with pytest.raises(DataError, match="cannot be read \\(Permission denied\\)"):
        load_dataset("mnist", data_dir=tmp_path / "locked")
    monkeypatch.undo()

    def unreadable(*a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(x))

    monkeypatch.setattr(np, "load", unreadable)
    with pytest.raises(DataError, match="x.npy: cannot be read \\(Permission denied\\)"):
        load_dataset(path=x)
    monkeypatch.setattr(idx, "open", unreadable, raising=False)
    (tmp_path / "a.idx").write_bytes(_idx(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="cannot be read \\(Permission denied\\)"):
        read_idx(tmp_path / "a.idx")
    monkeypatch.undo()
    monkeypatch.setattr("scratchvae.train.zipfile.ZipFile", unreadable)
    (tmp_path / "ck.npz").write_bytes(b"PK")
    with pytest.raises(CheckpointError, match="cannot be read \\(Permission denied\\)"):
        load_checkpoint(tmp_path / "ck.npz")
    monkeypatch.undo()

    (tmp_path / "dir.npy").mkdir()
    (tmp_path / "dir.npz").mkdir()
    os.mkfifo(tmp_path / "fifo.npy")               # opening it would block: never opened
    os.mkfifo(tmp_path / "fifo.idx")
    for path, says in (("dir.npy", "a folder, not a .npy file"),
                       ("fifo.npy", "not a regular file, not a .npy file")):
        with pytest.raises(DataError, match=says):
            load_dataset(path=tmp_path / path)
    with pytest.raises(DataError, match="not a regular file, not an IDX file"):
        read_idx(tmp_path / "fifo.idx")
    with pytest.raises(DataError, match="a folder, not an IDX file"):
        read_idx(tmp_path / "dir.npy")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path / "dir.npz")
    with pytest.raises(CheckpointError, match="is not a regular file"):
        load_checkpoint(tmp_path / "fifo.npy")


# ------------------------------------------------------------------ 11. killed mid-write
def test_a_write_killed_midway_leaves_a_folder_that_can_be_reused(tmp_path, capsys, no_drawing):
    out = tmp_path / "killed"
    out.mkdir()
    code = ("import os, signal\n"
            "from scratchvae.train import atomic_write\n"
            "def write(f):\n"
            "    f.write(b'PK' * 1000); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
            f"atomic_write({str(out / 'checkpoint.npz')!r}, write)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True)
    assert p.returncode == -signal.SIGKILL
    left = os.listdir(out)
    assert len(left) == 1 and left[0].startswith(".tmp-") and left[0].endswith("checkpoint.npz")
    _one_line(capsys, ["eval", "--resume", str(out)], "an unfinished write of an interrupted run")
    assert main(["--model", "vae", "--epochs", "1", "--out", str(out)] + TINY) == 0
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-") or f == runs.LOCK]


def test_checkpoints_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace",
                        lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    atomic_write(tmp_path / "f.bin", lambda f: f.write(b"data"))
    assert calls[:2] == ["fsync", "replace"] and (tmp_path / "f.bin").read_bytes() == b"data"


# ------------------------------------------------------------------ 12. hostile sizes
def test_a_gzip_bomb_is_refused_after_the_promised_size(tmp_path):
    header = bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big")
    bomb = tmp_path / "bomb-idx1-ubyte.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as f:
        f.write(header + b"\1" * 10)
        for _ in range(32):
            f.write(bytes(1 << 20))                      # 32 MiB of zeros past the data
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="over 1 MiB of unexpected bytes"):
            read_idx(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


def _add_member(ck, name, n_bytes, npy_header=False):
    with zipfile.ZipFile(ck, "a", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open(name, "w", force_zip64=True) as f:
            if npy_header:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": "<f4", "fortran_order": False, "shape": (n_bytes // 4,)})
            for _ in range(n_bytes >> 20):
                f.write(bytes(1 << 20))


def test_checkpoint_bombs(vae_run, tmp_path):
    """An extra compressed member is never read; an expected one that expands far past the
    file's size is refused before it is decompressed."""
    ck = shutil.copy(vae_run / "checkpoint.npz", tmp_path / "extra.npz")
    _add_member(ck, "junk.npy", 32 << 20)
    tracemalloc.start()
    try:
        params, _, _ = load_checkpoint(ck)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20 and "encoder.0.W" in params
    ck = shutil.copy(vae_run / "checkpoint.npz", tmp_path / "bomb.npz")
    _add_member(ck, "param.zz.npy", 32 << 20, npy_header=True)
    with pytest.raises(CheckpointError, match="would expand to 32 MiB"):
        load_checkpoint(ck)


# ------------------------------------------------------------------ 13. messages and signals
def test_messages_name_the_choices(tmp_path, capsys):
    _one_line(capsys, ["--model", "vae", "--data", "cifar", "--quiet"],
              "unknown data set 'cifar'; choose one of digits, mnist, fashion-mnist")
    err = _one_line(capsys, ["--model", "vae", "--data", "MNIST", "--data-dir", str(tmp_path),
                             "--quiet"], "mnist: missing")
    for flag in ("inf", "nan", "1e999"):
        with pytest.raises(SystemExit) as e:
            main(["--model", "vae", "--lr", flag])
        assert e.value.code == 2 and "must be a finite number" in capsys.readouterr().err
    assert "--download" in err


def test_feature_mismatch_names_two_different_counts(vae_run, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((30, 10)))
    _one_line(capsys, ["eval", "--resume", str(vae_run), "--data", str(tmp_path / "x.npy")],
              "trained on 64 features but")


@pytest.mark.parametrize("how", ["sigint", "sigterm"])
def test_an_interrupt_before_the_first_checkpoint_promises_no_resume(tmp_path, capsys,
                                                                     monkeypatch, how):
    def interrupted(*a, **kw):
        if how == "sigint":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM was not handled")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr("scratchvae.estimators.base.train_fit", interrupted)
    out = tmp_path / "i"
    rc, err, _ = _run(capsys, ["--model", "vae", "--out", str(out)] + TINY)
    assert rc == (130 if how == "sigint" else 143)
    assert "nothing was kept" in err and "--resume" not in err and "Traceback" not in err
    assert not out.exists() and signal.getsignal(signal.SIGTERM) == before


def test_an_interrupted_resume_says_how_to_continue(vae_run, tmp_path, capsys, monkeypatch):
    r = _copy(vae_run, tmp_path)

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr("scratchvae.estimators.base.train_fit", interrupted)
    rc, err, _ = _run(capsys, ["--resume", str(r), "--epochs", "3", "--quiet"])
    assert rc == 130 and f"--resume {r}" in err and (r / "checkpoint.npz").exists()
    assert not (r / runs.LOCK).exists()


# ------------------------------------------------------------------ the library says the same
def test_library_errors_are_value_errors_with_the_same_sentences(vae_run, tmp_path):
    r = _copy(vae_run, tmp_path)
    _poison(r / "checkpoint.npz")
    for call, cls in ((lambda: scratchvae.load(r / "checkpoint.npz"), CheckpointError),
                      (lambda: load_dataset("cifar"), DataError),
                      (lambda: load_checkpoint(tmp_path / "none.npz"), CheckpointError)):
        with pytest.raises(ValueError) as e:
            call()
        assert isinstance(e.value, cls) and isinstance(e.value, ScratchVAEError)
    assert issubclass(DivergenceError, ValueError) and issubclass(DivergenceError,
                                                                  FloatingPointError)
    info = copy.deepcopy(load_checkpoint(vae_run / "checkpoint.npz")[2])
    assert info["step"] == info["history"][-1]["step"]
    with pytest.raises(DivergenceError):
        save_checkpoint(tmp_path / "n.npz", scratchvae.load(vae_run / "checkpoint.npz").backend_,
                        {"w": np.array([np.inf])}, None, 0, {})


# ------------------------------------------------------------------ fresh attacks (beyond the audit)
def test_fresh_attacks(vae_run, tmp_path, capsys):
    """A checkpoint record nested past Python's stack, a NaN literal in its history, a run
    folder whose metrics.json is a folder (named as itself, not as the temporary), a data path
    that loops on itself, and a lock that is a folder: each one sentence."""
    ck = shutil.copy(vae_run / "checkpoint.npz", tmp_path / "deep.npz")
    with np.load(ck) as z:
        arrays = {k: z[k] for k in z.files if k != "__info__"}
    np.savez(ck, __info__=np.array("[" * 100_000 + "]" * 100_000), **arrays)
    with pytest.raises(CheckpointError, match="not a JSON object"):
        load_checkpoint(ck)
    nan = _rewrite(shutil.copy(vae_run / "checkpoint.npz", tmp_path / "nan.npz"),
                   change_info=_set(["history", 0, "loss"], float("nan")))
    with pytest.raises(CheckpointError, match="history record 1"):
        load_checkpoint(nan)
    (tmp_path / "m" / "metrics.json").mkdir(parents=True)
    with pytest.raises(IsADirectoryError) as e:
        runs.write_json(tmp_path / "m" / "metrics.json", {"a": 1})
    assert e.value.filename == str(tmp_path / "m" / "metrics.json")
    assert os.listdir(tmp_path / "m") == ["metrics.json"]
    os.symlink(tmp_path / "loop.npy", tmp_path / "loop.npy")
    with pytest.raises(DataError, match="Too many levels of symbolic links\\)$"):
        load_dataset(path=tmp_path / "loop.npy")
    (tmp_path / "L" / runs.LOCK).mkdir(parents=True)
    _one_line(capsys, ["--model", "vae", "--epochs", "1", "--out", str(tmp_path / "L")] + TINY,
              "Is a directory")


def test_absurd_sizes_are_refused_before_anything_is_allocated(tmp_path, capsys):
    """An estimate of parameters, Adam state and the widest activations against the free
    memory: one sentence, exit 2, no folder -- before training, not after."""
    from scratchvae.cli import main

    for argv in (["--model", "vae", "--hidden", "1000000000"],
                 ["--model", "vae", "--samples", "10000000"],
                 ["--model", "vae", "--iwae-k", "1000000000"],
                 ["--model", "vqvae", "--codes-per-input", "1000000"]):
        out = tmp_path / "x"
        assert main(argv + ["--quiet", "--out", str(out)]) == 2, argv
        err = capsys.readouterr().err
        assert "GiB" in err and "free" in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    assert main(["bench", "--bench-batch", "10000000", "--bench-steps", "1"]) == 2
    assert "GiB" in capsys.readouterr().err
