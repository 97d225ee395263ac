"""Step w: sky coordinates of the base frame (a celestial WCS), from its header or solved offline.

Three pieces:

* :func:`header_wcs` reads a celestial WCS from a FITS header and checks it
  (:func:`check_wcs`: celestial, a zenithal projection such as TAN, a
  non-singular matrix with square pixels, a plausible pixel scale, within 20 %
  of the configured or header pixel scale); :func:`check_position` checks it
  against what the night knows (its configured target, its header RA/DEC).
  When index files fit the field, :func:`base_wcs` also solves the frame's own
  detected stars and rejects a header WCS that disagrees with the solution.
* :func:`solve` plate-solves offline with astrometry.net's ``solve-field`` on
  an x, y, flux list from our own source detection (step p's catalogue of the
  frame), in a temporary directory under the output root, with a generated
  backend configuration naming the index files whose quad sizes fit the field
  (:func:`indexes_for_field`, from the index headers' SCALE_L/SCALE_U), in its
  own process group, killed whole at the time limit.  :func:`base_wcs` gives it
  every hint the night has, best first (:class:`Hints`): the configured
  targets' positions, the header's RA/DEC, the pixel scale; the budget matches
  them (``solve_timeout``, 30 s, with a position; at most 10 s without), and a
  failed field is remembered (:class:`SolveMemory`) and not solved again with
  the same frame shape, scale, indexes and hints.
* :func:`frame_wcs` is the WCS of another frame whose pixels relate to the
  base frame's by an affine matrix (base pixel -> frame pixel), as step o
  measures them.

Pixel coordinates are 0-based everywhere here (astropy ``origin=0``), as in
the rest of the pipeline; astrometry.net's xylists are 1-based (FITS) and are
converted on the way.  Nothing here needs the network.

The package's modules, each importing only those above it:

===============  ==============================================================================
``wcs``          a WCS judged (:func:`check_wcs`) and kept (:func:`write_wcs_product`)
``solve_field``  astrometry.net's ``solve-field`` offline: index files, failure memory, the run
``frames``       the base frame's WCS (:func:`base_wcs`) and the other frames' (:func:`frame_wcs`)
===============  ==============================================================================

Their public names are exported here (``from qlcp.core import astrometry as ast``).
"""

from .wcs import (AGREE_ARCSEC, AGREE_PIXELS, SCALE_KEYS, SCALE_RANGE, ZENITHAL, WcsRejected, WcsResult, angular_sep,
                  check_position, check_wcs, header_wcs, pixel_scale, read_wcs_product, scale_hint_of,
                  write_wcs_product)
from .solve_field import (DEBIAN_INDEX_PACKAGES, INDEX_SCALES, POSITION_BUDGET, QUAD_MIN_FRACTION, SolveMemory,
                          backend_config, field_size, index_advice, index_files, index_scale, indexes_for_field,
                          run_bounded, solve, solve_command, solve_field_path, write_xylist)
from .frames import (BLIND_CAP, BLIND_MARGIN, MAX_POSITIONS, MAX_STARS, Hints, base_wcs, compare_wcs, frame_wcs,
                     usable_stars)

__all__ = ["AGREE_ARCSEC", "AGREE_PIXELS", "BLIND_CAP", "BLIND_MARGIN", "DEBIAN_INDEX_PACKAGES", "Hints",
           "INDEX_SCALES", "MAX_POSITIONS", "MAX_STARS", "POSITION_BUDGET", "QUAD_MIN_FRACTION", "SCALE_KEYS",
           "SCALE_RANGE", "SolveMemory", "WcsRejected", "WcsResult", "ZENITHAL", "angular_sep", "backend_config",
           "base_wcs", "check_position", "check_wcs", "compare_wcs", "field_size", "frame_wcs", "header_wcs",
           "index_advice", "index_files", "index_scale", "indexes_for_field", "pixel_scale",
           "read_wcs_product", "run_bounded", "scale_hint_of", "solve", "solve_command", "solve_field_path",
           "usable_stars", "write_wcs_product", "write_xylist"]
