#!/usr/bin/env bash
# Container smoke test of QLCP: build the image from this working tree, then, inside the image and as
# its non-root user, simulate a night and reduce it from a READ-ONLY raw mount into a writable red
# directory, and check the light curve. Exits non-zero with a one-line reason on any failure.
#
#   scripts/container-smoke.sh                       # podman if installed, else docker (with a daemon)
#
# On a machine without registry access prepare podman and a local base image first (what .ci/run does):
#   eval "$(bash ../shared/tools/container-env.sh)" && scripts/container-smoke.sh
#
# Environment (all optional):
#   BASE_IMAGE        base of both stages (default: $BASE from container-env.sh, else python:3.11-slim)
#   IMAGE             tag to build (default localhost/qlcp:smoke)
#   CONTAINER_ENGINE  podman or docker (default: podman if installed, else docker)
#   SMOKE_FRAMES, SMOKE_SIZE   simulated night: science frames and frame size in px (default 20, 512)
#   SMOKE_PREFECT=0   skip the reduction through the Prefect flow (embedded server); default 1
#   SMOKE_SERVER=0    skip the `prefect server start` check; default 1
#   KEEP=1            keep the temporary directory (kept anyway, and named, on failure)
#
# What it asserts:
#   * the image builds; `qlcp --version` runs; the image's user is not root (`id -u` != 0)
#   * a write into the read-only raw mount fails
#   * `qlcp run /data/raw /data/red --no-prefect --config ...` (and, unless SMOKE_PREFECT=0, the same through
#     the Prefect flow in embedded mode) exits 0 and writes lc_*.ecsv with the contract's columns
#     file, jd, bjd_tdb, hjd, airmass, fwhm, sky, ok and mag_t*/err_t* columns, one row per science frame,
#     mostly ok, owned by the container's non-root user; the Prefect run also writes summary.json and
#     gives the same light curve as the plain run
#   * the raw directory is byte-for-byte unchanged (names, sizes, modes, mtimes and sha256 of every file)
#   * unless SMOKE_SERVER=0: `prefect server start` in the image (as the non-root user) answers /api/health
#     and serves the UI
set -Eeuo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

BASE_IMAGE=${BASE_IMAGE:-${BASE:-python:3.11-slim}}
IMAGE=${IMAGE:-localhost/qlcp:smoke}
FRAMES=${SMOKE_FRAMES:-20}
SIZE=${SMOKE_SIZE:-512}

