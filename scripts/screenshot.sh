#!/usr/bin/env bash
# Launches the real viewer under Xvfb on the demo model, lets it play, saves
# target/screenshots/viewer.png and checks the picture is not blank. The same test runs in
# the README's test command (`cargo test --release`); this runs it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --test it viewer_screenshot -- --nocapture
echo "screenshots: $PWD/target/screenshots/viewer.png, viewer_gpu_decode.png"
