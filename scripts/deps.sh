#!/bin/sh
# Installs the Debian packages prism needs to build and test, if missing.
# Safe to run repeatedly; does nothing when everything is present.
set -e
PKGS="build-essential libpcre2-dev libjansson-dev libutf8proc-dev libmicrohttpd-dev curl"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q || true
$SUDO apt-get install -y -q $missing