T_START=$EPOCHREALTIME
say() { printf '[container-smoke +%5.1fs] %s\n' "$(elapsed "$T_START")" "$*" >&2; }
fail() { echo "container-smoke: FAIL: $*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# --- engine -----------------------------------------------------------------------------------------
ENGINE=${CONTAINER_ENGINE:-}
if [ -z "$ENGINE" ]; then
  if command -v podman >/dev/null 2>&1; then
    ENGINE=podman
  elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    ENGINE=docker
  else
    fail "no container engine: install podman (or docker with a running daemon); on this project's machines: eval \"\$(bash ../shared/tools/container-env.sh)\""
  fi
fi
command -v "$ENGINE" >/dev/null 2>&1 || fail "CONTAINER_ENGINE=$ENGINE is not installed"
case "$BASE_IMAGE" in localhost/*) PULL=never ;; *) PULL=missing ;; esac
BUILD=("$ENGINE" build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE")
if [ "$ENGINE" = podman ]; then
  # docker format keeps the HEALTHCHECK; chroot isolation builds where podman's default runtime cannot run
  BUILD+=(--format docker --isolation "${BUILD_ISOLATION:-chroot}" "--pull=$PULL")
fi
RUN=("$ENGINE" run --rm --network host)
# podman would start a systemd timer for the image's HEALTHCHECK (absent here: error lines); one-off runs need none
[ "$ENGINE" = podman ] && RUN+=(--no-healthcheck)
MNT_OPT=""
if command -v selinuxenabled >/dev/null 2>&1 && selinuxenabled; then MNT_OPT=",z"; fi

# --- workspace --------------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/qlcp-smoke.XXXXXX")
OK=0
cleanup() {
  if [ "$OK" = 1 ] && [ "${KEEP:-0}" != 1 ]; then
    rm -rf "$WORK" 2>/dev/null || { [ "$ENGINE" = podman ] && podman unshare rm -rf "$WORK"; } || true
  else
    echo "container-smoke: files kept in $WORK" >&2
  fi
  if [ -n "${SERVER_CID:-}" ]; then "$ENGINE" rm -f -v "$SERVER_CID" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
trap 'fail "command failed (line $LINENO): $BASH_COMMAND"' ERR
SIM=$WORK/sim; RED1=$WORK/red-plain; RED2=$WORK/red-prefect
mkdir -p "$SIM" "$RED1" "$RED2"
chmod 0777 "$SIM" "$RED1" "$RED2"   # the container's user (uid 1000, or a mapped uid when rootless) writes here

# --- 1. build ---------------------------------------------------------------------------------------
say "engine $ENGINE ($("$ENGINE" --version | head -1)), base $BASE_IMAGE, image $IMAGE"
say "building from $ROOT (working tree as it is now) ..."
OLD_ID=$("$ENGINE" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
T0=$EPOCHREALTIME
timeout "${BUILD_TIMEOUT:-1800}" "${BUILD[@]}" "$ROOT" >"$WORK/build.log" 2>&1 \
  || { tail -30 "$WORK/build.log" >&2; fail "image build failed (log: $WORK/build.log)"; }
T_BUILD=$(elapsed "$T0")
NEW_ID=$("$ENGINE" image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$NEW_ID" ]; then   # the previous smoke image, now untagged
  "$ENGINE" rmi "$OLD_ID" >/dev/null 2>&1 || true
fi
SIZE_B=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
SIZE_MB=$(( SIZE_B / 1000000 ))
say "build: ${T_BUILD} s; image size ${SIZE_MB} MB"

# --- 2. identity ------------------------------------------------------------------------------------
VERSION=$("${RUN[@]}" "$IMAGE" --version 2>"$WORK/version.err") || fail "qlcp --version failed in the image: $(cat "$WORK/version.err")"
case "$VERSION" in "qlcp "*) ;; *) fail "unexpected qlcp --version output: $VERSION" ;; esac
UID_IN=$("${RUN[@]}" --entrypoint id "$IMAGE" -u) || fail "could not run id -u in the image"
[ "$UID_IN" != 0 ] || fail "the container runs as root (id -u = 0); the image must set a non-root USER"
say "$VERSION, container user uid $UID_IN"

# --- 3. simulate a night (inside the image, as its user) --------------------------------------------
T0=$EPOCHREALTIME
"${RUN[@]}" -v "$SIM:/data/sim$MNT_OPT" "$IMAGE" simulate /data/sim --frames "$FRAMES" --size "$SIZE" \
  >"$WORK/simulate.log" 2>&1 || { tail -20 "$WORK/simulate.log" >&2; fail "qlcp simulate failed in the image"; }
RAW=$(ls -d "$SIM"/raw/*/ 2>/dev/null | head -1); RAW=${RAW%/}   # qlcp simulate: OUT/raw/YYYYMMDD
[ -n "$(ls -A "$RAW" 2>/dev/null)" ] || fail "qlcp simulate wrote no frames into $RAW"
say "simulated $FRAMES frames of ${SIZE} px in $(elapsed "$T0") s ($(find "$RAW" -type f | wc -l) raw files)"

