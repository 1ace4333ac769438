#!/bin/sh
# The whole test suite: installs missing Debian packages, builds, runs every
# test, prints "N passed, N failed" last. Exits non-zero on any failure.
set -e
cd "$(dirname "$0")/.."
./scripts/deps.sh
make -j"$(nproc)" all
exec ./tests/run_all.sh
