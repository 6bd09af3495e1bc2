#!/usr/bin/env bash
# Applies (or with --check, only compares) ChatFlow's kernel settings from
# tuning/sysctl.conf, and installs tuning/limits.conf. Needs root to apply.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: tuning/apply.sh [--check]

  (no flag)  write /etc/sysctl.d/90-chatflow.conf and
             /etc/security/limits.d/chatflow.conf, then load the sysctls
  --check    print each setting's current and wanted value; exit 1 if any
             differs (run-server.sh uses this to warn)
USAGE
}

here="$(cd "$(dirname "$0")" && pwd)"
mode=apply
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --check) mode=check ;;
  "") ;;
  *) echo "apply.sh: unknown flag ${1}" >&2; usage >&2; exit 2 ;;
esac

differs=0
trim() { local s="$*"; s="${s#"${s%%[![:space:]]*}"}"; s="${s%"${s##*[![:space:]]}"}"; echo "$s"; }
while IFS='=' read -r key value; do
  key="$(trim "$key")"
  [[ -z "$key" || "$key" == \#* ]] && continue
  value="$(trim "$value")"
  # sysctl separates multi-value settings with tabs; compare words.
  current="$(sysctl -n "$key" 2>/dev/null | tr -s '[:space:]' ' ' || echo '?')"
  current="$(trim "$current")"; value="$(trim "$(echo "$value" | tr -s '[:space:]' ' ')")"
  if [[ "$current" != "$value" ]]; then
    differs=1
    printf '%-36s current=%-24s wanted=%s\n' "$key" "$current" "$value"
  fi
done < "$here/sysctl.conf"

if [[ "$mode" == check ]]; then
  [[ "$differs" == 0 ]] && echo "tuning: all settings applied"
  exit "$differs"
fi

install -m 0644 "$here/sysctl.conf" /etc/sysctl.d/90-chatflow.conf
install -m 0644 "$here/limits.conf" /etc/security/limits.d/chatflow.conf
sysctl -p /etc/sysctl.d/90-chatflow.conf >/dev/null
echo "tuning: applied (log in again for the nofile limits to take effect)"
