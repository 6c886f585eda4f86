#!/usr/bin/env bash
# Installs what the tests talk to besides siphon itself — peers nobody here
# wrote: sipp (Debian: sip-tester), curl, openssl, Kamailio (its service
# stopped and disabled), and from PyPI the
# JSON-RPC client jsonrpcclient, the server jsonrpcserver, pynetstring,
# aiohttp, prometheus_client and the DNS server dnslib — plus cargo-nextest when missing. Does nothing that is already there.
set -euo pipefail

if ! command -v sipp >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq sip-tester curl openssl >/dev/null
fi
# Kamailio (Debian's 5.6): the reference the proxy tests run the same
# scenarios against, and whose /etc/kamailio/kamailio.cfg tests read. The
# tests start their own, in the foreground on loopback ports: the package's
# service must not start (it would take port 5060), now or at boot.
if ! command -v kamailio >/dev/null 2>&1 && [ ! -x /usr/sbin/kamailio ]; then
  export DEBIAN_FRONTEND=noninteractive
  policy_rc=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    # Debian's way to keep a package's postinst from starting its service.
    policy_rc=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$policy_rc"
    chmod 755 "$policy_rc"
  fi
  apt-get update -qq
  apt-get install -y -qq kamailio >/dev/null || { [ -z "$policy_rc" ] || rm -f "$policy_rc"; exit 1; }
  [ -z "$policy_rc" ] || rm -f "$policy_rc"
  if [ -d /run/systemd/system ]; then
    systemctl disable --now kamailio.service >/dev/null 2>&1 || true
  else
    update-rc.d kamailio disable >/dev/null 2>&1 || true
  fi
fi
if ! python3 -c 'import jsonrpcclient, jsonrpcserver, pynetstring, aiohttp, prometheus_client, dnslib' 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check 'jsonrpcclient==4.0.3' 'jsonrpcserver==5.0.9' \
    'pynetstring==0.5' 'aiohttp==3.11.18' 'prometheus_client==0.21.1' 'dnslib==0.9.26'
fi
if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
