#!/usr/bin/env bash
# Checks packaging/systemd/inferbox.service with systemd's own tools:
#   - systemd-analyze verify passes, with no complaint, on a copy whose ExecStart*= point at
#     the inferboxd just built (verify insists that the programs exist); its man page is
#     not installed here (--man=no): the install test verifies the installed unit, man
#     page included, at its installed paths;
#   - systemd-analyze security --offline rates its exposure at most MAX_EXPOSURE (0.0-10.0).
#   - the programs the unit names are where the packages install them;
#   - the directives supervision rests on are there (Type=notify, WatchdogSec=, Restart=,
#     the start limit, KillMode=mixed, ...).
#   unit_verify.sh UNIT INFERBOXD MAX_EXPOSURE
# Exits 77 (skipped) where systemd-analyze is missing, after the checks that need no systemd.
set -euo pipefail
unit=$1
inferboxd=$2
max_exposure=$3

grep -q '^ExecStart=/usr/sbin/inferboxd ' "$unit" ||
  { echo "unit_verify: ExecStart= is not the packaged /usr/sbin/inferboxd" >&2; exit 1; }

# What supervision and the drain rest on (CONVENTIONS R4.1-R4.3): readiness and watchdog by
# notification, restarts bounded by a start limit, no restart for a refused configuration,
# start and stop timeouts, and SIGTERM to inferboxd alone (it stops its engines itself).
for required in '^Type=notify$' '^NotifyAccess=main$' '^WatchdogSec=[1-9]' \
  '^Restart=(on-failure|always)$' '^RestartSec=[1-9]' '^StartLimitIntervalSec=[1-9]' \
  '^StartLimitBurst=[1-9]' '^RestartPreventExitStatus=78$' '^TimeoutStartSec=[1-9]' \
  '^TimeoutStopSec=[1-9]' '^KillMode=mixed$' '^OOMPolicy=continue$'; do
  grep -Eq "$required" "$unit" ||
    { echo "unit_verify: $unit has no line matching $required" >&2; exit 1; }
done
echo "unit_verify: supervision directives: OK"

command -v systemd-analyze >/dev/null || { echo "unit_verify: SKIP: no systemd-analyze"; exit 77; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed "s|/usr/sbin/inferboxd|$inferboxd|g" "$unit" >"$work/inferbox.service"
if ! systemd-analyze verify --man=no "$work/inferbox.service" >"$work/verify.log" 2>&1 || [ -s "$work/verify.log" ]; then
  echo "unit_verify: systemd-analyze verify $unit:" >&2
  cat "$work/verify.log" >&2
  exit 1
fi
echo "unit_verify: systemd-analyze verify: OK"

# security --offline exists from systemd 250 on; --threshold is the exposure times ten.
threshold=$(awk -v e="$max_exposure" 'BEGIN { printf "%d", e * 10 }')
if report=$(systemd-analyze security --offline=true --threshold="$threshold" "$unit" 2>&1); then
  echo "unit_verify: $(echo "$report" | grep 'Overall exposure')"
else
  echo "$report" >&2
  echo "unit_verify: exposure above $max_exposure (or systemd-analyze security failed)" >&2
  exit 1
fi
