# vmgate-host %postun: reload units; an upgrade restarts a running service;
# erase removes hostd's state (the vmgate user is kept).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart vmgate-hostd.service >/dev/null 2>&1 || :
    fi
fi
if [ "$1" -eq 0 ]; then
    rm -rf /var/lib/vmgate
fi
