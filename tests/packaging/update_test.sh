#!/usr/bin/env bash
# The software-update test (issue #10, CONVENTIONS R6.8) with real packages, in a throwaway
# root (overlay_root.sh). The root has no systemd: INFERBOX_UPDATE_RESTART_COMMAND names a
# script that stops the running inferboxd and starts the installed /usr/sbin/inferboxd as
# user inferbox, as the unit would. In that root it
#   1. installs the packages (version N) by hand, trusts a test key, starts the daemon;
#   2. applies a signed bundle of N+1 (the packages repacked with a new revision): installed
#      and running version move to N+1, a new daemon process serves a chat completion, the
#      update is committed (history, no current.json) and N is kept, rebuilt from dpkg's
#      database with the same files, modes, owners, maintainer scripts and fields;
#   3. applies a bundle signed by an untrusted key and one with a changed package byte: both
#      are refused, and the installed version, the installed files and the running daemon are
#      untouched;
#   4. applies N+2 whose engine exits at once: the daemon never gets ready, the updater
#      reinstalls N+1 by itself and the box serves again on N+1 (exit status 3);
#   5. `update history` lists the commit and the rollback; `update rollback` returns to N,
#      which serves.
#
#   update_test.sh PACKAGE_DIR DEMO_MODEL_DIR
#
# Exits 77 (ctest SKIP_RETURN_CODE) when not root or when namespaces or overlayfs mounts are
# not permitted here.
set -euo pipefail

test_name=update_test
# shellcheck source=overlay_root.sh
. "$(dirname "$(realpath "$0")")/overlay_root.sh"

if [ "${1:-}" != "--inside" ]; then
  [ $# -eq 2 ] || { echo "usage: $0 PACKAGE_DIR DEMO_MODEL_DIR" >&2; exit 2; }
  package_dir=$(realpath "$1")
  model_dir=$(realpath "$2")
  overlay_root_check dpkg dpkg-deb openssl tar
  compgen -G "$package_dir/inferbox_*.deb" >/dev/null || fail "no inferbox_*.deb in $package_dir"
  [ -f "$model_dir/config.json" ] || fail "no demo model in $model_dir"
  overlay_root_enter "$0" "$package_dir" "$model_dir"
fi

# ---- inside the namespaces ----------------------------------------------------------------
work=$2
package_dir=$3
model_dir=$4
overlay_root_mount "$work"

! in_root getent passwd inferbox >/dev/null || fail "this machine already has a user inferbox"
rm -rf "$root/var/lib/inferbox" "$root/etc/inferbox"
bundles=$root/tmp/bundles
mkdir -p "$bundles" "$root/tmp/packages"
cp "$package_dir"/inferbox_*.deb "$package_dir"/inferbox-tools_*.deb "$root/tmp/packages/"

# ---- 1. version N, installed by hand ----------------------------------------------------------
in_root sh -c 'dpkg -i /tmp/packages/*.deb' >"$work/dpkg-install.log" 2>&1 ||
  { cat "$work/dpkg-install.log" >&2; fail "dpkg -i failed"; }
version_n=$(in_root dpkg-query -W -f='${Version}' inferbox)
mkdir -p "$root/var/lib/inferbox/models"
cp -r "$model_dir" "$root/var/lib/inferbox/models/inferbox-demo"
in_root chown -R inferbox:inferbox /var/lib/inferbox/models

openssl genpkey -algorithm ed25519 -out "$work/signer.pem" 2>/dev/null
openssl genpkey -algorithm ed25519 -out "$work/stranger.pem" 2>/dev/null
mkdir -p "$root/etc/inferbox/update-keys"
openssl pkey -in "$work/signer.pem" -pubout -out "$root/etc/inferbox/update-keys/test-signer.pem"
cp "$work/signer.pem" "$work/stranger.pem" "$root/tmp/"

# What systemctl restart inferbox.service does, for a root without systemd.
cat >"$root/usr/local/sbin/restart-inferboxd" <<'SCRIPT'
#!/bin/sh
set -e
pidfile=/tmp/inferboxd.pid
if [ -s "$pidfile" ]; then
  pid=$(cat "$pidfile")
  if kill -TERM "$pid" 2>/dev/null; then
    i=0
    while [ -d "/proc/$pid" ] && [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ] &&
      [ "$i" -lt 300 ]; do
      sleep 0.1
      i=$((i + 1))
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
fi
setpriv --reuid=inferbox --regid=inferbox --init-groups --inh-caps=-all \
  /usr/sbin/inferboxd --config /etc/inferbox/inferbox.toml >>/tmp/inferboxd.log 2>&1 </dev/null &
echo $! >"$pidfile"
SCRIPT
chmod 0755 "$root/usr/local/sbin/restart-inferboxd"
ctl() {
  in_root env INFERBOX_UPDATE_RESTART_COMMAND=/usr/local/sbin/restart-inferboxd inferboxctl "$@"
}
daemon_failed() {
  echo "---- inferboxd log (last lines) ----" >&2
  tail -n 40 "$root/tmp/inferboxd.log" >&2 || true
  fail "$@"
}
# Checks that the installed version is $1, and that a daemon running the installed binary
# serves a chat completion.
expect_serving() {
  local expected=$1 what=$2 pid exe
  [ "$(in_root dpkg-query -W -f='${Version}' inferbox)" = "$expected" ] ||
    daemon_failed "$what: inferbox $(in_root dpkg-query -W -f='${Version}' inferbox) is installed, not $expected"
  pid=$(cat "$root/tmp/inferboxd.pid")
  exe=$(in_root readlink "/proc/$pid/exe") || daemon_failed "$what: inferboxd (pid $pid) is not running"
  [ "$exe" = /usr/sbin/inferboxd ] ||
    daemon_failed "$what: the daemon runs $exe, not the installed /usr/sbin/inferboxd"
  curl -sf http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"model":"inferbox-demo","messages":[{"role":"user","content":"Hello, box"}],"max_tokens":4}' \
    >"$work/chat.json" || daemon_failed "$what: POST /v1/chat/completions failed"
  grep -c '"completion_tokens":[1-9]' "$work/chat.json" >/dev/null ||
    daemon_failed "$what: the chat completion generated nothing: $(cat "$work/chat.json")"
}

