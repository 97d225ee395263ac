"""Step d: differential photometry against a weighted ensemble of comparison stars.

Ensemble (per aperture)
-----------------------
Each comparison star ``i`` is first normalised to its own zero point ``c_i``
(its median magnitude, refined so that ``m_i(f) - c_i`` agrees with the
ensemble over the night), giving ``z_i(f) = m_i(f) - c_i``.  The ensemble of
frame ``f`` is the weighted mean over the comparisons present in that frame::

    E(f) = sum_i w_i z_i(f) / sum_i w_i  +  M0,        M0 = sum_i w_i c_i / sum_i w_i

and a target's differential magnitude is ``m_t(f) - E(f)``.  We average
magnitudes, not fluxes: with ``w_i = 1/sigma_i**2`` this is the minimum-variance
estimate of the frame's zero point from independent stars, and because every
``z_i`` is normalised first, a comparison missing in one frame only drops out
of that frame's mean, without a jump.  ``M0`` is a constant, so the
differential magnitudes stay near ``m_t - <m_ref>`` as in the original.

Weights come from the comparison stars alone (never from a target or check
star), leave-one-out, iterated (cf. Broeg, Fernández & Neuhäuser 2005, AN
326, 134): star ``i`` is compared with the ensemble of the *other*
comparisons, and ``w_i = 1 / s_i**2`` with ``s_i`` the 5-sigma-clipped
standard deviation of that differential light curve.

A comparison star is rejected, with the reason recorded, when it

* saturates (``Flags & 2``) in any usable frame;
* is missing in more than ``pick_bad_max`` of the usable frames;
* varies: its leave-one-out scatter is more than ``ref_var_k`` (default 3)
  times its predicted noise (CCD equation + scintillation of the star and of
  the other comparisons), after dividing by the median of that ratio over all
  comparisons when that median exceeds 1 (so clouds or flat-field errors
  common to all stars do not reject everyone).  Stars are rejected one at a
  time, worst first, and the ensemble refitted (at least 3 comparisons are
  needed to tell which one varies).

Errors: per frame, ``err = sqrt(e_t**2 + sigma_E**2)`` with ``e`` the
catalogue error and scintillation in quadrature, and
``sigma_E**2 = sum w_i**2 e_i**2 / (sum w_i)**2``.

Noise budget (``lc.meta['noise']``, per target/check and aperture): the
predicted scatter, median over frames of :func:`qlcp.core.noise.predicted_sigma`
(CCD equation + scintillation of the star and of the weighted ensemble),
against the achieved one, :func:`robust_scatter` (robust, from second
differences, so an eclipse does not inflate it); ``noisy`` when achieved >
2 x predicted (clouds, systematics), with a warning.

Products: ``{red}/lc_{obj}_{band}.ecsv``, ``{red}/stars_{obj}_{band}.ecsv`` and
the original's text files ``{red}/cali_{obj}_AP{aper}/...txt``
(:func:`write_lightcurve`).

The package's modules, each importing only those above it:

===============  ==============================================================================
``ensemble``     target/comparison/check indexes, robust scatter, noise model, the ensemble fit
``error_model``  noise budget, errors scaled to the scatter, the gain source (``GAINSRC``)
``lightcurves``  :func:`differential`: a group's light curves and stars tables
``files``        :func:`write_lightcurve`: the products on disk
===============  ==============================================================================
"""

from .ensemble import NOISY_K, REF_VAR_K, resolve_indexes, robust_scatter
from .error_model import apply_error_model, corrected_gain_source
from .files import write_lightcurve
from .lightcurves import differential, star_labels

__all__ = ["NOISY_K", "REF_VAR_K", "apply_error_model", "corrected_gain_source", "differential", "resolve_indexes",
           "robust_scatter", "star_labels", "write_lightcurve"]
