#!/usr/bin/env bash
# Applies ChatFlow's kernel settings (tuning/sysctl.conf) and descriptor
# limits (tuning/limits.conf), or only shows (--dry-run) or compares
# (--check) them. "at least" settings are minima: a host tuned higher
# passes the check and is never lowered. Settings the kernel or a container
# refuses are listed at the end, never fatal.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: tuning/apply.sh [--dry-run | --check]

  (no flag)   needs root: writes every setting the host does not already
              satisfy (to /proc/sys, at once), installs
              /etc/sysctl.d/90-chatflow.conf (for boot; minima the host
              already exceeds are kept at the host's value) and
              /etc/security/limits.d/chatflow.conf, then lists what the
              kernel or container refused (exit 3 when it refused any)
  --dry-run   prints every setting as current -> wanted and what applying
              would do (nothing, change it, or be refused: read-only);
              changes nothing
  --check     prints the settings the host does not satisfy, and the
              descriptor limit; exit 0 when tuned, 1 when not
              (run-server.sh uses this to warn)

Checks: "at least" settings (marked "check: at least" in sysctl.conf)
pass when every field is >= the wanted one; "includes" (the reserved
ports) when the host's list contains ours; the rest must be equal. A
setting absent from this kernel (e.g. conntrack without nf_conntrack
loaded) is reported and does not fail the check. nofile: the hard limit
of this shell must reach limits.conf's (the server lifts its soft limit
to the hard one); services started by systemd ignore limits.conf and
take LimitNOFILE= from their unit (tuning/systemd/).
USAGE
}

here="$(cd "$(dirname "$0")" && pwd)"
mode=apply
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --check) mode=check ;;
  --dry-run) mode=dry-run ;;
  "") ;;
  *) echo "apply.sh: unknown flag ${1} (expected --dry-run or --check)" >&2; usage >&2; exit 2 ;;
esac
[[ $# -le 1 ]] || { echo "apply.sh: one flag at most, got: $*" >&2; exit 2; }
# Where the settings live. Only the self-test of this script points it at a
# copy; the kernel's is /proc/sys.
PROC_SYS="${CHATFLOW_PROC_SYS:-/proc/sys}"
SYSCTL_D="${CHATFLOW_SYSCTL_D:-/etc/sysctl.d}"
LIMITS_D="${CHATFLOW_LIMITS_D:-/etc/security/limits.d}"

if [[ "$mode" == apply && "$(id -u)" != 0 && -z "${CHATFLOW_PROC_SYS:-}" ]]; then
  echo "apply.sh: applying needs root (try: sudo tuning/apply.sh, or --dry-run to only look)" >&2
  exit 1
fi

words() { local s; s="$(tr -s '[:space:]' ' ' <<<"$*")"; s="${s# }"; echo "${s% }"; }
path_of() { echo "$PROC_SYS/${1//.//}"; }

# Ports in a kernel port list ("80,8080-8083") one per line.
ports_expand() {
  local item lo hi
  IFS=',' read -ra items <<<"$1"
  for item in "${items[@]}"; do
    item="$(words "$item")"
    [[ -z "$item" ]] && continue
    if [[ "$item" == *-* ]]; then lo="${item%-*}"; hi="${item#*-}"; else lo="$item"; hi="$item"; fi
    seq "$lo" "$hi"
  done
}
# Sorted unique ports (stdin) back into a list with ranges.
ports_compress() {
  sort -n -u | awk '
    NR == 1 { lo = hi = $1; next }
    $1 == hi + 1 { hi = $1; next }
    { out = out sep (lo == hi ? lo : lo "-" hi); sep = ","; lo = hi = $1 }
    END { if (NR) print out sep (lo == hi ? lo : lo "-" hi) }'
}

# satisfied KIND CURRENT WANTED → exit 0 when the host meets the setting.
satisfied() {
  local kind="$1" current="$2" wanted="$3"
  case "$kind" in
    exact) [[ "$current" == "$wanted" ]] ;;
    min)
      read -ra c <<<"$current"; read -ra w <<<"$wanted"
      [[ ${#c[@]} == "${#w[@]}" ]] || return 1
      for i in "${!w[@]}"; do (( c[i] >= w[i] )) || return 1; done ;;
    includes)
      [[ -z "$(comm -13 <(ports_expand "$current" | sort -u) <(ports_expand "$wanted" | sort -u))" ]] ;;
  esac
}
# What to persist: the wanted value, or for minima and lists the host's
# where it already goes further, so a reboot does not lower it.
persisted() {
  local kind="$1" current="$2" wanted="$3"
  case "$kind" in
    exact) echo "$wanted" ;;
    min)
      read -ra c <<<"$current"; read -ra w <<<"$wanted"
      if [[ ${#c[@]} != "${#w[@]}" ]]; then echo "$wanted"; return; fi
      local out=()
      for i in "${!w[@]}"; do out+=( $(( c[i] > w[i] ? c[i] : w[i] )) ); done
      echo "${out[*]}" ;;
    includes) { ports_expand "$current"; ports_expand "$wanted"; } | ports_compress ;;
  esac
}
label() { case "$1" in min) echo "at least" ;; includes) echo "includes" ;; *) echo "exactly" ;; esac; }

