#!/usr/bin/env bash
# The install test of the inferbox .deb packages (issue #10), in a throwaway root: an overlay
# over this machine's / inside private mount, PID and network namespaces, so nothing it
# does reaches the host and nothing reaches the network. In that root it
#   1. installs inferbox and inferbox-tools with dpkg and checks what the maintainer scripts
#      made: the system user, /var/lib/inferbox and /run/inferbox (owner, mode), the
#      conffile, the unit's enablement; runs systemd-analyze verify on the installed unit;
#   2. runs the installed /usr/sbin/inferboxd as user inferbox with the installed
#      /etc/inferbox/inferbox.toml, serving the demo model from the state directory, and
#      queries it over loopback (/health/ready, /v1/models, a chat completion, /metrics,
#      inferboxctl status); stops it with SIGTERM and expects a clean exit;
#   3. upgrades to a repacked N+1 of the same package with an edited conffile: the edit and
#      the enablement survive;
#   4. removes (binaries go, the configuration stays, the unit is masked), then purges, and
#      checks that nothing is left but /var/lib/inferbox and the inferbox user that owns it
#      (every other file the overlay recorded is accounted for);
#   5. installs again: the user keeps its uid, the state its owner; purges again.
#
#   install_test.sh PACKAGE_DIR DEMO_MODEL_DIR
#
# Exits 77 (ctest SKIP_RETURN_CODE) when not root or when namespaces or overlayfs mounts are
# not permitted here.
set -euo pipefail

test_name=install_test
# shellcheck source=overlay_root.sh
. "$(dirname "$(realpath "$0")")/overlay_root.sh"

