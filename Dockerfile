# Interlink in a container: the example channels and the metrics endpoint on every interface.
#   docker build -t interlink .
#   docker run --rm -p 2575:2575 -p 2576:2576 -p 9464:9464 -v interlink-data:/app/data interlink
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY engine ./engine
RUN pip install --no-cache-dir .
COPY channels ./channels
COPY mappings ./mappings
COPY config ./config

# The store holds raw messages (PHI): the data folder is the engine user's alone. A numeric user, so
# runtimes that check runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 interlink \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin interlink \
    && mkdir -p /app/data \
    && chown 10001:10001 /app/data \
    && chmod 700 /app/data
USER 10001:10001

# Inside the container the loopback address is unreachable from outside: listen on every interface.
# INTERLINK_MLLP_HOST is read by the example channels; INTERLINK_METRICS_HOST and INTERLINK_HTTP_HOST by
# the engine settings.
ENV INTERLINK_MLLP_HOST=0.0.0.0 \
    INTERLINK_DICOM_HOST=0.0.0.0 \
    INTERLINK_METRICS_HOST=0.0.0.0 \
    INTERLINK_HTTP_HOST=0.0.0.0

# 2575: lab-results (ORU^R01), 2576: adt, 8080: HTTP (webhooks at /webhooks/events, /healthz, /readyz),
# 9464: Prometheus /metrics, 11112: imaging (DICOM C-STORE, AE title INTERLINK).
EXPOSE 2575 2576 8080 9464 11112
VOLUME ["/app/data"]
CMD ["interlink", "run"]
