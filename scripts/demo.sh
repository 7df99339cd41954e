#!/usr/bin/env bash
# The main job on the bundled model: installs dependencies, builds, and runs
# nemoq on models/tiny-nemotron-h.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
./build/nemoq inspect models/tiny-nemotron-h