# Parse sysctl.conf: key, wanted value, check kind (a "# check:" line just
# above a key applies to it).
keys=() wanted=() kinds=()
kind=exact
while IFS= read -r line || [[ -n "$line" ]]; do
  case "$line" in
    "# check: at least") kind=min; continue ;;
    "# check: includes") kind=includes; continue ;;
    "#"*|";"*) continue ;;
  esac
  if [[ -z "$(words "$line")" ]]; then kind=exact; continue; fi
  [[ "$line" == *=* ]] || { echo "apply.sh: $here/sysctl.conf: not a setting: $line" >&2; exit 2; }
  keys+=("$(words "${line%%=*}")"); wanted+=("$(words "${line#*=}")"); kinds+=("$kind")
  kind=exact
done < "$here/sysctl.conf"

unmet=0 refused=() absent=() persist=()
# One line of --dry-run: setting, current → wanted, what applying would do.
show() { printf '%-52s %s → %s: %s\n' "$1" "${2:-(empty)}" "$3" "$4"; }
for i in "${!keys[@]}"; do
  key="${keys[$i]}" want="${wanted[$i]}" k="${kinds[$i]}"
  file="$(path_of "$key")"
  if [[ ! -e "$file" ]]; then
    absent+=("$key")
    [[ "$mode" == dry-run ]] && show "$key" "(absent)" "$want" "skip, not in this kernel"
    continue
  fi
  current="$(words "$(cat "$file" 2>/dev/null || echo '?')")"
  persist+=("$key = $(persisted "$k" "$current" "$want")")
  if satisfied "$k" "$current" "$want"; then
    [[ "$mode" == dry-run ]] && show "$key" "$current" "unchanged ($(label "$k") $want)" "nothing, satisfied"
    continue
  fi
  unmet=1
  case "$mode" in
    dry-run)
      if [[ -w "$file" ]]; then action="would change"; else action="would be refused (read-only here)"; fi
      new="$(persisted "$k" "$current" "$want")"
      if [[ "$k" == exact || "$new" == "$want" ]]; then new+=" ($(label "$k"))"; else new+=" ($(label "$k") $want)"; fi
      show "$key" "$current" "$new" "$action" ;;
    check)
      note=""; [[ -w "$file" ]] || note=" (read-only here)"
      printf '%-52s current %s, wanted %s %s%s\n' "$key" "${current:-(empty)}" "$(label "$k")" "$want" "$note" ;;
    apply)
      value="$(persisted "$k" "$current" "$want")"
      # A list goes in with commas, a multi-field value with tabs or spaces.
      if ! { printf '%s\n' "$value" > "$file"; } 2>/dev/null; then
        refused+=("$key (wanted $value; the write was refused)")
      elif ! satisfied "$k" "$(words "$(cat "$file")")" "$want"; then
        refused+=("$key (wrote $value; it reads back as $(words "$(cat "$file")"))")
      fi ;;
  esac
done

# Descriptors: the limits.conf value, against this shell's limits.
nofile_wanted="$(awk '$1 == "*" && $2 == "hard" && $3 == "nofile" {print $4}' "$here/limits.conf")"
soft="$(ulimit -Sn)" hard="$(ulimit -Hn)"
nofile_ok=1
[[ "$hard" == unlimited || "$hard" -ge "$nofile_wanted" ]] || nofile_ok=0
nofile_line="nofile (this shell): soft $soft, hard $hard; wanted hard >= $nofile_wanted"
if (( ! nofile_ok )); then
  unmet=1
  nofile_line+=" — too low: apply installs limits.conf for new logins; a systemd service needs LimitNOFILE= (tuning/systemd/)"
fi

case "$mode" in
  dry-run)
    echo "$nofile_line"
    (( ${#absent[@]} )) && echo "absent from this kernel (skipped): ${absent[*]}"
    echo "dry run: nothing was changed" ;;
  check)
    (( nofile_ok )) || echo "$nofile_line"
    (( ${#absent[@]} )) && echo "absent from this kernel (not checked): ${absent[*]}"
    if (( unmet )); then
      echo "tuning: not applied (tuning/apply.sh --dry-run shows what it would do)"
    else
      echo "tuning: all settings satisfied; $nofile_line"
    fi
    exit "$unmet" ;;
  apply)
    mkdir -p "$SYSCTL_D" "$LIMITS_D"
    {
      echo "# Installed by ChatFlow's tuning/apply.sh from tuning/sysctl.conf (see it for why)."
      echo "# Minima this host already exceeded keep the host's value."
      printf '%s\n' "${persist[@]}"
    } > "$SYSCTL_D/90-chatflow.conf"
    chmod 0644 "$SYSCTL_D/90-chatflow.conf"
    install -m 0644 "$here/limits.conf" "$LIMITS_D/chatflow.conf"
    echo "tuning: installed $SYSCTL_D/90-chatflow.conf and $LIMITS_D/chatflow.conf"
    echo "$nofile_line"
    (( ${#absent[@]} )) && echo "absent from this kernel (skipped): ${absent[*]}"
    if (( ${#refused[@]} )); then
      echo "refused by the kernel or container (${#refused[@]}; set them on the host, or run with --sysctl / a privileged container):"
      printf '  %s\n' "${refused[@]}"
      exit 3
    else
      echo "tuning: every setting is in effect"
    fi ;;
esac
