#!/usr/bin/env bash
# Installs the Nchan peer from Debian's packages: nginx-light and
# libnginx-mod-nchan. relay-load starts its own nginx instances with
# nginx.conf.template; the packaged service is not used.
set -euo pipefail
if ! [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-nchan >/dev/null
fi
# The package may have started its default site; the load tests need none.
if command -v service >/dev/null 2>&1; then service nginx stop >/dev/null 2>&1 || true; fi
nginx -v 2>&1
dpkg-query -W -f 'libnginx-mod-nchan ${Version}\n' libnginx-mod-nchan
