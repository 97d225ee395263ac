"""The clipped-median combine (qlcp.core.combine): row blocks, some of them in threads, give the
combination of the whole stack; a bad frame is named."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from qlcp.core import combine as C
from qlcp.core.errors import InputError


def _frames(tmp_path, n=7, shape=(53, 40), compressed=False):
    rng = np.random.default_rng(5)
    stack = rng.normal(1000.0, 12.0, (n, *shape))
    stack[2, 10:12, 5:9] += 3e4                       # a cosmic ray on one frame
    stack[4, 40, :] += 500.0                          # a bad row on another
    stack = np.rint(stack).astype(np.int32)
    paths = []
    for i, d in enumerate(stack):
        p = tmp_path / f"bias-{i:03d}.fits"
        u16 = (d - 32768).astype(np.int16)            # stored as the cameras do: int16 with BZERO 32768
        if compressed:
            hdu = fits.CompImageHDU(u16.astype(np.int32) + 32768)
            fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(p)
        else:
            h = fits.PrimaryHDU(u16)
            h.header["BZERO"] = 32768
            h.writeto(p)
        paths.append(p)
    return paths, stack.astype(np.float32)


@pytest.mark.parametrize("compressed", [False, True])
def test_blocks_in_threads_give_the_whole_stacks_combination(tmp_path, compressed):
    paths, stack = _frames(tmp_path, compressed=compressed)
    want = C.clipped_median(stack)
    rows = C.MIN_BLOCK_ROWS                           # the smallest blocks: 7 of them, 6 in threads
    got = C.combine_files(paths, mem_mb=rows * 40 * 4 * len(paths) / 2**20)
    np.testing.assert_array_equal(got, want)
    assert np.abs(got[10:12, 5:9] - 1000).max() < 60 and np.abs(got[40] - 1000).max() < 60   # clipped
    seen = []
    one_block = C.combine_files(paths, mem_mb=256, progress=lambda it, **kw: (seen.append(kw), it)[1])
    np.testing.assert_array_equal(one_block, want)
    assert seen == [{"desc": "combine", "total": 1}]


def test_prepare_and_a_truncated_frame(tmp_path):
    paths, stack = _frames(tmp_path)
    got = C.combine_files(paths, mem_mb=0.01, prepare=lambda i, rows, b: b - 1000.0 - i)
    np.testing.assert_allclose(got, C.clipped_median(stack - 1000.0 - np.arange(len(paths))[:, None, None]),
                               atol=1e-4)
    with open(paths[5], "r+b") as f:                  # cut inside the data: the last rows are gone
        f.truncate(2880 + 40 * 53)
    with pytest.raises(InputError, match="bias-005"):
        C.combine_files(paths, mem_mb=0.01)
