# Fabric gateway image: one image for every role (`serve --role all|platform|runtime`).
# Build: docker build -t fabric-gateway:0.1.0 .
# The runtime stage holds no compiler and no source tree, runs as an unprivileged user,
# and writes only to FABRIC_HOME (a volume) and /tmp, so it runs with a read-only root
# file system (see deploy/).

FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fabric ./fabric
COPY connectors ./connectors
# Wheels of the gateway and of every dependency, so the runtime stage installs offline.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm
RUN groupadd --system --gid 10001 fabric \
    && useradd --system --uid 10001 --gid fabric --home-dir /var/lib/fabric \
       --no-create-home --shell /usr/sbin/nologin fabric \
    && install -d -o fabric -g fabric -m 0700 /var/lib/fabric
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
ENV FABRIC_HOME=/var/lib/fabric \
    FABRIC_LOG_FORMAT=json \
    FABRIC_HEALTH_LISTEN=0.0.0.0:8081 \
    FABRIC_METRICS_LISTEN=0.0.0.0:9464 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/fabric"]
USER 10001:10001
WORKDIR /var/lib/fabric
# 50051: the query API (TLS in production); 8081: gRPC health only, plaintext, for
# probes; 9464: Prometheus metrics.
EXPOSE 50051 8081 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["fabric", "health", "--address", "127.0.0.1:8081"]
ENTRYPOINT ["fabric"]
CMD ["serve", "--role", "all", "--listen", "0.0.0.0:50051"]
