"""I/O helpers: atomic writes leave nothing behind; the fast table reader equals astropy's; written
frames leave the page cache once written back."""

import collections
import os
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from qlcp.core.io import atomic_path, raw_stem, read_table_fast, write_table


def test_read_table_fast_equals_astropy(tmp_path):
    rng = np.random.default_rng(0)
    t = Table({"X": rng.normal(size=7), "Flux": rng.normal(size=(7, 3)), "Flags": np.arange(7, dtype=np.int16),
               "n": np.arange(7, dtype=np.int64), "ok": np.arange(7) % 2 == 0, "name": [f"s{i}" for i in range(7)],
               "img": rng.normal(size=(7, 2, 3)).astype(np.float32)})
    t.meta.update(JD=2460000.5, APER0=5.0)
    p = write_table(tmp_path / "c.fits", t)
    arr, hdr = read_table_fast(p)
    ref = Table.read(p)
    assert hdr["JD"] == 2460000.5 and arr.dtype.isnative
    for c in ref.colnames:
        assert np.array_equal(np.asarray(ref[c]), arr[c]), c


def test_read_table_fast_refuses_what_it_cannot_read(tmp_path):
    hdu = fits.BinTableHDU.from_columns([fits.Column(name="v", format="I", array=np.arange(3, dtype=np.int16))])
    hdu.header["TSCAL1"], hdu.header["TZERO1"] = 2.0, 10.0
    hdu.writeto(tmp_path / "s.fits")
    with pytest.raises(ValueError, match="scaled"):
        read_table_fast(tmp_path / "s.fits")
    (tmp_path / "junk.fits").write_bytes(b"nothing")
    with pytest.raises(ValueError):
        read_table_fast(tmp_path / "junk.fits")


