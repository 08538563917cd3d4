#!/usr/bin/env bash
# The test suite: unit and fixture tests, then the viewer's screenshot under Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."
export DREAMWALK_FIXTURES="${DREAMWALK_FIXTURES:-$PWD/../shared/fixtures}"
cargo test --release
