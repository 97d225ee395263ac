"""Noise model: CCD equation against a Monte-Carlo, scintillation against the formula by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qlcp.core.noise import (ccd_sigma_mag, ensemble_sigma, predicted_sigma, scintillation_sigma,
                             star_sigma_mag)


def _monte_carlo(flux_adu, npix, sky, gain, rdnoise, nsky, n=40000, seed=0):
    """Aperture photometry of n trials: Poisson star and sky (electrons), Gaussian read noise per pixel,
    sky estimated from nsky annulus pixels (None: sky known exactly)."""
    rng = np.random.default_rng(seed)
    star_e = rng.poisson(flux_adu * gain, n)
    ap_sky_e = rng.poisson(npix * sky * gain, n)
    ap_read = rng.normal(0, rdnoise * math.sqrt(npix), n)
    total_adu = (star_e + ap_sky_e + ap_read) / gain
    if nsky is None:
        sky_est = sky
    else:
        ann = rng.poisson(nsky * sky * gain, n) + rng.normal(0, rdnoise * math.sqrt(nsky), n)
        sky_est = ann / gain / nsky
    f = total_adu - npix * sky_est
    return np.std(25 - 2.5 * np.log10(f))


@pytest.mark.parametrize("flux, npix, sky, gain, rdnoise, nsky", [
    (5000.0, 50.0, 200.0, 2.0, 10.0, 300.0),      # sky and photon noise
    (1500.0, 50.0, 50.0, 1.2, 15.0, 150.0),       # read-noise dominated, small annulus
    (2e5, 80.0, 1000.0, 1.5, 5.0, None),          # bright star, sky known exactly
])
def test_ccd_equation_matches_monte_carlo(flux, npix, sky, gain, rdnoise, nsky):
    mc = _monte_carlo(flux, npix, sky, gain, rdnoise, nsky)
    assert ccd_sigma_mag(flux, npix, sky, gain, rdnoise, nsky) == pytest.approx(mc, rel=0.05)


def test_ccd_equation_broadcasts_and_rejects_nonpositive_flux():
    s = ccd_sigma_mag(np.array([1e4, 0.0, -5.0, np.nan]), 30.0, 100.0, 1.0, 5.0)
    assert np.isfinite(s[0]) and np.isnan(s[1:]).all()
    # pure photon noise: 1.0857 / sqrt(N)
    assert ccd_sigma_mag(1e4, 10.0, 0.0, 1.0, 0.0) == pytest.approx(1.0857362 / 100.0, rel=1e-6)


def test_scintillation_worked_number():
    # Osborn et al. 2015 eq. 7 with D = 0.85 m, t = 30 s, X = 1.5, h = 960 m, C_Y = 1.5, H = 8000 m:
    # 1e-5 * 1.5**2            = 2.25e-5
    # * 0.85**(-4/3) = 1.24196 -> 2.79441e-5
    # / 30                     -> 9.31470e-7
    # * 1.5**3 = 3.375         -> 3.14371e-6
    # * exp(-2*960/8000) = exp(-0.24) = 0.786628 -> 2.47293e-6 ;  sqrt -> 1.5726e-3
    assert scintillation_sigma(0.85, 30.0, 1.5, 960.0, 1.5) == pytest.approx(1.5726e-3, rel=2e-4)
    # and the same formula written out here
    by_hand = math.sqrt(1e-5 * 1.5**2 * 2.0 ** (-4 / 3) / 10.0 * 1.2**3 * math.exp(-2 * 2400.0 / 8000.0))
    assert scintillation_sigma(2.0, 10.0, 1.2, 2400.0, 1.5) == pytest.approx(by_hand, rel=1e-12)


def test_scintillation_scaling():
    s0 = scintillation_sigma(1.0, 10.0, 1.0, 0.0, 1.5)
    assert s0 == pytest.approx(1.5 * math.sqrt(1e-6), rel=1e-12)
    assert scintillation_sigma(8.0, 10.0, 1.0, 0.0) == pytest.approx(s0 / 4.0)      # D**(-2/3)
    assert scintillation_sigma(1.0, 40.0, 1.0, 0.0) == pytest.approx(s0 / 2.0)      # t**(-1/2)
    assert scintillation_sigma(1.0, 10.0, 4.0, 0.0) == pytest.approx(s0 * 8.0)      # X**(3/2)
    assert scintillation_sigma(1.0, 10.0, 1.0, 0.0, cy=3.0) == pytest.approx(2 * s0)


def test_star_sigma_adds_scintillation_in_quadrature():
    ccd = ccd_sigma_mag(1e6, 50, 100, 2.0, 5.0)
    sc = 2.5 / math.log(10) * scintillation_sigma(0.5, 5.0, 2.0, 100.0)
    s = star_sigma_mag(1e6, 50, 100, 2.0, 5.0, diameter_m=0.5, exptime_s=5.0, airmass=2.0, height_m=100.0)
    assert s == pytest.approx(math.hypot(ccd, sc))
    assert sc > ccd          # a bright star in a small telescope: scintillation limited
    # no telescope given: CCD equation only
    assert star_sigma_mag(1e6, 50, 100, 2.0, 5.0) == pytest.approx(ccd)


def test_ensemble_and_predicted_sigma():
    # N identical comparison stars with equal weights: sigma_E = sigma / sqrt(N)
    assert ensemble_sigma(np.full(9, 0.03), np.ones(9)) == pytest.approx(0.01)
    # a missing star (NaN) is left out of that frame's mean
    e = ensemble_sigma(np.array([[0.03, 0.03, 0.03, 0.03], [0.03, np.nan, np.nan, 0.03]]), np.ones(4))
    np.testing.assert_allclose(e, [0.015, 0.03 / math.sqrt(2)])
    # inverse-variance weights give the minimum variance 1/sqrt(sum 1/s**2)
    s = np.array([0.01, 0.02, 0.04])
    assert ensemble_sigma(s, 1 / s**2) == pytest.approx(1 / math.sqrt(np.sum(1 / s**2)))
    # target + ensemble
    ft, fr = 1e5, np.full((3, 4), 2e5)
    p = predicted_sigma(np.full(3, ft), 100.0, fr, np.full((3, 4), 100.0), np.ones(4), 50.0, 2.0, 5.0, 300.0)
    st = ccd_sigma_mag(ft, 50.0, 100.0, 2.0, 5.0, 300.0)
    sr = ccd_sigma_mag(2e5, 50.0, 100.0, 2.0, 5.0, 300.0)
    np.testing.assert_allclose(p, math.sqrt(st**2 + sr**2 / 4))