snapshot() {  # every file under the raw directory: path, size, mode, mtime, sha256
  (cd "$RAW" && find . -printf '%p %s %m %T@\n' | LC_ALL=C sort \
     && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
}
snapshot >"$WORK/raw.before"

MOUNTS=(-v "$RAW:/data/raw:ro$MNT_OPT" -v "$SIM/night.yaml:/etc/qlcp/night.yaml:ro$MNT_OPT")

# --- 4. the raw mount is read-only --------------------------------------------------------------------
if "${RUN[@]}" "${MOUNTS[@]}" --entrypoint sh "$IMAGE" -c 'touch /data/raw/.probe' >"$WORK/probe.log" 2>&1; then
  fail "writing into the raw mount (-v RAW:/data/raw:ro) succeeded; it must be read-only"
fi
grep -qi "read-only" "$WORK/probe.log" || say "note: write probe failed without 'Read-only': $(head -1 "$WORK/probe.log")"

check_lc() {  # $1 = red dir on the host, $2 = label; checks the light curve inside the image
  "${RUN[@]}" -v "$1:/data/red:ro$MNT_OPT" --entrypoint python "$IMAGE" -c '
import glob, os, sys
from astropy.table import Table
frames, label = int(sys.argv[1]), sys.argv[2]
lcs = sorted(glob.glob("/data/red/lc_*.ecsv"))
if not lcs:
    sys.exit(f"{label}: no lc_*.ecsv in the red directory")
for p in lcs:
    t = Table.read(p)
    need = ["file", "jd", "bjd_tdb", "hjd", "airmass", "fwhm", "sky", "ok"]
    miss = [c for c in need if c not in t.colnames]
    if miss:
        sys.exit(f"{label}: {os.path.basename(p)} lacks the contract columns {miss}")
    mags = [c for c in t.colnames if c.startswith("mag_t")]
    if not mags or not any(c.startswith("err_t") for c in t.colnames):
        sys.exit(f"{label}: {os.path.basename(p)} has no mag_t*/err_t* columns: {t.colnames}")
    if len(t) != frames:
        sys.exit(f"{label}: {os.path.basename(p)} has {len(t)} rows, expected one per science frame ({frames})")
    n_ok = int(sum(bool(v) for v in t["ok"]))
    if n_ok < 0.8 * frames:
        sys.exit(f"{label}: only {n_ok} of {frames} frames ok in {os.path.basename(p)}")
    if os.stat(p).st_uid == 0:
        sys.exit(f"{label}: {os.path.basename(p)} is owned by root")
    print(f"{label}: {os.path.basename(p)}: {len(t)} rows, {n_ok} ok, columns {len(t.colnames)} ({mags[0]}, ...)")
' "$FRAMES" "$2"
}

# --- 5. reduction without Prefect ---------------------------------------------------------------------
say "qlcp run /data/raw /data/red --no-prefect (raw mounted read-only) ..."
T0=$EPOCHREALTIME
timeout "${RUN_TIMEOUT:-900}" "${RUN[@]}" "${MOUNTS[@]}" -v "$RED1:/data/red$MNT_OPT" "$IMAGE" \
  run /data/raw /data/red --no-prefect --config /etc/qlcp/night.yaml >"$WORK/run-plain.log" 2>&1 \
  || { tail -30 "$WORK/run-plain.log" >&2; fail "qlcp run --no-prefect failed in the image (log: $WORK/run-plain.log)"; }
T_PLAIN=$(elapsed "$T0")
say "run --no-prefect: ${T_PLAIN} s"
check_lc "$RED1" "run --no-prefect" >&2 || fail "light curve check failed after run --no-prefect"

# --- 6. reduction through the Prefect flow (embedded server) ------------------------------------------
T_PREFECT=skipped
if [ "${SMOKE_PREFECT:-1}" = 1 ]; then
  say "qlcp run /data/raw /data/red (Prefect flow, embedded server) ..."
  T0=$EPOCHREALTIME
  timeout "${RUN_TIMEOUT:-900}" "${RUN[@]}" "${MOUNTS[@]}" -v "$RED2:/data/red$MNT_OPT" "$IMAGE" \
    run /data/raw /data/red --config /etc/qlcp/night.yaml >"$WORK/run-prefect.log" 2>&1 \
    || { tail -30 "$WORK/run-prefect.log" >&2; fail "qlcp run (Prefect flow) failed in the image (log: $WORK/run-prefect.log)"; }
  T_PREFECT=$(elapsed "$T0")
  say "run with Prefect: ${T_PREFECT} s ($(grep -m1 '^  tasks:' "$WORK/run-prefect.log" | sed 's/^ *//'))"
  check_lc "$RED2" "run (Prefect)" >&2 || fail "light curve check failed after the Prefect run"
  [ -s "$RED2/summary.json" ] || fail "the Prefect run wrote no summary.json"
  "${RUN[@]}" -v "$RED1:/data/a:ro$MNT_OPT" -v "$RED2:/data/b:ro$MNT_OPT" --entrypoint python "$IMAGE" -c '
import glob, os, sys
import numpy as np
from astropy.table import Table
for a in sorted(glob.glob("/data/a/lc_*.ecsv")):
    b = os.path.join("/data/b", os.path.basename(a))
    ta, tb = Table.read(a), Table.read(b)
    if ta.colnames != tb.colnames or len(ta) != len(tb):
        sys.exit(f"{os.path.basename(a)}: plain and Prefect runs differ in shape")
    for c in ta.colnames:
        x, y = np.asarray(ta[c]), np.asarray(tb[c])
        same = np.array_equal(x, y) if x.dtype.kind not in "fc" else np.allclose(x, y, rtol=0, atol=1e-9, equal_nan=True)
        if not same:
            sys.exit(f"{os.path.basename(a)}: column {c} differs between the plain and the Prefect run")
' || fail "the Prefect run's light curve differs from the plain run's"
  say "plain and Prefect light curves are identical"
fi

# --- 7. raw untouched ----------------------------------------------------------------------------------
snapshot >"$WORK/raw.after"
if ! diff -q "$WORK/raw.before" "$WORK/raw.after" >/dev/null; then
  diff "$WORK/raw.before" "$WORK/raw.after" | head -10 >&2
  fail "the raw directory changed during the reductions"
fi
say "raw directory unchanged ($(grep -c '^\./' "$WORK/raw.before") entries, sha256 of every file)"

# --- 8. the Prefect server runs in the image as the non-root user --------------------------------------
T_SERVER=skipped
if [ "${SMOKE_SERVER:-1}" = 1 ]; then
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  T0=$EPOCHREALTIME
  HC=(); [ "$ENGINE" = podman ] && HC=(--health-interval disable)   # the image's HEALTHCHECK, run by hand below
  SERVER_CID=$("$ENGINE" run -d --network host "${HC[@]}" -e "PREFECT_API_URL=http://127.0.0.1:$PORT/api" \
               --entrypoint prefect "$IMAGE" server start --host 127.0.0.1 --port "$PORT" 2>"$WORK/server-start.err") \
    || { cat "$WORK/server-start.err" >&2; fail "could not start prefect server in the image"; }
  up=0
  for _ in $(seq 1 120); do
    if python3 -c "import urllib.request as u; assert u.urlopen('http://127.0.0.1:$PORT/api/health', timeout=3).read().strip() == b'true'; assert u.urlopen('http://127.0.0.1:$PORT/', timeout=5).status == 200" >/dev/null 2>&1; then
      up=1; break
    fi
    [ "$("$ENGINE" inspect --format '{{.State.Running}}' "$SERVER_CID" 2>/dev/null)" = true ] || break
    sleep 1
  done
  if [ "$up" != 1 ]; then
    "$ENGINE" logs "$SERVER_CID" 2>&1 | tail -20 >&2
    fail "prefect server start in the image did not answer /api/health and / within 2 min"
  fi
  T_SERVER=$(elapsed "$T0")
  if [ "$ENGINE" = podman ]; then   # the image's HEALTHCHECK (python: GET $PREFECT_API_URL/health)
    podman healthcheck run "$SERVER_CID" >"$WORK/health.log" 2>&1 \
      || { cat "$WORK/health.log" >&2; fail "the image's HEALTHCHECK failed against a running server"; }
  fi
  "$ENGINE" logs "$SERVER_CID" >"$WORK/server.log" 2>&1 || true
  "$ENGINE" rm -f -v "$SERVER_CID" >/dev/null 2>&1 || true; SERVER_CID=""
  say "prefect server in the image: /api/health true, UI served, HEALTHCHECK healthy after ${T_SERVER} s"
fi

OK=1
echo "container-smoke: OK  engine=$ENGINE image=$IMAGE size=${SIZE_MB}MB build=${T_BUILD}s" \
     "run_no_prefect=${T_PLAIN}s run_prefect=${T_PREFECT}s server_ready=${T_SERVER}s" \
     "(night: $FRAMES frames of ${SIZE}px; total $(elapsed "$T_START") s)"
