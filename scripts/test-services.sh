#!/usr/bin/env bash
# Make sure what the integration tests talk to is installed and running:
# PostgreSQL (127.0.0.1:5432, trust auth), Redis (127.0.0.1:6379), RabbitMQ (127.0.0.1:5672, guest),
# Node.js + npm (FHIR test server), the FHIR test server's npm packages, and the DICOM peers (dcmtk, Orthanc).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v rabbitmq-server >/dev/null 2>&1 || need+=(rabbitmq-server)
# the dashboard's browser tests (tests/browser): Playwright drives Debian's chromium
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# DICOM peers: dcmtk (echoscu, storescu, storescp) as the modality and yardstick; Orthanc as the PACS
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || need+=(orthanc orthanc-dicomweb)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! port_open 5672; then
  echo "starting RabbitMQ"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 60); do port_open 5672 && break; sleep 1; done
fi

(cd tests/fhir_server && npm ci --no-audit --no-fund --silent)