if [ "${1:-}" != "--inside" ]; then
  [ $# -eq 2 ] || { echo "usage: $0 PACKAGE_DIR DEMO_MODEL_DIR" >&2; exit 2; }
  package_dir=$(realpath "$1")
  model_dir=$(realpath "$2")
  overlay_root_check dpkg dpkg-deb
  compgen -G "$package_dir/inferbox_*.deb" >/dev/null || fail "no inferbox_*.deb in $package_dir"
  [ -f "$model_dir/config.json" ] || fail "no demo model in $model_dir"

  overlay_root_enter "$0" "$package_dir" "$model_dir"
fi

# ---- inside the namespaces ----------------------------------------------------------------
work=$2
package_dir=$3
model_dir=$4
overlay_root_mount "$work"

mkdir -p "$root/tmp/packages"
cp "$package_dir"/inferbox_*.deb "$package_dir"/inferbox-tools_*.deb "$root/tmp/packages/"
deb=$(ls "$root"/tmp/packages/inferbox_*.deb)
deb=/tmp/packages/${deb##*/}
tools_deb=$(ls "$root"/tmp/packages/inferbox-tools_*.deb)
tools_deb=/tmp/packages/${tools_deb##*/}
! in_root getent passwd inferbox >/dev/null || fail "this machine already has a user inferbox"
# Whatever this machine has there (a daemon run by hand as root, say) stays out of the root.
rm -rf "$root/var/lib/inferbox" "$root/etc/inferbox"

# ---- 1. install -----------------------------------------------------------------------------
say "dpkg -i $(basename "$deb") $(basename "$tools_deb")"
in_root dpkg -i "$deb" "$tools_deb" >"$work/dpkg-install.log" 2>&1 ||
  { cat "$work/dpkg-install.log" >&2; fail "dpkg -i failed"; }
in_root dpkg-query -W -f='${db:Status-Status} ${Version}\n' inferbox | grep -c '^installed ' >/dev/null ||
  fail "inferbox is not installed after dpkg -i"

passwd_entry=$(in_root getent passwd inferbox) || fail "postinst did not create the user inferbox"
IFS=: read -r _ _ uid gid _ home shell <<<"$passwd_entry"
[ "$uid" -lt 1000 ] || fail "inferbox is not a system user (uid $uid)"
[ "$home" = /var/lib/inferbox ] || fail "inferbox's home is $home, not /var/lib/inferbox"
case "$shell" in */nologin | /bin/false) ;; *) fail "inferbox has a login shell ($shell)" ;; esac
[ "$(in_root getent group inferbox | cut -d: -f3)" = "$gid" ] ||
  fail "inferbox's primary group is not the group inferbox"
for dir in /var/lib/inferbox /run/inferbox; do
  [ "$(in_root stat -c '%U:%G %a' "$dir")" = "inferbox:inferbox 750" ] ||
    fail "$dir is $(in_root stat -c '%U:%G %a' "$dir" 2>&1), expected inferbox:inferbox 750"
done
in_root dpkg-query -W -f='${Conffiles}\n' inferbox | grep -c '^ /etc/inferbox/inferbox.toml ' >/dev/null ||
  fail "/etc/inferbox/inferbox.toml is not a conffile"
for path in /usr/sbin/inferboxd /usr/bin/inferboxctl /usr/libexec/inferbox/inferbox-engine \
  /usr/bin/inferbox-run /usr/bin/inferbox-bench /usr/bin/inferbox-bundle /usr/bin/inferbox-make-model; do
  [ -x "$root$path" ] || fail "$path is not installed (or not executable)"
done
unit=/usr/lib/systemd/system/inferbox.service
[ -f "$root$unit" ] || fail "$unit is not installed"
[ -L "$root/etc/systemd/system/multi-user.target.wants/inferbox.service" ] ||
  fail "postinst did not enable inferbox.service"
in_root systemd-analyze verify "$unit" >"$work/verify.log" 2>&1 ||
  { cat "$work/verify.log" >&2; fail "systemd-analyze verify $unit"; }
[ ! -s "$work/verify.log" ] || { cat "$work/verify.log" >&2; fail "systemd-analyze verify complained"; }
in_root inferboxd --check-config --config /etc/inferbox/inferbox.toml >/dev/null ||
  fail "the installed configuration does not pass inferboxd --check-config"
say "installed: user inferbox ($uid:$gid), directories, conffile, enabled unit, verify OK"

# ---- 2. run the installed daemon ------------------------------------------------------------
models=$root/var/lib/inferbox/models
mkdir -p "$models"
cp -r "$model_dir" "$models/inferbox-demo"
in_root chown -R inferbox:inferbox /var/lib/inferbox/models

daemon_log=$work/inferboxd.log
# Not through in_root (a function would run in a subshell): chroot, env and setpriv each
# exec the next, so $! is inferboxd's pid.
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
  setpriv --reuid=inferbox --regid=inferbox --init-groups --inh-caps=-all \
  /usr/sbin/inferboxd --config /etc/inferbox/inferbox.toml >"$daemon_log" 2>&1 &
daemon_pid=$!
daemon_failed() {
  echo "---- inferboxd log ----" >&2
  tail -n 60 "$daemon_log" >&2 || true
  fail "$@"
}

say "waiting for /health/ready (inferboxd pid $daemon_pid)"
for _ in $(seq 1 240); do
  kill -0 "$daemon_pid" 2>/dev/null || daemon_failed "inferboxd exited during startup"
  code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/health/ready || true)
  [ "$code" = 200 ] && break
  sleep 0.5
done
[ "$code" = 200 ] || daemon_failed "/health/ready is $code after 120 s, not 200"

# uids, not names: this shell reads the host's /etc/passwd, which has no inferbox.
owner=$(ps -o uid= -p "$daemon_pid" | tr -d ' ') || true
[ "$owner" = "$uid" ] || daemon_failed "inferboxd runs as uid '$owner', not inferbox ($uid)"
engine_pids=$(pgrep -P "$daemon_pid" -f inferbox-engine || true)
[ -n "$engine_pids" ] || daemon_failed "no inferbox-engine child of inferboxd"
for pid in $engine_pids; do
  [ "$(ps -o uid= -p "$pid" | tr -d ' ')" = "$uid" ] || daemon_failed "an engine does not run as inferbox"
  [ "$(in_root readlink "/proc/$pid/exe")" = /usr/libexec/inferbox/inferbox-engine ] ||
    daemon_failed "the engine is $(in_root readlink "/proc/$pid/exe"), not the installed one"
