#!/usr/bin/env bash
# Makes sure the programs some tests drive are installed, from Debian's
# packages when missing: HAProxy (the balancer test), Chromium (the
# dashboard's browser test), promtool (lints Prometheus rules and pages),
# and the Prometheus project's Python parser (the /metrics tests read
# their pages with it; from PyPI).
# Idempotent; quiet when everything is already there.
#
#   scripts/ensure-tools.sh [haproxy] [chromium] [promtool] [prometheus-parser]   (default: all)
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/ensure-tools.sh [haproxy] [chromium] [promtool] [prometheus-parser]

Installs each named tool from Debian's packages if it is not on PATH:
haproxy (package haproxy), chromium (chromium), promtool (prometheus; only
its promtool is used, the server it ships is never started),
prometheus-parser (the Python package prometheus-client, by pip).
Default: all four.
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac

apt_updated=0
install() {
  if [[ "$apt_updated" == 0 ]]; then
    echo "ensure-tools: apt-get update" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  echo "ensure-tools: installing $*" >&2
  # No service of theirs should start: policy-rc.d answers "not now".
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  rm -f /usr/sbin/policy-rc.d
}

tools=("$@")
[[ ${#tools[@]} -gt 0 ]] || tools=(haproxy chromium promtool prometheus-parser)
for tool in "${tools[@]}"; do
  case "$tool" in
    haproxy) command -v haproxy >/dev/null || install haproxy ;;
    chromium) command -v chromium >/dev/null || install chromium ;;
    promtool) command -v promtool >/dev/null || install prometheus ;;
    prometheus-parser)
      python3 -c 'import prometheus_client.openmetrics.parser' 2>/dev/null ||
        python3 -m pip install -q --disable-pip-version-check prometheus-client ;;
    *) echo "ensure-tools: unknown tool $tool" >&2; usage >&2; exit 2 ;;
  esac
done
