# One yipanqi node. Build from the repository root:  docker build -t yipanqi:local .
# Not built in this project's CI (no Docker engine there): kept correct by reading.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    YIPANQI_DATA_DIR=/data

# A fixed uid/gid so volume ownership and Kubernetes' runAsUser/fsGroup agree.
RUN groupadd --system --gid 10001 yipanqi \
 && useradd --system --uid 10001 --gid yipanqi --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin yipanqi

WORKDIR /src
# README.md is the package's long description (pyproject.toml); the rest is the package itself.
# constraints.txt pins every version (deploy/lock.sh), so two builds install the same packages.
COPY pyproject.toml README.md constraints.txt ./
COPY service ./service
RUN pip install --constraint constraints.txt '.[postgres]' \
 && rm -rf /src

# The data folder: keys/ (the node's private key, 0600) and, without YIPANQI_DATABASE_URL, SQLite.
# A new named volume copies this ownership, so the non-root user can write there.
RUN mkdir -p /data/keys \
 && chown -R yipanqi:yipanqi /data \
 && chmod 700 /data /data/keys
VOLUME ["/data"]
WORKDIR /data

USER 10001:10001
EXPOSE 8100

# slim has no curl: ask /healthz with the standard library.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8100/healthz', timeout=4)"]

# `docker run IMAGE init --node-id … --name …`, `… peers add …`, `… staff add …` run the other commands.
ENTRYPOINT ["yipanqi"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8100"]
