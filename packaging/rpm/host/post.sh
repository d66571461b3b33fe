# vmgate-host %post: the vmgate system user; never starts or enables the service.
systemd-sysusers vmgate.conf || :
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
