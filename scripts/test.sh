#!/bin/sh
# The whole test suite: installs missing Debian packages, builds (and an
# ASan + UBSan build for the server tests), runs every test, prints
# "N passed, N failed" last. Exits non-zero on any failure.
set -e
cd "$(dirname "$0")/.."
./scripts/deps.sh
make -j"$(nproc)" all
# AddressSanitizer + UBSan build of the server, exercised by run_all.sh
make -j"$(nproc)" debug >/dev/null
exec ./tests/run_all.sh
