# vmgate-guest %postun: reload units; an upgrade restarts a running service.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart vmgate-guestd.service >/dev/null 2>&1 || :
    fi
fi
