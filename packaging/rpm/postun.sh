# inferbox %postun ($1: 0 erase, 1 upgrade): reload units; on upgrade restart a running
# service, never start a stopped one (%systemd_postun_with_restart). An erase keeps
# /var/lib/inferbox and the inferbox user; a modified inferbox.toml is kept as .rpmsave.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    # Not when `inferboxctl update` installs: it restarts the service and waits for it itself.
    if [ "$1" -ge 1 ] && [ -z "${INFERBOX_UPDATER_RESTARTS:-}" ]; then
        systemctl try-restart inferbox.service >/dev/null 2>&1 || :
    fi
fi
exit 0
