"""Night simulator: a realistic synthetic night of a small telescope, with its truth.

:func:`simulate_night` writes, for one object in one band::

    {out_dir}/raw/bias-0001.fit ...        bias frames (EXPTIME 0)
    {out_dir}/raw/flat-0001V.fit ...       evening twilight flats
    {out_dir}/raw/SIMV-0001V.fit ...       science frames (the raw night: nothing else is in raw/)
                                           (``dated=True``: all in ``{out_dir}/raw/YYYYMMDD/``)
    {out_dir}/night.yaml                   a QLCP config of the night (site, detector)
    {out_dir}/truth/stars.ecsv             every star: id, x, y (0-based, base = first science frame),
                                           mag, flux_e, role ('target'|'constant'|'saturated'|'field'), in_base
    {out_dir}/truth/frames.ecsv            one row per science frame (times, offset, seeing, sky, airmass, ...;
                                           with ``flip_at``/``rotation_deg``/``scale`` also rot_deg, scale
                                           and the transform m00..m12: :func:`truth_transforms`)
    {out_dir}/truth/cosmics.ecsv           cosmic-ray hits (frame file, x, y in that frame, electrons)
    {out_dir}/truth/bias.fits              noiseless bias pattern, ADU (float32)
    {out_dir}/truth/flat_{band}.fits       true pixel response, normalised to median 1 (float32)
    {out_dir}/truth/truth.json             site, target RA/Dec, eclipse ephemeris, detector, seed, options

File names follow the original QLCP patterns, so the original program can
reduce the night as well.  Frames are 16-bit unsigned integers (BITPIX 16,
BZERO 32768), written one at a time (memory does not grow with the number of
frames) and atomically through :mod:`qlcp.core.io`.  Everything is
deterministic for a given ``seed``: every frame draws its noise from its own
generator seeded with ``(seed, stream, frame index)``.

Detector and noise model (exactly)
----------------------------------
For every pixel of every frame, with P the pixel response (``truth/flat_{band}.fits``),
B the bias pattern (``truth/bias.fits``), g the gain (e-/ADU) and r the read noise (e-)::

    light_e   = (sky_e(x, y) + stars_e(x, y)) * P(x, y)          expected photo-electrons
    electrons = Poisson(light_e) + cosmic_e(x, y)                 (cosmic rays: no Poisson, no flat)
    ADU       = electrons / g + B(x, y) + Normal(0, r / g)
    raw       = clip(round(ADU), 0, 65535)                        stored as uint16

Bias frames have ``light_e = 0``; flats have ``light_e = level * g * P`` (uniform
twilight illumination); there is no dark current.  So a bias-subtracted,
flat-fielded frame has, per pixel, variance ``light_e / P**2 / g**2 + (r/g)**2 / P**2``
in ADU^2 (plus 1/12 ADU^2 of rounding): the CCD equation.

Stars
-----
A star of ``flux_e`` electrons (one exposure, airmass 1, clear sky) gives, in
frame i, ``flux_e * 10**(-0.4 * k * (X_i - 1)) * T_i`` electrons (times the
eclipse factor for the target), with X_i the airmass (``sec z`` of astropy
AltAz at mid-exposure, no refraction), k the extinction coefficient (mag per
airmass) and T_i the transparency (1 clear, 0.6-0.9 thin clouds, ~0.03 thick
clouds).  Its light is a circular Moffat profile (beta ~3, FWHM from
``frames.ecsv``) sampled at pixel centres (pixel (x, y) has its centre at the
integer coordinates, 0-based, as numpy and sep) in a stamp large enough that
at most ~1e-3 of the flux (or 0.3 e-) is cut off.  The position of a star in
frame i is its base position plus the frame's true offset ``(dx, dy)``.

Magnitudes: ``mag = zeropoint - 2.5 log10(flux_e / exptime)`` (zeropoint: the
magnitude giving 1 e-/s at airmass 1).

The target (id 0) is an eclipsing star: relative flux
``1 - delta * (1 - u**2)**1.5`` for ``|u| < 1``, ``u = 2 (t - t0) / D``, with
t the BJD_TDB, ``delta = 1 - 10**(-0.4 * depth)``, D the duration; out of
eclipse it is exactly 1.  ``frames.ecsv:target_rel_flux`` is its mean over the
exposure.  The ``constant`` stars (ids 1..n) are bright, isolated and never
vary; cosmic rays are kept at least 20 px away from the target, the constant
stars and the saturated star, and no field star lies within ~18 px of the
target or a constant star, so their light curves follow the CCD equation.

The night
---------
Defaults: Xinglong, local night of 2024-06-06.  Bias frames 2.75 h and
evening twilight flats 2 h before the first science exposure (22:00 local);
the flats fade from a saturated one (median ~61000 ADU) through ones inside
the default limits [5000, 50000] to one too faint (~2800 ADU).  Science
frames start every ``cadence`` s (+-0.3 s); the target (RA chosen so it rises
from airmass ~1.8, or is centred on the meridian for long runs) is in
``truth.json``.  The field drifts by ``drift`` px per frame (plus 0.05 px
jitter) and jumps by ``jump`` px at the middle frame; seeing wanders smoothly
between ``fwhm_min`` and ``fwhm_max``; the sky fades after twilight then
brightens slowly, with a linear gradient across the frame
(``truth.json:sky_model``); a few frames have thin clouds and one thick clouds.

Geometry (off by default): ``flip_at`` turns the field 180 deg about the
detector centre from that fraction of the night on, with a pointing offset
``flip_offset`` (a German-equatorial meridian flip); ``rotation_deg`` and
``scale`` turn and scale every frame after the first against the first (a
camera rotated after the base frame, a focus change); ``rotation_total_deg`` turns the field
gradually, from 0 at the first frame to that angle at the last, and ``drift_total`` replaces the
per-frame ``drift`` by a linear drift of that many (dx, dy) px over the night (a real night's
polar misalignment and guiding drift; the jump still applies).  Frame i then sees a
base position p at ``s R(theta) (p - c) + c + (dx, dy)``, c the detector
centre; ``frames.ecsv`` gives the matrix.  With the options off, every file is
byte-identical to that of a version without them.

The package's modules, each importing only those above it:

=============  ===============================================================================
``options``    what is asked (:class:`SimOptions`), what is returned, the seeded random streams
``plan``       times, pointing, conditions, eclipse, geometry and the star field of the night
``frames``     bias, flat and science frames: pixels, headers, truth tables
``night``      the night on disk: :func:`simulate_night`, :func:`simulate_small`, :func:`truth_transforms`
=============  ===============================================================================
"""

from .night import simulate_night, simulate_small, truth_transforms
from .options import SimOptions, SimulatedNight

__all__ = ["SimOptions", "SimulatedNight", "simulate_night", "simulate_small", "truth_transforms"]
