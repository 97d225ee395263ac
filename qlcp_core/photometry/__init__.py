"""Step p: source extraction and aperture photometry of corrected frames (sep).

The package's modules, each importing only those above it:

=================  ==========================================================================
``pixels``         flag bits, columns, apertures and sky annulus; vectorised per-star pixel work
``frame``          a frame's global background and its sources (detected or given)
``measurement``    the measurement of a frame (:func:`measure`; the method and error model)
``forced``         crowded fields: a group's reference stars tracked on every frame
``files``          a frame's catalogue file (:func:`photometry_file`), a group's reference
=================  ==========================================================================

The names other modules use are exported here (``from qlcp.core import
photometry as phot_mod; phot_mod.photometry_file(...)``):

* :func:`~qlcp.core.photometry.files.photometry_file`, :func:`~qlcp.core.photometry.files.catalogue_path`,
  :func:`~qlcp.core.photometry.files.reference_of` (files);
* :func:`~qlcp.core.photometry.measurement.measure` (measurement);
* :class:`~qlcp.core.photometry.forced.StarSet`, :func:`~qlcp.core.photometry.forced.measure_tracked` (forced);
* ``FLAG_BORDER``, ``FLAG_SATURATED``, ``FLAG_BLENDED``, ``FLAG_BADFLUX``, ``FLAG_COSMIC``,
  ``COLUMNS``, ``MAG_ZP``, ``SKY_GAP``, ``SKY_THICK`` (pixels).

The transform a tracked frame's catalogue records (``PHOTM00..PHOTM12``) is read and written by
:mod:`qlcp.core.offset` (``TRANSFORM_CARDS``, ``transform_cards``, ``transform_of``), the module
below both step p and step o.
"""

from .files import catalogue_path, photometry_file, reference_of
from .forced import StarSet, measure_tracked
from .measurement import measure
from .pixels import (COLUMNS, FLAG_BADFLUX, FLAG_BLENDED, FLAG_BORDER, FLAG_COSMIC, FLAG_SATURATED, MAG_ZP,
                     SKY_GAP, SKY_THICK)

__all__ = ["COLUMNS", "FLAG_BADFLUX", "FLAG_BLENDED", "FLAG_BORDER", "FLAG_COSMIC", "FLAG_SATURATED", "MAG_ZP",
           "SKY_GAP", "SKY_THICK", "StarSet", "catalogue_path", "measure", "measure_tracked", "photometry_file",
           "reference_of"]
