# inferbox %post ($1: 1 install, 2 upgrade): state and runtime directories; on first install,
# enablement as the system's presets say (as %systemd_post does).
systemd-tmpfiles --create /usr/lib/tmpfiles.d/inferbox.conf >/dev/null 2>&1 || :
if [ "$1" -eq 1 ] && [ -x /usr/bin/systemctl ]; then
    systemctl --no-reload preset inferbox.service >/dev/null 2>&1 || :
fi
exit 0