done

curl -sf http://127.0.0.1:8080/v1/models >"$work/models.json" ||
  daemon_failed "GET /v1/models failed"
grep -q '"id":"inferbox-demo"' "$work/models.json" ||
  daemon_failed "/v1/models does not list inferbox-demo: $(cat "$work/models.json")"
curl -sf http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \
  -d '{"model":"inferbox-demo","messages":[{"role":"user","content":"Hello, box"}],"max_tokens":8}' \
  >"$work/chat.json" || daemon_failed "POST /v1/chat/completions failed"
grep -q '"object":"chat.completion"' "$work/chat.json" && grep -q '"finish_reason":"' "$work/chat.json" ||
  daemon_failed "unexpected chat completion: $(cat "$work/chat.json")"
grep -q '"completion_tokens":[1-9]' "$work/chat.json" ||
  daemon_failed "the chat completion generated no tokens: $(cat "$work/chat.json")"
curl -sf http://127.0.0.1:9400/metrics >"$work/metrics.txt" || daemon_failed "GET /metrics failed"
grep -q '^inferbox_build_info' "$work/metrics.txt" ||
  daemon_failed "/metrics has no inferbox_build_info: $(head -c 2000 "$work/metrics.txt")"
in_root inferboxctl status >"$work/status.txt" 2>&1 ||
  { cat "$work/status.txt" >&2; daemon_failed "inferboxctl status failed"; }
[ -f "$root/run/inferbox/listeners.toml" ] || daemon_failed "no /run/inferbox/listeners.toml"
say "served: /health/ready 200, /v1/models, a chat completion, /metrics, inferboxctl status"

kill -TERM "$daemon_pid"
exit_code=0
wait "$daemon_pid" || exit_code=$?
[ "$exit_code" -eq 0 ] || daemon_failed "inferboxd exited $exit_code after SIGTERM, not 0"
[ ! -e "$root/run/inferbox/listeners.toml" ] || fail "listeners.toml left behind after the stop"
[ -n "$(find "$root/var/lib/inferbox" -newer "$root/etc/inferbox/inferbox.toml" -uid "$uid" -type f -not -path '*/models/*' -print -quit)" ] ||
  fail "inferboxd wrote nothing of its own (usage ledger) to /var/lib/inferbox as inferbox"
say "stopped cleanly (exit 0)"

# ---- 3. upgrade to N+1, keeping an edited conffile ------------------------------------------
version=$(in_root dpkg-query -W -f='${Version}' inferbox)
next_version="${version}+installtest1"
repack=$work/repack
dpkg-deb -R "$root$deb" "$repack"
sed -i "s/^Version: .*/Version: $next_version/" "$repack/DEBIAN/control"
dpkg-deb --root-owner-group -Zgzip -z1 -b "$repack" "$root/tmp/packages/next.deb" >/dev/null
rm -rf "$repack"
echo "# edited by the install test" >>"$root/etc/inferbox/inferbox.toml"
in_root dpkg -i /tmp/packages/next.deb >"$work/dpkg-upgrade.log" 2>&1 ||
  { cat "$work/dpkg-upgrade.log" >&2; fail "the upgrade to $next_version failed"; }
[ "$(in_root dpkg-query -W -f='${Version}' inferbox)" = "$next_version" ] ||
  fail "the upgrade did not install $next_version"
grep -q '^# edited by the install test$' "$root/etc/inferbox/inferbox.toml" ||
  fail "the upgrade lost the edit of /etc/inferbox/inferbox.toml"
[ -L "$root/etc/systemd/system/multi-user.target.wants/inferbox.service" ] ||
  fail "the upgrade disabled inferbox.service"
[ "$(in_root getent passwd inferbox | cut -d: -f3)" = "$uid" ] || fail "the upgrade changed inferbox's uid"
say "upgraded to $next_version: the edited conffile and the enablement are kept"

