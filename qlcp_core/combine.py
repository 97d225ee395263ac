"""Sigma-clipped median combination of frames, in row blocks.

Used by the bias, dark and flat steps.  Frames are never all in memory: the
stack is read ``rows`` at a time through astropy's lazy ``section`` access
(BZERO/BSCALE applied), so 100 frames of 4096x4096 combine within about
``mem_mb`` MiB per block plus working copies (measured peak in ``bench/``).  Blocks are small by
default (8 MiB): faster than large ones, in the CPU caches.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from astropy.io import fits

from .errors import InputError
from .io import first_image_hdu

log = logging.getLogger("qlcp.combine")


def _image_hdu(hdul):
    hdu = first_image_hdu(hdul)
    if hdu is None:
        raise InputError(f"{hdul.filename()}: no 2-D image")
    return hdu


def _take(s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.take_along_axis(s, idx[None], axis=0)[0]


def clipped_median(stack: np.ndarray, sigma: float = 3.0, iters: int = 2) -> np.ndarray:
    """Median along axis 0 after rejecting pixels more than ``sigma`` robust std from it.

    The stack is sorted once along the frame axis; the kept values of each
    pixel are then a contiguous range of the sorted values, so each clipping
    pass is a few order statistics: the median of the kept range and a robust
    std from its 15.87 and 84.13 percentiles (half their distance; for a
    normal distribution it equals the std, and like the MAD it ignores the
    cosmic rays and hot pixels the clip removes).  About 10x faster than
    masked ``nanmedian`` iterations on 1024x1024 stacks.
    """
    n = stack.shape[0]
    if n < 3:
        return np.median(stack, axis=0).astype(np.float32)
    s = np.sort(np.asarray(stack, dtype=np.float32), axis=0)
    lo = np.zeros(s.shape[1:], dtype=np.intp)
    hi = np.full(s.shape[1:], n, dtype=np.intp)

    def median(lo, hi):
        return 0.5 * (_take(s, (lo + hi - 1) // 2) + _take(s, (lo + hi) // 2))

    for _ in range(iters):
        cnt = hi - lo
        med = median(lo, hi)
        q16 = _take(s, lo + np.rint(0.1587 * (cnt - 1)).astype(np.intp))
        q84 = _take(s, lo + np.rint(0.8413 * (cnt - 1)).astype(np.intp))
        std = 0.5 * (q84 - q16)
        new_lo = np.sum(s < med - sigma * std, axis=0)
        new_hi = np.sum(s <= med + sigma * std, axis=0)
        new_lo = np.minimum(new_lo, (lo + hi - 1) // 2)         # the median always stays
        new_hi = np.maximum(new_hi, (lo + hi) // 2 + 1)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    return median(lo, hi).astype(np.float32)


#: threads combining row blocks at once (numpy's sort and indexing release the GIL)
COMBINE_THREADS = 2
#: fewest rows of a combine block (each block reads a section of every file: per-call overheads)
MIN_BLOCK_ROWS = 8


def combine_files(files: Sequence[str | Path], sigma: float = 3.0, mem_mb: float = 8.0,
                  prepare: Callable[[int, slice, np.ndarray], np.ndarray] | None = None,
                  progress=None) -> np.ndarray:
    """Clipped-median combine of the 2-D images in ``files``.

    Parameters
    ----------
    files : list of paths
        Frames of identical shape.
    sigma : float
        Clipping threshold in robust standard deviations.
    mem_mb : float
        Memory for one block of the stack (all frames x ``rows`` rows), MiB; at least
        :data:`MIN_BLOCK_ROWS` rows.  Small blocks are faster: the sort and the order statistics
        stay in the CPU caches, and little new memory is touched (1024^2 bias frames: 0.21 s
        with 8 MiB blocks, 0.33-0.54 s with one 256 MiB block).
    prepare : callable(i, rows, block) -> block, optional
        Applied to each frame's block before combining (bias subtraction,
        normalisation); ``i`` is the frame index, ``rows`` the row slice.
    progress : callable, optional
        Wraps an iterable to show progress.

    Returns
    -------
    numpy.ndarray (float32)
    """
    files = [Path(f) for f in files]
    if not files:
        raise InputError("combine: no input frames")
    with contextlib.ExitStack() as stack:
        hdus = []
        for f in files:
            try:
                # raw integers through memmap; BZERO/BSCALE applied per block below
                hdul = stack.enter_context(fits.open(f, memmap=True, lazy_load_hdus=True,
                                                     do_not_scale_image_data=True))
                hdus.append(_image_hdu(hdul))
            except InputError:
                raise
            except Exception as e:
                raise InputError(f"{f}: unreadable FITS ({type(e).__name__}: {e})") from None
        shapes = {(h.header["NAXIS2"], h.header["NAXIS1"]) for h in hdus}
        if len(shapes) != 1:
            raise InputError(f"combine: frames differ in shape {sorted(shapes)} ({files[0].parent})")
        ny, nx = shapes.pop()
        rows = max(MIN_BLOCK_ROWS, int(mem_mb * 2**20 / (4 * nx * len(files))))
        out = np.empty((ny, nx), np.float32)
        starts = list(range(0, ny, rows))

        def one(r0: int) -> int:
            sl = slice(r0, min(ny, r0 + rows))
            block = np.empty((len(files), sl.stop - sl.start, nx), np.float32)
            for i, h in enumerate(hdus):
                try:
                    b = np.asarray(h.section[sl, :], dtype=np.float32)
                    bscale, bzero = h.header.get("BSCALE", 1.0), h.header.get("BZERO", 0.0)
                    if bscale != 1.0:
                        b *= np.float32(bscale)
                    if bzero:
                        b += np.float32(bzero)
                except Exception as e:
                    raise InputError(f"{files[i]}: unreadable data ({type(e).__name__}: {e})") from None
                block[i] = prepare(i, sl, b) if prepare else b
            out[sl] = clipped_median(block, sigma)
            return r0

        # the first block here (it maps every file); the others in COMBINE_THREADS threads (the sort and
        # the order statistics release the GIL), unless a frame is tile-compressed (one file handle)
        threads = 1 if any(isinstance(h, fits.CompImageHDU) for h in hdus) else COMBINE_THREADS
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(starts) - 1)),
                                thread_name_prefix="qlcp-combine") as ex:
            done = itertools.chain([one(starts[0])], ex.map(one, starts[1:]))
            for _ in (progress(done, desc="combine", total=len(starts)) if progress else done):
                pass
    return out


def meanwhile(fn: Callable, *args) -> Future:
    """Start ``fn(*args)`` in a thread while the caller goes on (e.g. a master's photon-transfer
    estimate from frame pairs while the master is combined: both are numpy work that releases the
    GIL, so on two cores the estimate costs no wall time).  ``fn`` must not log (the step logs
    keep their own thread's records): the caller logs its result."""
    ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qlcp-meanwhile")
    try:
        return ex.submit(fn, *args)
    finally:
        ex.shutdown(wait=False)


def frame_median(path: str | Path, sub: np.ndarray | None = None, step: int = 4) -> float:
    """Median of a frame on a regular pixel grid (every ``step``-th pixel), minus ``sub``."""
    try:
        with fits.open(path, memmap=True, do_not_scale_image_data=True) as hdul:
            hdu = _image_hdu(hdul)
            data = np.asarray(hdu.data[::step, ::step], dtype=np.float32)
            data = data * np.float32(hdu.header.get("BSCALE", 1.0)) + np.float32(hdu.header.get("BZERO", 0.0))
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: unreadable FITS ({type(e).__name__}: {e})") from None
    if sub is not None:
        data = data - sub[::step, ::step]
    return float(np.median(data))


def master_header(kind: str, files: Sequence[str | Path], **cards) -> fits.Header:
    """Header of a master calibration frame: type, NCOMBINE, IMCMBnnn inputs, extra cards."""
    from ._version import __version__

    h = fits.Header()
    h["IMAGETYP"] = (kind.upper(), "master calibration frame")
    h["NCOMBINE"] = (len(files), "frames combined")
    for i, f in enumerate(files[:999], 1):
        h[f"IMCMB{i:03d}"] = Path(f).name
    for k, v in cards.items():
        h[k] = v
    h["QLCPVER"] = (__version__, "QLCP version")
    return h
