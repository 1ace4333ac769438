#!/bin/sh
# Prepares .gpu/ (git-ignored) for scripts/gpu_check.sh on a GPU machine that
# cannot reach a package mirror: the Debian packages prism builds against
# (headers + shared libraries, unpacked there into a private prefix) and a
# copy of the parity fixtures. Run here, then on the device machine:
#     bash scripts/gpu_check.sh        (with .gpu carried along)
set -e
cd "$(dirname "$0")/.."
mkdir -p .gpu/debs
FIX=${PRISM_FIXTURES:-../shared/fixtures}
rm -rf .gpu/fixtures && cp -r "$FIX" .gpu/fixtures && rm -f .gpu/fixtures/make_fixtures.py
cd .gpu/debs
apt-get download libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 \
    libjansson-dev libjansson4 libutf8proc-dev libutf8proc2 libmicrohttpd-dev libmicrohttpd12 >/dev/null
# libmicrohttpd's own needs, unpacked there only where the system lacks them
mkdir -p fallback && cd fallback
apt-get download libgnutls30 libhogweed6 libnettle8 libidn2-0 libunistring2 libp11-kit0 libtasn1-6 libgmp10 libffi8 >/dev/null
for f in *%*; do [ -e "$f" ] && mv "$f" "$(echo "$f" | sed "s/%3a/_/")"; done
cd ..
ls . fallback
du -sh ..