def test_atomic_path_leaves_no_partial_file(tmp_path):
    dest = tmp_path / "out.fits"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not dest.exists() and not list(tmp_path.iterdir())
    with atomic_path(dest) as tmp:
        tmp.write_bytes(b"whole")
    assert dest.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [dest]
    import os
    mask = os.umask(0)
    os.umask(mask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~mask         # not mkstemp's 0600


@pytest.mark.parametrize("name, stem", [("UYUMa-0003I.fit", "UYUMa-0003I"), ("a_V_001.fits.fz", "a_V_001"),
                                        ("b.FTS", "b"), ("c.bf.fits", "c.bf")])
def test_raw_stem(name, stem):
    assert raw_stem(name) == stem


def test_fast_header_parse_matches_astropy(tmp_path):
    from qlcp.core.io import parse_header_fast

    h = fits.Header()
    h["S"] = ("it's a 'str'  ", "comment / with slash")
    h["I"], h["F"], h["E"], h["B"], h["N"] = -42, 2460000.123456789, 1.5e-12, True, False
    h["LONGNAME"] = "x"
    d = parse_header_fast(h.tostring().encode())
    for k in h:
        assert d[k] == h[k], k


def test_write_table_fast_round_trips_through_astropy(tmp_path):
    from qlcp.core.io import write_table_fast

    rng = np.random.default_rng(1)
    t = Table({"X": rng.normal(size=5), "Flux": rng.normal(size=(5, 4)), "Flags": np.arange(5, dtype=np.int32),
               "ok": np.array([True, False, True, True, False]), "name": ["a", "bb", "c", "d", "e"],
               "f4": rng.normal(size=5).astype(np.float32)})
    t.meta.update(JD=2460468.0836805557, APER0=5.0, RAWFILE="SIMV-0001V.fit", NAPER=1, GOOD=True, BAD=float("nan"))
    p = write_table_fast(tmp_path / "c.fits", t)
    ref = Table.read(p)
    for c in t.colnames:
        got = np.asarray(ref[c])
        got = np.char.decode(got, "ascii") if got.dtype.kind == "S" else got
        assert np.array_equal(got, np.asarray(t[c])), c
    assert ref.meta["JD"] == t.meta["JD"] and ref.meta["RAWFILE"] == "SIMV-0001V.fit" and ref.meta["GOOD"] is True
    assert "BAD" not in ref.meta
    arr, hdr = read_table_fast(p)
    assert np.array_equal(arr["Flux"], t["Flux"]) and hdr["APER0"] == 5.0
    fits.open(p).verify("exception")           # a valid FITS file


def test_fast_card_images_equal_astropys():
    """The catalogue writer's card formatter writes what astropy writes, byte for byte."""
    import random

    from astropy.io import fits

    from qlcp.core.io import _card

    rng = random.Random(3)
    vals = [True, False, np.bool_(True), 0, -5, 2**40, np.int64(7), 1.0, -0.5, 1e-10, 1.2345678901234567e300,
            2460468.181367926, np.float32(1.3), np.float64(0.1), 1e16, 5e-324, 12345678901234567890.0,
            "", "a", "it's", "2024-06-06T14:00:00.000", "SIMV-0001V.bf.fits", "x" * 68, "x" * 80]
    vals += [rng.uniform(-1e6, 1e6) for _ in range(300)] + [10 ** rng.uniform(-300, 300) for _ in range(300)]
    vals += [np.float32(10 ** rng.uniform(-30, 30)) for _ in range(300)]
    for key in ("JD", "RAWFILE", "LONGKEYWORD"):
        for v in vals:
            assert _card(key, v) == fits.Card(key, v).image, (key, v)


def test_direct_image_reader_equals_astropy(tmp_path):
    """read_image/read_header read plain images directly; data and header equal astropy's, and
    scaled, blank-valued or truncated files still go through astropy (same values, same errors)."""
    from astropy.io import fits

    from qlcp.core.errors import InputError
    from qlcp.core.io import read_header, read_image

    rng = np.random.default_rng(1)
    u16 = rng.integers(0, 65535, (37, 53)).astype(np.uint16)
    cases = {
        "u16.fits": u16,                                          # BITPIX 16, BZERO 32768
        "f32.fits": rng.normal(size=(37, 53)).astype(np.float32),
        "f64.fits": rng.normal(size=(37, 53)),
        "i16.fits": rng.integers(-3000, 3000, (37, 53)).astype(np.int16),
        "i32.fits": rng.integers(-10**6, 10**6, (37, 53)).astype(np.int32),
    }
    for name, data in cases.items():
        h = fits.Header()
        h["OBJECT"] = ("X 'quoted'", "a comment")
        h["JD"] = 2460468.123456789
        h.add_history("a long history line " * 5)
        fits.PrimaryHDU(data, h).writeto(tmp_path / name)
    scaled = fits.PrimaryHDU(rng.integers(0, 1000, (10, 12)).astype(np.int16))
    scaled.header["BSCALE"], scaled.header["BZERO"] = 2.5, 10.0
    scaled.writeto(tmp_path / "scaled.fits")
    blank = fits.PrimaryHDU(rng.integers(0, 1000, (10, 12)).astype(np.int16))
    blank.header["BLANK"] = 7
    blank.writeto(tmp_path / "blank.fits")
    for p in sorted(tmp_path.glob("*.fits")):
        with fits.open(p) as hl:
            want = np.asarray(hl[0].data, dtype=np.float32)
            want_h = hl[0].header
        for dt in (np.float32, np.float64):
            got, got_h = read_image(p, dt)
            assert got.dtype == dt
            np.testing.assert_array_equal(got, want.astype(dt) if p.name != "f64.fits" else
                                          fits.getdata(p).astype(dt), err_msg=p.name)
        assert list(got_h.items()) == list(want_h.items()), p.name
        assert list(read_header(p).items()) == list(fits.getheader(p).items()), p.name   # as stored
    # truncated: reading the image is one clear error naming the file (the header alone
    # is still readable, as with astropy; the listing checks sizes itself)
    cut = tmp_path / "cut.fits"
    cut.write_bytes((tmp_path / "f32.fits").read_bytes()[:4000])
    with pytest.raises(InputError, match="cut.fits"):
        read_image(cut)
    assert read_header(cut)["NAXIS1"] == 53


# ------------------------------------------------ the fast header parser is astropy's reading
def _same(a, b) -> bool:
    """Equal values of the same type (True is not 1, 1 is not 1.0)."""
    return type(a) is type(b) and a == b


def _astropy_view(raw: bytes) -> dict:
    """``KEY -> header[KEY]`` of ``fits.Header.fromstring(raw)``: what the fast parser must give."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = fits.Header.fromstring(raw)
        return {fits.Card.normalize_keyword(k): h[k] for k in h.keys()
                if k.upper() not in fits.Card._commentary_keywords}


def _assert_fast_is_astropy(raw: bytes, where: str = "") -> bool:
    """parse_header_fast(raw) equals astropy's reading, key for key and value for value; or it
    declines (ValueError) where astropy itself cannot give a plain value.  True if compared."""
    import warnings

    from qlcp.core.io import parse_header_fast

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fast = parse_header_fast(raw)
        except ValueError:
            h = fits.Header.fromstring(raw)
            declined_ok = not raw.isascii() or any(c.field_specifier for c in h.cards)
            if not declined_ok:
                try:
                    [c.value for c in h.cards]
                except Exception:
                    declined_ok = True          # astropy cannot read a value either
            assert declined_ok, f"{where}: fast parser declined a header astropy reads"
            return False
    ref = _astropy_view(raw)
    assert fast.keys() == ref.keys(), (where, fast.keys() ^ ref.keys())
    for k, v in ref.items():
        assert _same(fast[k], v), (where, k, fast[k], v)
    return True


def _header(*cards: str) -> bytes:
    """A header block of raw card images (each padded to 80 columns), ended and padded."""
    for c in cards:
        assert len(c) <= 80, c
    s = "".join(c.ljust(80) for c in ("SIMPLE  =                    T", *cards)) + "END".ljust(80)
    return (s + " " * (-len(s) % 2880)).encode("latin-1")


CRAFTED_CARDS = [
    "OBJECT  = 'XO-1'  / the target's name",
    "OBJ2    = 'XO-1    '           / the target's name, it's 'quoted'",
    "OBSERVER= 'O''Brien'           / it''s an escaped quote",
    "QQ      = ''''                 / a lone quote",
    "QQ2     = 'a''''b'",
    "EMPTY   = ''                   / empty string",
    "EMPTY2  = ''",
    "EMPTY3  = '' / it's empty, isn't it'",
    "EMPTY4  = ''/ no space before the slash",
    "SPACES  = '        '           / only spaces",
    "SPACES2 = ' '",
    "LEAD    = '  x  '              / leading spaces kept",
    "SLASH   = 'a/b / c'            / slash inside the string",
    "NOCOMM  = 'abc'",
    "NOSPACE = 'abc'/comment without a space",
    "QUOTEIN = 'it's'               / a lone quote inside",
    "ODD     = 'a'' / b'",
    "STRT    = 'T       '           / a string, not a logical",
    "NUMSTR  = '12'                 / a string, not a number",
    "COLON   = 'time: 12h'          / a colon that is no record-valued card",
    "INT     =                   42 / the answer",
    "NEGINT  =                   -7",
    "PLUS    =                   +7/comment",
    "ZEROS   =                  007 / leading zeros",
    "BIGINT  = 123456789012345678901234567890",
    "FLT     =              1.5E-03 / exponent",
    "DEXP    =              1.0D+05 / D exponent",
    "LOWE    =                1.0e5 / lower-case exponent",
    "LOWD    =                2.5d-3",
    "DOT     =                  12.",
    "DOTLEAD =                   .5",
    "INTEXP  =                  1E5",
    "NEGZERO =                 -0.0",
    "SPNUM   =                 - 12 / a space after the sign",
    "CPLX    =          (1.0, -2.5) / complex",
    "CPLXI   =               (1, 2)",
    "BOOLT   =                    T / true",
    "BOOLF   =                    F",
    "BOOLNC  =                    T",
    "BLANK   =                      / undefined value",
    "BLANK2  =",
    "HIERARCH ESO DET CHIP NAME = 'CCD-1' / a HIERARCH string",
    "HIERARCH ESO TEL ALT = 45.5 / a HIERARCH number",
    "HIERARCH Lower case = T",
    "date-obs= '2020-01-01T00:00:00' / lower-case keyword",
    "KEY= 'abc'                     / value indicator before column 9",
    "COMMENT   a comment with 'quotes' and / slashes",
    "HISTORY = 'not a value'",
    "        = 'blank keyword'",
    "DUP     =                    1 / first",
    "DUP     =                    2 / second",
    "DUPS    = 'first'",
    "DUPS    = 'second'",
    "TRAIL   = 'abc'   ",
]


def test_crafted_cards_are_read_as_astropy_reads_them():
    from qlcp.core.io import parse_header_fast

    raw = _header(*CRAFTED_CARDS)
    assert _assert_fast_is_astropy(raw, "crafted")
    d = parse_header_fast(raw)
    assert d["OBJECT"] == "XO-1" and d["OBJ2"] == "XO-1"              # not "XO-1'  / the target"
    assert d["OBSERVER"] == "O'Brien" and d["EMPTY"] == "" and d["SPACES"] == "" and d["LEAD"] == "  x"
    assert d["SLASH"] == "a/b / c" and d["DEXP"] == 1.0e5 and d["INT"] == 42 and d["BOOLT"] is True
    assert d["BLANK"] is None and d["CPLX"] == 1.0 - 2.5j and d["ESO DET CHIP NAME"] == "CCD-1"
    assert d["DUP"] == 1 and d["DUPS"] == "first"
    for c in CRAFTED_CARDS:                  # each alone, too (a card astropy cannot read stays alone)
        _assert_fast_is_astropy(_header(c), c)


@pytest.mark.parametrize("card", [
    "TRUE    = TRUE",                        # not a FITS value: astropy cannot read it either
    "DP1     = 'AXIS.1: 1'",                 # a record-valued keyword card
    "JUNK    = 'unterminated",
    "TAB     = 'a\tb'",                     # a control character in a string
])
def test_cards_astropy_alone_reads_are_declined(card):
    _assert_fast_is_astropy(_header(card), card)


def test_long_strings_with_continue_cards():
    h = fits.Header()
    h["LONGSTR"] = ("a long string value that goes on and on, longer than any one card can hold, "
                    "with it's apostrophe and a '' pair and / a slash", "a comment that is long too, isn't it")
    h["AFTER"] = ("short", "it's after")
    h["HIERARCH ESO LONG VALUE"] = "x" * 100
    raw = h.tostring().encode("ascii")
    assert b"CONTINUE" in raw
    assert _assert_fast_is_astropy(raw, "continue")
    from qlcp.core.io import parse_header_fast

    assert parse_header_fast(raw)["LONGSTR"] == h["LONGSTR"]
    assert parse_header_fast(raw)["AFTER"] == "short"


def test_header_written_by_astropy_round_trips():
    h = fits.Header()
    for i, v in enumerate(["it's", "", " ", "a" * 68, "x'", "''", "/", "a / b", True, False, 0, -1, 2**40,
                           1.5, -2.5e-300, 1e300, 0.1, 3 + 4j, None]):
        h[f"K{i}"] = (v, f"comment {i}'s")
    assert _assert_fast_is_astropy(h.tostring().encode("ascii"), "astropy-written")


def _fits_files(root):
    for p in sorted(root.rglob("*")):
        name = p.name.lower().removesuffix(".gz")
        if p.is_file() and name.endswith((".fit", ".fits", ".fts")):
            yield p


def _raw_headers(path):
    """The raw bytes of every HDU's header of a FITS file (gzipped or not)."""
    import gzip
    import io

    buf = path.read_bytes()
    if buf[:2] == b"\x1f\x8b":
        buf = gzip.decompress(buf)
    with fits.open(io.BytesIO(buf), memmap=False) as hdul:
        for hdu in hdul:
            yield buf[hdu._header_offset:hdu._data_offset]


def test_every_real_header_is_read_as_astropy_reads_it():
    """Every card of every header of the real frames under ../shared/data, whole headers and card
    by card: the fast parser's value is astropy's (``fits.Header.fromstring``)."""
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data {SHARED_DATA} not present")
    files = list(_fits_files(SHARED_DATA))
    if not files:
        pytest.skip(f"no FITS files under {SHARED_DATA}")
    headers = cards = 0
    for path in files:
        for raw in _raw_headers(path):
            headers += _assert_fast_is_astropy(raw, str(path))
            text = raw.decode("latin-1")
            for i in range(0, len(text), 80):
                card = text[i:i + 80]
                if card.startswith(("SIMPLE  ", "END     ", "CONTINUE")) or not card.strip():
                    continue
                cards += 1
                _assert_fast_is_astropy(_header(card), f"{path.name}: {card}")
    assert headers >= len(files) and cards > 1000


def _resident_fraction(path) -> float:
    """Fraction of a file's pages in the page cache (Linux ``mincore`` on a private mapping)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    size = os.path.getsize(path)
    n = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * n)()
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    try:
        first = ctypes.c_char.from_buffer(mm)
        ok = libc.mincore(ctypes.c_void_p(ctypes.addressof(first)), ctypes.c_size_t(size), vec) == 0
        del first
    finally:
        mm.close()
    if not ok:
        pytest.skip(f"mincore failed (errno {ctypes.get_errno()})")
    return sum(v & 1 for v in vec) / n


@pytest.mark.skipif(not hasattr(os, "posix_fadvise") or sys.platform != "linux", reason="Linux page cache")
def test_write_behind_recycles_the_pages_of_written_frames_and_keeps_their_content(tmp_path, monkeypatch):
    from qlcp.core import io as qio

    monkeypatch.setattr(qio, "_WRITTEN", collections.deque())
    data = np.arange(1024 * 256, dtype=np.float32).reshape(256, 1024)
    paths = [tmp_path / f"f{i}.bf.fits" for i in range(6)]
    control = tmp_path / "control.fits"                 # written the same way, never advised
    qio.write_fits(control, data)
    for p in paths[:5]:
        qio.write_fits(p, data)
        qio.write_behind(p)
    os.sync()                                          # every page clean: dropped when advised again
    qio.write_fits(paths[5], data)
    qio.write_behind(paths[5])                         # f2 leaves the lag: its pages go
    assert list(qio._WRITTEN) == [str(p) for p in paths[3:]]
    assert _resident_fraction(control) > 0.9            # a written file stays cached when not advised
    assert _resident_fraction(paths[2]) < 0.1
    for p in paths:                                     # advice only: every byte is there
        np.testing.assert_array_equal(fits.getdata(p), data)
    qio.write_behind(tmp_path / "missing.fits")         # a file gone meanwhile: nothing to do
