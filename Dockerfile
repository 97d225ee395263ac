ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS build
# QLCP image: the `qlcp` command (run, watch, serve, simulate, demo) and Prefect 3 (server, worker),
# with the `service` extra (prefect-dask, asyncpg for a PostgreSQL-backed Prefect server).
#
#   docker build -t qlcp .                                   # or: podman build --format docker -t qlcp .
#   docker run --rm -v /obs/raw/20240606:/data/raw:ro -v /obs/red/20240606:/data/red \
#       -v /etc/qlcp:/etc/qlcp:ro qlcp run /data/raw /data/red --config /etc/qlcp/site.yaml
#
# BASE_IMAGE lets a machine without registry access build from a locally made Python 3.11 image
# (scripts/container-smoke.sh). Stages: `build` makes wheels of every dependency (pip wheel) and
# installs them into a venv at /opt/qlcp; `wheel` makes the project's wheel; `runtime` is the same base
# plus that venv and the project wheel installed with the `service` extra (no compiler, no wheel files).

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=120 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src

# 1) wheels of every dependency (and of the `service` extra), from pyproject.toml alone, so this layer
#    survives code changes; installed offline from them into the runtime venv at its final path. The venv
#    gets no pip/setuptools (the base's pip installs into it) and no test suites of numpy, scipy and
#    matplotlib (60 MB, never imported).
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['service']))" > requirements.txt \
 && python -m pip wheel --wheel-dir /wheels -r requirements.txt \
 && python -m venv --without-pip /opt/qlcp \
 && python -m pip --python /opt/qlcp/bin/python install --no-index --find-links /wheels -r requirements.txt \
 && SITE=$(/opt/qlcp/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
 && find "$SITE/numpy" "$SITE/scipy" "$SITE/matplotlib" -depth -type d -name tests -exec rm -rf {} +

# 2) the project's own wheel (pure Python), in its own stage so that a code change rebuilds only this
FROM build AS wheel
COPY README.md ./
COPY qlcp/ qlcp/
COPY qlcp_core/ qlcp_core/
COPY tasks/ tasks/
COPY flows/ flows/
COPY deployments/ deployments/
RUN python -m pip wheel --no-deps --wheel-dir /dist .


FROM ${BASE_IMAGE} AS runtime

ARG QLCP_UID=1000
ARG QLCP_GID=1000
# astrometry.net index packages to add for step w's offline plate solving, e.g.
# --build-arg ASTROMETRY_INDEX=astrometry-data-tycho2-10-19 (Tycho-2, fields of 1-33 deg: 22 MB download,
# 37 MB installed). The image has astrometry-data-tycho2-09-littleendian (27 MB download, 40 MB installed);
# small-telescope fields (5-30') need 4100/5200-series index files of the site's scale, too large to ship;
# mount them at /usr/share/astrometry (or set astrometry_index).
ARG ASTROMETRY_INDEX=""

LABEL org.opencontainers.image.title="qlcp" \
      org.opencontainers.image.description="Quick Light Curve Pipeline: raw CCD nights to differential light curves, as a Prefect service" \
      org.opencontainers.image.licenses="MIT"

# Defaults only, each overridable with -e / compose `environment:`. No secret is set here:
# PREFECT_API_URL, PREFECT_API_AUTH_STRING and database URLs come from the deployment.
ENV PATH=/opt/qlcp/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    QLCP_HOME=/home/qlcp/.qlcp \
    PREFECT_HOME=/home/qlcp/.qlcp/prefect \
    QLCP_RESULTS=/home/qlcp/.qlcp/results \
    QLCP_CALIB_DIR=/data/red/calib \
    QLCP_FIELD_DIR=/data/red/fields \
    PREFECT_UI_STATIC_DIRECTORY=/home/qlcp/.qlcp/prefect/ui \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MPLBACKEND=Agg

# astrometry.net's solve-field (step w solves offline when a frame has no usable WCS) with the Tycho-2 09
# index; faketime (200 kB) to rehearse the service under a clock years ahead of the image's time tables
# (README: "Time tables age"); no recommends
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends astrometry.net astrometry-data-tycho2-09-littleendian \
        faketime libfaketime ${ASTROMETRY_INDEX} \
 && rm -rf /var/lib/apt/lists/* \
 && solve-field --help > /dev/null

# the non-root user, and the mount points: raw (mount it read-only), red, Prefect home, site config
RUN groupadd --gid "${QLCP_GID}" qlcp \
 && useradd --uid "${QLCP_UID}" --gid "${QLCP_GID}" --create-home --home-dir /home/qlcp --shell /bin/bash qlcp \
 && mkdir -p /data/raw /data/red /home/qlcp/.qlcp/prefect /home/qlcp/.qlcp/results /etc/qlcp \
 && chown -R "${QLCP_UID}:${QLCP_GID}" /data/red /home/qlcp

# the dependencies' venv (a layer that changes only with pyproject.toml), then the project's wheel with the
# `service` extra, offline (the extra's packages are already in the venv); no compiler, no wheel files kept
COPY --from=build /opt/qlcp /opt/qlcp
COPY --from=wheel /dist/ /tmp/dist/
RUN /usr/local/bin/python -m pip --python /opt/qlcp/bin/python install --no-cache-dir --no-index \
        --find-links /tmp/dist "$(ls /tmp/dist/qlcp-*.whl)[service]" \
 && /usr/local/bin/python -m pip --python /opt/qlcp/bin/python check \
 && rm -rf /tmp/dist \
 && qlcp --version

USER ${QLCP_UID}:${QLCP_GID}
WORKDIR /home/qlcp
# matplotlib's font cache, built once here instead of at every container start
RUN python -c "import matplotlib.pyplot"

VOLUME ["/data/raw", "/data/red", "/home/qlcp/.qlcp"]

# healthy = the Prefect API answers when PREFECT_API_URL is set (server, serve, sensor, worker),
# else the package imports (one-off runs); /api/health needs no credentials
HEALTHCHECK --interval=60s --timeout=15s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; u = os.environ.get('PREFECT_API_URL'); urllib.request.urlopen(u.rstrip('/') + '/health', timeout=10) if u else __import__('qlcp.deployments.cli')"]

ENTRYPOINT ["qlcp"]
CMD ["--help"]