# ---- 4. remove, then purge ------------------------------------------------------------------
in_root dpkg-query -L inferbox inferbox-tools >"$work/package-paths.txt"
in_root dpkg --remove inferbox-tools inferbox >"$work/dpkg-remove.log" 2>&1 ||
  { cat "$work/dpkg-remove.log" >&2; fail "dpkg --remove failed"; }
[ ! -e "$root/usr/sbin/inferboxd" ] || fail "dpkg --remove left /usr/sbin/inferboxd"
grep -q '^# edited by the install test$' "$root/etc/inferbox/inferbox.toml" ||
  fail "dpkg --remove did not keep the configuration"
[ "$(readlink "$root/etc/systemd/system/inferbox.service")" = /dev/null ] ||
  fail "dpkg --remove did not mask inferbox.service (its enablement is left behind)"
say "removed: binaries gone, configuration kept, unit masked"
in_root dpkg --purge inferbox-tools inferbox >"$work/dpkg-purge.log" 2>&1 ||
  { cat "$work/dpkg-purge.log" >&2; fail "dpkg --purge failed"; }
! in_root dpkg-query -W -f='${db:Status-Status}' inferbox 2>/dev/null | grep -c installed >/dev/null ||
  fail "inferbox is still installed after the purge"
while read -r path; do
  [ -d "$root$path" ] && [ ! -L "$root$path" ] && continue
  [ ! -e "$root$path" ] && [ ! -L "$root$path" ] || fail "$path is left after the purge"
done <"$work/package-paths.txt"
for path in /etc/inferbox /run/inferbox /etc/systemd/system/multi-user.target.wants/inferbox.service \
  /etc/systemd/system/inferbox.service; do
  [ ! -e "$root$path" ] && [ ! -L "$root$path" ] || fail "$path is left after the purge"
done
[ -d "$root/var/lib/inferbox/models/inferbox-demo" ] || fail "the purge removed /var/lib/inferbox"
[ "$(in_root stat -c '%U' /var/lib/inferbox)" = inferbox ] || fail "the state directory lost its owner"

# Everything the overlay recorded must be accounted for: the state directory, the user
# (passwd, group, shadow and their backups), dpkg's own records and logs, and directories
# that already existed (copied up when something inside them changed).
leftovers=$(cd "$upper" && find . -mindepth 1 ! -type d ! -type c |
  sed 's|^\./|/|' | grep -Ev '^/(etc/(passwd|group|shadow|gshadow|subuid|subgid)-?|etc/\.pwd\.lock|var/lib/dpkg/.*|var/log/(dpkg|alternatives)\.log|var/cache/(debconf|man|ldconfig)/.*|var/lib/inferbox/.*|var/lib/systemd/deb-systemd-helper-(enabled|masked)/\.?[^/]*\.(dsh-also|lock))$' || true)
new_dirs=$(cd "$upper" && find . -mindepth 1 -type d | sed 's|^\./|/|' | while read -r dir; do
  [ -d "$dir" ] || echo "$dir"
done | grep -Ev '^/var/lib/inferbox(/.*)?$' || true)
[ -z "$leftovers$new_dirs" ] || fail "left after the purge: $leftovers $new_dirs"
say "purged: nothing left but /var/lib/inferbox and the user inferbox"

# ---- 5. install again -----------------------------------------------------------------------
in_root dpkg -i "$deb" >"$work/dpkg-reinstall.log" 2>&1 ||
  { cat "$work/dpkg-reinstall.log" >&2; fail "installing again failed"; }
[ "$(in_root getent passwd inferbox | cut -d: -f3)" = "$uid" ] || fail "installing again changed the uid"
[ "$(in_root stat -c '%U:%G %a' /var/lib/inferbox)" = "inferbox:inferbox 750" ] ||
  fail "installing again changed the state directory's owner or mode"
in_root dpkg --purge inferbox >/dev/null 2>&1 || fail "the second purge failed"
say "installed again with the same uid $uid; purged"
say "PASSED"
