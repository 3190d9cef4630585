"""cytopipe.autogate.peaks against scipy, the definitions it reproduces (scipy stays installed as an oracle)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage, signal, stats

from cytopipe.autogate.peaks import find_peaks, gaussian_filter1d
from cytopipe.autogate.robust import _chi2_2d


def _cases() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    cases = [
        np.array([0.0, 1, 1, 1, 0]),  # flat top: its middle
        np.array([0.0, 1, 1, 0, 2, 2, 2, 2, 0]),  # flat tops of even and odd width
        np.array([3.0, 1, 2, 1, 3]),  # the ends are never peaks
        np.array([0.0, 2, 2, 2]),  # a plateau running into the end is not a peak
        np.array([0.0, 1, 0, 1, 0, 1, 0]),  # equal peaks: prominence limited by the other side
        np.zeros(10),
        np.array([1.0]),
        np.array([]),
    ]
    for n in (5, 50, 300, 1000):
        cases.append(rng.normal(size=n))
        cases.append(np.round(rng.normal(size=n) * 3) / 3)  # many ties
        counts = np.histogram(np.r_[rng.normal(0, 1, 4000), rng.normal(4, 0.7, 1500)], bins=n)[0]
        cases.append(counts.astype(float))
    return cases


@pytest.mark.parametrize("case", range(len(_cases())))
def test_find_peaks_is_scipys(case: int) -> None:
    """Same peak indices as ``scipy.signal.find_peaks(x, prominence=p)`` for several thresholds (exact: both
    compare the same float64 values)."""
    x = _cases()[case]
    span = float(x.max() - x.min()) if x.size else 0.0
    for fraction in (0.0, 0.01, 0.1, 0.5):
        expected, _ = signal.find_peaks(x, prominence=fraction * span)
        assert find_peaks(x, prominence=fraction * span).tolist() == expected.tolist()


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5, 7.9, 40.0])
def test_gaussian_filter1d_is_scipys(sigma: float) -> None:
    """``scipy.ndimage.gaussian_filter1d(x, sigma, mode="constant")`` up to summation order: relative 1e-12 of the
    largest value (float64 sums of at most a few hundred terms; the order differs from scipy's C loop)."""
    rng = np.random.default_rng(11)
    for x in (rng.poisson(30, 200).astype(float), np.r_[np.zeros(20), 1.0, np.zeros(20)], rng.random(15)):
        ours = gaussian_filter1d(x, sigma)
        theirs = ndimage.gaussian_filter1d(x, sigma, mode="constant")
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12 * max(float(np.abs(theirs).max()), 1.0))


def test_chi2_quantile_is_scipys() -> None:
    """The scatter gate's ellipse size: ``-2 ln(1 - p)`` is ``scipy.stats.chi2.ppf(p, 2)`` to 4 ulp."""
    for p in (0.5, 0.8, 0.9, 0.95, 0.975, 0.99, 0.999, 0.9999):
        assert _chi2_2d(p) == pytest.approx(float(stats.chi2.ppf(p, 2)), rel=1e-15)


def test_fitting_the_bundled_strategy_imports_no_scipy() -> None:
    """A worker fitting every data-driven gate of ``treg.yaml`` on a bundled file never imports scipy (its
    ``signal``/``stats`` import costs 0.5-0.8 s of CPU in every worker)."""
    code = (
        "import glob, inspect, sys\n"
        "from cytopipe.gatefile import load_strategy\n"
        "from cytopipe.pipeline import SampleTask, process_sample, resolve_treg\n"
        "strategy = load_strategy('treg')\n"
        "treg, parent = resolve_treg(strategy)\n"
        "f = sorted(glob.glob('sample_fcs/*.fcs'))[0]\n"
        "fields = inspect.signature(SampleTask).parameters\n"
        "kw = dict(sample='x', file=f, subject='s', timepoint='t', day=0.0, strategy=strategy, treg=treg,\n"
        "          parent=parent, plots_dir=None)\n"
        "r = process_sample(SampleTask(**{k: v for k, v in kw.items() if k in fields}))\n"
        "assert r.failure is None, r.failure\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))\n"
    )
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
