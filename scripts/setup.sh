#!/usr/bin/env bash
# Installs the Debian packages dreamwalk needs at build and run time (missing ones only).
# ffmpeg: the recorder's encoder (and ffprobe for its tests). nasm: openh264's assembly.
# mesa-vulkan-drivers + libvulkan1 + libgl1-mesa-dri + libegl1: a GPU driver for wgpu, the
# software ones (lavapipe, llvmpipe) where there is no GPU. libxkbcommon-x11-0, libx11-xcb1,
# libxcursor1, libxrandr2, libxi6: what winit loads to open the window. xvfb + xauth: a
# display for the viewer's screenshot test. procps: pgrep, for the viewer's signal test.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
PACKAGES="ffmpeg nasm mesa-vulkan-drivers libvulkan1 libegl1 libgl1-mesa-dri xvfb xauth libxkbcommon-x11-0 libx11-xcb1 libxcursor1 libxrandr2 libxi6 procps"
missing=""
for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
