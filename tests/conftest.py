"""Shared test set-up: hypothesis profiles and backends.

With ``CI`` set, hypothesis loads its built-in ``ci`` profile (derandomised, so CI is
reproducible); ``HYPOTHESIS_PROFILE=dev`` runs many more examples locally.
"""
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("fast", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
elif os.environ.get("CI"):
    settings.register_profile("ci-fast", parent=settings.get_profile("ci"), max_examples=25,
                              deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("ci-fast")
else:
    settings.load_profile("fast")


@pytest.fixture(scope="session")
def b64():
    from scratchvae.backend import Backend

    return Backend("numpy", "float64", seed=0)


@pytest.fixture(scope="session")
def strict64():
    from scratchvae.backend import Backend

    return Backend("strict", "float64", seed=0, device_name="device1")


@pytest.fixture
def no_drawing(monkeypatch):
    """For tests of numbers, not pictures: figures are built but not rendered to PNG (the
    rendering is most of a tiny run's time).  Every figure is rendered and checked by the tests
    of the reports (tests/test_reports.py, tests/test_tour.py::test_quick_tour_report)."""
    from scratchvae import paperfigs, plots
    from scratchvae.kl import figures as kl_figures

    def skip(fig, path, **kw):
        plots._plt().close(fig)
        return str(path)

    for mod in (plots, paperfigs, kl_figures):
        monkeypatch.setattr(mod, "save_fig", skip)
    monkeypatch.setattr(paperfigs, "embedding", lambda *a, **kw: None)
