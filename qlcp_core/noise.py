"""Noise model: what scatter a light curve should have, to compare with what it has.

Two independent sources per star and frame, added in quadrature:

* the CCD equation (photon noise of star and sky, read noise, and the noise of
  the sky estimate itself), :func:`ccd_sigma_mag`;
* atmospheric scintillation, Young's approximation in the form of Osborn et
  al. (2015), :func:`scintillation_sigma`.

:func:`predicted_sigma` combines a target with a weighted ensemble of
comparison stars into the error of a differential magnitude.  Stars are
assumed independent (scintillation decorrelates within a few arcseconds for
small telescopes).

All functions broadcast over numpy arrays (e.g. one value per frame).
"""

from __future__ import annotations

import numpy as np

#: 2.5 / ln(10): magnitude error of a small relative flux error
MAG_PER_REL = 2.5 / np.log(10.0)

#: scale height of the atmospheric turbulence in Young's formula, m
SCINT_H = 8000.0


def ccd_sigma_mag(flux_adu, npix, sky_adu_per_pix, gain, rdnoise_e, nsky=None):
    """Magnitude error of aperture photometry from the CCD equation.

    .. math::

        N = g F, \\qquad
        \\sigma_N^2 = N + n_{pix} (1 + n_{pix}/n_{sky}) (g S + R^2), \\qquad
        \\sigma_m = 1.0857\\, \\sigma_N / N

    (Merline & Howell 1995; Howell, *Handbook of CCD Astronomy*), with dark
    current neglected (bias/dark already removed, included in ``S`` if any).

    Parameters
    ----------
    flux_adu : float or array
        Sky-subtracted flux of the star in the aperture, ADU.
    npix : float or array
        Pixels in the aperture (``pi r**2``).
    sky_adu_per_pix : float or array
        Sky level, ADU per pixel.
    gain : float
        e-/ADU.
    rdnoise_e : float
        Read noise, e- per pixel.
    nsky : float or array, optional
        Pixels used to estimate the sky; None: the sky is known exactly.

    Returns
    -------
    float or array
        Magnitude error; NaN where the flux is not positive.
    """
    flux = np.asarray(flux_adu, dtype=float)
    npix = np.asarray(npix, dtype=float)
    sky = np.clip(np.asarray(sky_adu_per_pix, dtype=float), 0.0, None)
    n_e = flux * gain
    sky_factor = 1.0 if nsky is None else 1.0 + npix / np.asarray(nsky, dtype=float)
    var = n_e + npix * sky_factor * (sky * gain + float(rdnoise_e) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        sig = MAG_PER_REL * np.sqrt(var) / n_e
    return np.where(n_e > 0, sig, np.nan)


def scintillation_sigma(diameter_m, exptime_s, airmass, height_m, cy=1.5):
    """Relative flux error from atmospheric scintillation (Young's approximation).

    Osborn, Föhring, Dhillon & Wilson 2015, MNRAS 452, 1707, eq. 7 (after
    Young 1967, AJ 72, 747, and Dravins et al. 1998)::

        sigma_Y**2 = 1e-5 * C_Y**2 * D**(-4/3) * t**(-1) * (cos gamma)**(-3) * exp(-2 h_obs / H)

    with ``D`` the aperture diameter (m), ``t`` the exposure time (s),
    ``gamma`` the zenith distance (``1/cos gamma`` = airmass ``X``), ``h_obs``
    the observatory altitude (m) and ``H = 8000`` m the scale height of the
    turbulence.  ``C_Y`` is the empirical coefficient Osborn et al. introduce
    to correct Young's value; 1.5 is their median over several sites (range
    about 1.3 to 1.6).  ``sigma_Y**2`` is the variance of the relative flux
    (the scintillation index), so the return value is ``sigma_Y``.

    Parameters
    ----------
    diameter_m, exptime_s, airmass, height_m : float or array
    cy : float

    Returns
    -------
    float or array
        Relative flux standard deviation (multiply by 1.0857 for magnitudes).
    """
    d = np.asarray(diameter_m, dtype=float)
    t = np.asarray(exptime_s, dtype=float)
    x = np.asarray(airmass, dtype=float)
    h = np.asarray(height_m, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = 1e-5 * cy**2 * d ** (-4.0 / 3.0) / t * x**3 * np.exp(-2.0 * h / SCINT_H)
    return np.sqrt(var)


def star_sigma_mag(flux_adu, npix, sky_adu_per_pix, gain, rdnoise_e, nsky=None, *,
                   diameter_m=None, exptime_s=None, airmass=None, height_m=0.0, cy=1.5):
    """Magnitude error of one star: CCD equation and (when the telescope is given) scintillation.

    Scintillation is left out when any of ``diameter_m``, ``exptime_s``,
    ``airmass`` is None; a NaN airmass or exposure time gives no
    scintillation term for that frame rather than a NaN error.
    """
    ccd = ccd_sigma_mag(flux_adu, npix, sky_adu_per_pix, gain, rdnoise_e, nsky)
    if diameter_m is None or exptime_s is None or airmass is None:
        return ccd
    sc = MAG_PER_REL * scintillation_sigma(diameter_m, exptime_s, airmass, height_m, cy)
    sc = np.where(np.isfinite(sc), sc, 0.0)
    return np.sqrt(ccd**2 + sc**2)


def ensemble_sigma(sigma_refs, weights):
    """Error of a weighted mean of comparison-star magnitudes.

    ``sigma_E**2 = sum(w_i**2 sigma_i**2) / (sum w_i)**2`` over the stars with a
    finite ``sigma_i`` (missing stars are left out of that frame's mean).

    Parameters
    ----------
    sigma_refs : array (..., n_ref)
        Magnitude error of each comparison star (NaN: missing).
    weights : array (n_ref,)
    """
    s = np.asarray(sigma_refs, dtype=float)
    w = np.broadcast_to(np.asarray(weights, dtype=float), s.shape)
    use = np.isfinite(s) & (w > 0)
    num = np.sum(np.where(use, w**2 * s**2, 0.0), axis=-1)
    den = np.sum(np.where(use, w, 0.0), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, np.sqrt(num) / den, np.nan)


def predicted_sigma(flux_t, sky_t, flux_refs, sky_refs, weights, npix, gain, rdnoise_e, nsky=None, *,
                    diameter_m=None, exptime_s=None, airmass=None, height_m=0.0, cy=1.5):
    """Predicted error of a differential magnitude: target minus weighted ensemble.

    ``sigma = sqrt(sigma_t**2 + sigma_E**2)`` where each star's error is
    :func:`star_sigma_mag` (CCD equation + scintillation) and ``sigma_E`` is
    :func:`ensemble_sigma` of the comparison stars with the given weights.

    Parameters
    ----------
    flux_t, sky_t : array (n_frame,) or float
        Target flux (ADU) and local sky (ADU/pixel).
    flux_refs, sky_refs : array (n_frame, n_ref)
        The same for the comparison stars; NaN flux = missing in that frame.
    weights : array (n_ref,)
        Ensemble weights (any normalisation).
    npix : float or array (n_frame,)
        Pixels in the aperture.
    gain, rdnoise_e, nsky, diameter_m, exptime_s, airmass, height_m, cy
        As in :func:`star_sigma_mag`; per-frame arrays broadcast.

    Returns
    -------
    array (n_frame,) or float
        Magnitude error of the differential magnitude.
    """
    kw = dict(diameter_m=diameter_m, exptime_s=exptime_s, airmass=airmass, height_m=height_m, cy=cy)
    sig_t = star_sigma_mag(flux_t, npix, sky_t, gain, rdnoise_e, nsky, **kw)
    fr = np.asarray(flux_refs, dtype=float)

    def col(v):     # per-frame values against (n_frame, n_ref) arrays
        return v if v is None or np.ndim(v) == 0 else np.asarray(v, dtype=float)[..., None]

    kw_r = {k: (col(v) if k in ("exptime_s", "airmass") else v) for k, v in kw.items()}
    sig_r = star_sigma_mag(fr, col(npix), sky_refs, gain, rdnoise_e, col(nsky), **kw_r)
    sig_e = ensemble_sigma(sig_r, weights)
    return np.sqrt(sig_t**2 + sig_e**2)