in_root /usr/local/sbin/restart-inferboxd
for _ in $(seq 1 240); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9400/health/ready || true)" = 200 ] && break
  sleep 0.5
done
expect_serving "$version_n" "version N"
say "version N ($version_n) installed by hand and serving"

# Repacks the installed packages as version $1 into $bundles/$1/; with "broken", the engine
# exits at once (the daemon then never gets ready).
repack() {
  local version=$1 broken=${2:-} deb tree
  mkdir -p "$bundles/$version"
  for deb in "$root"/tmp/packages/inferbox_*.deb "$root"/tmp/packages/inferbox-tools_*.deb; do
    tree=$work/repack
    rm -rf "$tree"
    dpkg-deb -R "$deb" "$tree"
    sed -i "s/^Version: .*/Version: $version/" "$tree/DEBIAN/control"
    sed -i "s/(= $version_n)/(= $version)/g" "$tree/DEBIAN/control"
    if [ -n "$broken" ] && [ -f "$tree/usr/libexec/inferbox/inferbox-engine" ]; then
      printf '#!/bin/sh\necho "broken engine of the update test" >&2\nexit 1\n' \
        >"$tree/usr/libexec/inferbox/inferbox-engine"
      (cd "$tree" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | sort |
        xargs md5sum >DEBIAN/md5sums)
    fi
    dpkg-deb --root-owner-group -Zgzip -z1 -b "$tree" \
      "$bundles/$version/$(dpkg-deb -f "$deb" Package)_${version}_amd64.deb" >/dev/null
  done
  rm -rf "$tree"
}
# Makes $bundles/$2.ibu of $bundles/$1/*.deb signed with /tmp/$3.pem.
bundle() {
  in_root sh -c "inferbox-bundle update \$(for f in /tmp/bundles/$1/*.deb; do echo --package \$f; done) \
    --out /tmp/bundles/$2.ibu --sign-key /tmp/$3.pem" >"$work/bundle.log" 2>&1 ||
    { cat "$work/bundle.log" >&2; fail "inferbox-bundle update $1 failed"; }
}

