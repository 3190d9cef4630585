"""Gaussian smoothing and peaks with their prominence, as scipy defines them, without importing scipy in a worker.

``scipy.signal`` imports ``scipy.stats`` and together they cost 0.5-0.8 s of CPU per process (measured on this
project's 2-core machine), more than fitting every data-driven gate of a sample; a batch run paid it once in every
worker and in the client. These two functions are what the density valley used from them (the scatter gate's
chi-square quantile is the closed form :func:`cytopipe.autogate.robust._chi2_2d`):

* :func:`gaussian_filter1d` is ``scipy.ndimage.gaussian_filter1d(x, sigma, mode="constant")`` (kernel truncated at
  4 sigma, normalised to sum 1, zeros outside the array);
* :func:`find_peaks` is ``scipy.signal.find_peaks(x, prominence=p)``: local maxima (the middle sample of a flat
  top; never the first or last sample) whose prominence is at least ``p``, with scipy's prominence (the peak's
  height over the higher of the lowest points reached on each side before a higher sample or the array's end).

``tests/test_autogate_peaks.py`` checks each against scipy on random and adversarial inputs (flat tops, ties,
plateaus at the ends). Sums are taken in a different order than scipy's C loops, so smoothed densities agree to a
few units in the last place, not bit for bit.
"""

from __future__ import annotations

import numpy as np

__all__ = ["find_peaks", "gaussian_filter1d"]


def gaussian_filter1d(x: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """``x`` smoothed by a Gaussian of standard deviation ``sigma`` samples, zeros beyond both ends.

    Parameters
    ----------
    x : numpy.ndarray
        1-D values (e.g. histogram counts).
    sigma : float
        Kernel standard deviation in samples (> 0).
    truncate : float
        The kernel stops at ``truncate`` standard deviations (scipy's default 4).

    Returns
    -------
    numpy.ndarray
        float64 array of ``x``'s length.
    """
    x = np.asarray(x, dtype=float)
    radius = int(truncate * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 / (float(sigma) * float(sigma)) * offsets.astype(float) ** 2)
    kernel /= kernel.sum()
    # 'full' then the centred slice: correct whether the kernel or the array is the longer one.
    return np.convolve(x, kernel, mode="full")[radius:radius + x.size]


def _local_maxima(x: np.ndarray) -> list[int]:
    """Indices of local maxima: a sample higher than its left neighbour and than the first different sample to its
    right; a flat top gives its middle sample (rounded down); the first and last samples are never maxima."""
    values = x.tolist()
    n = len(values)
    peaks = []
    i = 1
    while i < n - 1:
        if values[i - 1] < values[i]:
            ahead = i + 1
            while ahead < n - 1 and values[ahead] == values[i]:
                ahead += 1
            if values[ahead] < values[i]:
                peaks.append((i + ahead - 1) // 2)
                i = ahead
        i += 1
    return peaks


def _prominence(values: list[float], peak: int) -> float:
    """How far ``peak`` stands above the higher of the two lowest points reached walking away from it on each side
    until a higher sample or the end of the array."""
    top = values[peak]
    left_min = top
    i = peak
    while i >= 0 and values[i] <= top:
        left_min = min(left_min, values[i])
        i -= 1
    right_min = top
    i = peak
    while i < len(values) and values[i] <= top:
        right_min = min(right_min, values[i])
        i += 1
    return top - max(left_min, right_min)


def find_peaks(x: np.ndarray, prominence: float) -> np.ndarray:
    """Indices of the local maxima of ``x`` whose prominence is at least ``prominence`` (ascending).

    Parameters
    ----------
    x : numpy.ndarray
        1-D values.
    prominence : float
        Smallest prominence kept.

    Returns
    -------
    numpy.ndarray
        int64 indices into ``x``.
    """
    x = np.asarray(x, dtype=float)
    values = x.tolist()
    kept = [p for p in _local_maxima(x) if _prominence(values, p) >= prominence]
    return np.asarray(kept, dtype=np.int64)

