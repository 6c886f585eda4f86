#!/usr/bin/env bash
# Installs what the tests talk to besides siphon itself — peers nobody here
# wrote: sipp (Debian: sip-tester), curl, openssl, and from PyPI the
# JSON-RPC client jsonrpcclient, the server jsonrpcserver, pynetstring,
# aiohttp, prometheus_client and the DNS server dnslib — plus cargo-nextest when missing. Does nothing that is already there.
set -euo pipefail

if ! command -v sipp >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq sip-tester curl openssl >/dev/null
fi
if ! python3 -c 'import jsonrpcclient, jsonrpcserver, pynetstring, aiohttp, prometheus_client, dnslib' 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check 'jsonrpcclient==4.0.3' 'jsonrpcserver==5.0.9' \
    'pynetstring==0.5' 'aiohttp==3.11.18' 'prometheus_client==0.21.1' 'dnslib==0.9.26'
fi
if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