# ---- 2. a good update, N -> N+1 ---------------------------------------------------------------
version_n1="${version_n}+upd1"
repack "$version_n1"
bundle "$version_n1" good-n1 signer
pid_before=$(cat "$root/tmp/inferboxd.pid")
start=$(date +%s)
ctl update apply /tmp/bundles/good-n1.ibu >"$work/apply-n1.log" 2>&1 ||
  { cat "$work/apply-n1.log" >&2; daemon_failed "update apply of N+1 failed"; }
grep -c "committed" "$work/apply-n1.log" >/dev/null ||
  { cat "$work/apply-n1.log" >&2; fail "update apply of N+1 did not say committed"; }
expect_serving "$version_n1" "after the update to N+1"
[ "$(cat "$root/tmp/inferboxd.pid")" != "$pid_before" ] || fail "the update did not restart inferboxd"
[ ! -e "$root/var/lib/inferbox/updates/current.json" ] || fail "a committed update left current.json"
[ "$(grep -c '"UPDATE_OUTCOME_COMMITTED"' "$root/var/lib/inferbox/updates/history.jsonl")" = 1 ] ||
  fail "the history does not record the commit: $(cat "$root/var/lib/inferbox/updates/history.jsonl")"
compgen -G "$root/var/lib/inferbox/updates/packages/$version_n/inferbox_${version_n}_*.deb" >/dev/null ||
  fail "version N was not kept for a rollback"
# The copy of N rebuilt from dpkg's database holds what the original package held: the same
# paths, modes, owners and sizes, the same maintainer scripts and conffiles.
kept_deb=$(ls "$root"/var/lib/inferbox/updates/packages/"$version_n"/inferbox_*.deb)
original_deb=$(ls "$root"/tmp/packages/inferbox_*.deb)
# Without dates, and without "./", which dpkg-deb writes and CPack does not.
deb_listing() { dpkg-deb -c "$1" | awk '$6 != "./" { $4 = ""; $5 = ""; print }' | sort; }
diff -u <(deb_listing "$original_deb") <(deb_listing "$kept_deb") >&2 ||
  fail "the rebuilt package of N differs from the original in its files"
dpkg-deb -e "$original_deb" "$work/original-control"
dpkg-deb -e "$kept_deb" "$work/kept-control"
for part in preinst postinst prerm postrm conffiles md5sums; do
  [ ! -e "$work/original-control/$part" ] ||
    cmp -s "$work/original-control/$part" "$work/kept-control/$part" ||
    fail "the rebuilt package of N has another $part than the original"
done
for field in Package Version Architecture Depends Recommends; do
  [ "$(dpkg-deb -f "$original_deb" "$field")" = "$(dpkg-deb -f "$kept_deb" "$field")" ] ||
    fail "the rebuilt package of N has another $field than the original"
done
ctl update status >"$work/status.txt" 2>&1 || { cat "$work/status.txt" >&2; fail "update status failed"; }
grep -c "^running  *0" "$work/status.txt" >/dev/null || { cat "$work/status.txt" >&2; fail "update status shows no running version"; }
say "N+1 ($version_n1) committed in $(($(date +%s) - start)) s: installed, restarted, serving; N kept"

