FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine ./engine
RUN pip install --no-cache-dir .
COPY channels ./channels
COPY mappings ./mappings
COPY config ./config
RUN useradd --system --home /app interlink && mkdir -p /app/data && chown interlink /app/data
USER interlink
EXPOSE 2575 2576
VOLUME ["/app/data"]
CMD ["interlink", "run"]
