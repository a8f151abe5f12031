"""`python run.py` (the whole assignment) with tiny budgets: every figure the report shows
exists, every link resolves, and every number it reports is finite."""
import json
import math
import os
import re

from scratchvae.cli import main


def test_quick_tour_report(tmp_path):
    out = tmp_path / "tour"
    assert main(["--quick", "--quiet", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    for sec in ("§1", "§2", "§3", "§4"):
        assert f"## {sec}" in report
    from _reports import check_report

    check_report(out, min_figures=24)             # every figure legible, 150 dpi, not blank
    for stage in ("vae", "fullcov", "gmvae", "vqvae"):
        check_report(out / stage, min_figures=3)
        assert f"({stage}/report.md)" in report or stage in ("gmvae", "vqvae"), stage
    for f in ("vae/curve.png", "vae/reconstructions.png", "vae/samples.png",
              "fullcov/latent2d.png", "fullcov/manifold.png", "gmvae/curve.png",
              "gmvae/confusion.png", "gmvae/tsne.png", "gmvae/samples.png",
              "vqvae/vq_atlas.png", "vqvae/vq_samples_empirical.png", "vqvae/curve.png"):
        assert f"]({f})" in report, f               # drawn and put in the report
    for rel in re.findall(r"\]\(([^)]+\.(?:md|py))\)", report):
        assert os.path.exists(os.path.normpath(out / rel)), rel
    m = json.loads((out / "metrics.json").read_text())
    for stage, keys in {"vae": ("iwae_ll", "elbo", "recon", "kl"),
                        "fullcov": ("iwae_ll", "elbo", "recon", "kl"),
                        "gmvae": ("iwae_ll", "elbo", "acc", "nmi", "ari"),
                        "vqvae": ("recon", "perplexity", "usage", "bits_per_dim"),
                        "kl": ("forward_min_var", "merge_separation", "global_switch_separation")}.items():
        for k in keys:
            assert math.isfinite(m[stage][k]), (stage, k)
    # the table cells are the metrics, not placeholders
    assert not re.search(r"\bnan\b|\binf\b", report.lower())
    assert f"{m['gmvae']['acc']:.3f}" in report


def test_quick_tour_on_array_api_strict(tmp_path, no_drawing):
    """Every stage runs on array-api-strict: nothing outside the array API standard (the
    figures are host-side NumPy, drawn and checked by the test above)."""
    out = tmp_path / "strict"
    assert main(["--quick", "--quiet", "--backend", "strict", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["header"]["backend"] == "strict"
    for stage in ("vae", "fullcov", "gmvae"):
        assert math.isfinite(m[stage]["iwae_ll"])
    assert math.isfinite(m["vqvae"]["perplexity"])
