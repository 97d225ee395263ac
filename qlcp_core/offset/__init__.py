"""Step o: the offset (or transform) of every corrected frame against the base image.

Output: ``{red}/offset_{obj}_{band}.ecsv`` (read back by later steps) and a
human-readable ``.txt``.  Convention: offset = position of a star in the frame
minus its position in the base image, in 0-based pixels; in general the
transform base pixel -> frame pixel ``x' = m00 x + m01 y + m02,
y' = m10 x + m11 y + m12`` (columns ``m00..m12``; ``dx, dy`` = ``m02, m12``).
Every consumer maps positions with :func:`base_to_frame` and
:func:`frame_to_base`, which read a row of either form (a table without the
matrix columns is a table of shifts).

Method
------
1. **Stars** (:func:`detect_stars`): sep background, extraction at a high
   threshold (10 sigma; 4 sigma when that finds fewer than 8 stars, e.g. a
   cloudy frame), edge-truncated, saturated and cosmic-ray-sharp objects
   dropped, the ``n_max`` brightest kept and re-centred with windowed
   positions (``sep.winpos``, SExtractor's XWIN/YWIN) for sub-pixel precision.
2. **Rough offset** (:func:`find_offset`): a 2-D vote over all pair
   differences (frame - base) of the brightest stars of both lists, inside the
   search box ``|offset - prior| <= max_dis`` per axis.  Each difference
   counts the differences within ``tol`` of it (a k-d tree on the
   difference points, no binning); the densest clusters are the candidates.
   ``qmatch.offset1d`` (the original's method: a histogram of the x and of the
   y differences, separately) adds one more candidate.  qmatch falls short
   on its own because the two axes are voted independently, so the x peak and
   the y peak can come from different chance pairs, and its 1-D background
   grows with the square of the number of stars: it breaks first on cloudy
   frames and frames full of cosmic rays.  The 2-D vote has a far lower
   background (chance pairs must agree in both axes) and still finds a
   re-pointing jump as large as ``max_dis``.  ``qmatch.mean_offset1d`` (cross
   matching of projected image profiles) is not used: it needs both images
   in memory, loops in Python over every trial shift, gives whole pixels
   only, and has no measure of whether its answer is right; the star lists
   give all three.  No rotation is searched here: frames of an ordinary
   night differ by a shift, and this search is cheap; rotation is item 4.
3. **Verification and refinement**: every candidate is applied, stars are
   paired one-to-one with the nearest star within ``2 tol`` then ``tol``
   (``scipy.spatial.cKDTree``), and the offset is the 3-sigma-clipped
   (median/MAD) mean of the paired differences: 0.01 px or better on a good
   frame (0.002 px on simulated 1024x1024 frames with 200 stars).  The candidate with most pairs wins.  It is accepted (``ok``) only
   with at least 3 pairs, no different offset with as many pairs, and a
   false-alarm probability below 1e-3 (:func:`false_alarm`: the chance that
   that many pairs, as tight as they are, turn up by chance anywhere in the
   search box, given the star density).  So 3 or 4 stars through clouds are
   enough when they agree to a fraction of a pixel, while 3 loose chance
   pairs in a sparse field are rejected.  Otherwise ``ok`` is False, dx, dy
   are NaN and ``reason`` says why.  A failed frame never stops the step.
4. **Similarity** (:func:`find_similarity`), only for frames the shift
   search fails on or on which it pairs fewer than ``POOR_FRACTION`` of the
   smaller star list (a German-equatorial meridian flip turns the field by
   180 deg, a turned camera by a few): ``astroalign.find_transform`` on the
   two star lists (triangle-invariant asterisms, any rotation), then a
   least-squares similarity on every star paired within ``tol``, clipped as
   above, accepted with at least 3 pairs, a scale within 5 % of 1 and a
   false-alarm probability below 1e-3 over every shift and rotation
   (:func:`false_alarm_similarity`).  It replaces the shift only when it
   pairs clearly more stars, or as many with a turn that moves some star by
   more than ``TURN_PX``, and it must keep the field's centre within
   ``offset_max_dis`` of the base or of the neighbouring frames.  A frame too
   sparse for asterisms (clouds) is searched again as a shift against the
   base stars turned as the last frame aligned by a similarity.

Step p's transforms: a frame that step p tracked from this very base (its catalogue's
``PHOTREF`` and ``PHOTM00..PHOTM12``, :func:`transform_of`) is not searched: the
transform is checked by pairing the frame's stars through it (:func:`verify_transform`) and
used as is; only frames without one, or whose transform fails the check, are searched as below.

Drift and jumps (:func:`compute_offsets`): every frame is matched against the
base star list, never chained frame to frame, so errors do not accumulate.
Every frame is first searched in a box centred on the base position (the
frames independently, so in parallel).  A walk outwards from the base image
(base..last, then base-1..first) then keeps the offset of the previous good
frame (the *prior*): a frame whose base-centred offset is missing, or further
than ``offset_max_dis`` from the prior, is searched again in a box centred on
the prior, so ``offset_max_dis`` bounds the jump from one frame to the next,
and a slow drift can take the field further than ``offset_max_dis`` from the
base over the night.  When that search fails too, the base-centred result
stands (a telescope re-pointed back to the start).  The table keeps the given
order.

The package's modules, each importing only those above it:

================  ===========================================================================
``transforms``    transform conventions and forms; positions mapped base <-> frame; step p's cards
``matching``      two star lists matched: shift vote, verification, similarity (:class:`OffsetResult`)
``detection``     the stars a frame is aligned on (:func:`detect_stars`)
``night``         a group aligned on its base (:func:`compute_offsets`); the offsets files
================  ===========================================================================

The names other modules use are exported here (``from qlcp.core import offset as off_mod``).
"""

from .transforms import (CONVENTION, MATRIX_COLUMNS, TRANSFORM_CARDS, as_matrix, base_to_frame, frame_to_base,
                         overlap, rotation_deg, scale_of, shift_matrix, transform_cards, transform_of)
from .matching import (MATCH_TOL, MIN_MATCH, OffsetResult, false_alarm, false_alarm_similarity, find_offset,
                       find_similarity, refine_turn, similarity_result, verify_transform, with_shared)
from .detection import detect_stars
from .night import METHOD, MIN_BASE_OVERLAP, compute_offsets, offset_paths, read_offsets, write_offsets

__all__ = ["CONVENTION", "MATCH_TOL", "MATRIX_COLUMNS", "METHOD", "MIN_BASE_OVERLAP", "MIN_MATCH", "OffsetResult",
           "TRANSFORM_CARDS", "as_matrix", "base_to_frame", "compute_offsets", "detect_stars", "false_alarm",
           "false_alarm_similarity", "find_offset", "find_similarity", "frame_to_base", "offset_paths", "overlap",
           "read_offsets", "refine_turn", "rotation_deg", "scale_of", "shift_matrix", "similarity_result",
           "transform_cards", "transform_of", "verify_transform", "with_shared", "write_offsets"]