# ---- 3. refused bundles change nothing --------------------------------------------------------
version_n2="${version_n}+upd2"
repack "$version_n2"
bundle "$version_n2" foreign-n2 stranger
bundle "$version_n2" good-n2 signer
mkdir -p "$work/tamper"
tar -C "$work/tamper" -xf "$bundles/good-n2.ibu"
tampered_deb=$(cd "$work/tamper" && ls packages/inferbox_*.deb)
printf 'X' | dd of="$work/tamper/$tampered_deb" bs=1 seek=4000 conv=notrunc status=none
(cd "$work/tamper" && tar --format=pax -cf "$bundles/tampered-n2.ibu" inferbox-update.json \
  inferbox-update.json.sig packages/*.deb)
snapshot() {
  in_root sh -c 'dpkg-query -W inferbox inferbox-tools; md5sum /usr/sbin/inferboxd /usr/bin/inferboxctl \
    /usr/libexec/inferbox/inferbox-engine /etc/inferbox/inferbox.toml /var/lib/dpkg/status \
    /var/lib/inferbox/updates/history.jsonl; ls -R /var/lib/inferbox/updates; cat /tmp/inferboxd.pid'
}
snapshot >"$work/before.txt"
for refused in foreign-n2 tampered-n2; do
  code=0
  ctl update apply "/tmp/bundles/$refused.ibu" >"$work/apply-$refused.log" 2>&1 || code=$?
  [ "$code" = 1 ] || { cat "$work/apply-$refused.log" >&2; fail "update apply $refused exited $code, not 1 (refused)"; }
  snapshot >"$work/after.txt"
  diff -u "$work/before.txt" "$work/after.txt" >&2 || fail "the refused $refused bundle changed the box"
done
grep -c "signature" "$work/apply-foreign-n2.log" >/dev/null ||
  fail "the untrusted bundle's refusal does not mention the signature: $(cat "$work/apply-foreign-n2.log")"
grep -c "SHA-256" "$work/apply-tampered-n2.log" >/dev/null ||
  fail "the tampered bundle's refusal does not mention the digest: $(cat "$work/apply-tampered-n2.log")"
expect_serving "$version_n1" "after the refused bundles"
say "bundles with an untrusted signature and a changed package are refused; nothing changed"

# ---- 4. N+2 never gets ready: automatic rollback to N+1 ---------------------------------------
version_n3="${version_n}+upd3"
repack "$version_n3" broken
bundle "$version_n3" broken-n3 signer
start=$(date +%s)
code=0
ctl update apply --deadline 15 /tmp/bundles/broken-n3.ibu >"$work/apply-n3.log" 2>&1 || code=$?
[ "$code" = 3 ] || { cat "$work/apply-n3.log" >&2; daemon_failed "update apply of the broken N+2 exited $code, not 3 (rolled back)"; }
grep -c "rolled back" "$work/apply-n3.log" >/dev/null ||
  { cat "$work/apply-n3.log" >&2; fail "the failed update does not say it was rolled back"; }
expect_serving "$version_n1" "after the automatic rollback"
[ ! -e "$root/var/lib/inferbox/updates/current.json" ] || fail "a rolled-back update left current.json"
say "broken N+2 ($version_n3) rolled back automatically in $(($(date +%s) - start)) s; N+1 serves again"

# ---- 5. history, and a rollback to N ----------------------------------------------------------
ctl update history --json >"$work/history.json" || fail "update history failed"
if [ "$(grep -c '"outcome": "UPDATE_OUTCOME_COMMITTED"' "$work/history.json")" != 1 ] ||
  [ "$(grep -c '"outcome": "UPDATE_OUTCOME_ROLLED_BACK"' "$work/history.json")" != 1 ]; then
  cat "$work/history.json" >&2
  fail "update history does not list the commit and the rollback"
fi
ctl update rollback >"$work/rollback.log" 2>&1 ||
  { cat "$work/rollback.log" >&2; daemon_failed "update rollback failed"; }
expect_serving "$version_n" "after update rollback"
ctl update history >"$work/history.txt"
[ "$(grep -c committed "$work/history.txt")" = 2 ] ||
  { cat "$work/history.txt" >&2; fail "update history does not list the rollback"; }
say "update rollback returned to N ($version_n), which serves; history lists all"
say "PASSED"
