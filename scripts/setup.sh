#!/usr/bin/env bash
# Install everything bodyage needs on a fresh Debian/Ubuntu machine: system libraries for Qt,
# OpenGL and a virtual X server (for the 3D view and screenshots), then a virtual environment
# in .venv with bodyage and its test tools. Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  xvfb xauth libgl1 libegl1 libglx-mesa0 libgl1-mesa-dri libosmesa6
  libxkbcommon0 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0
  libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0
  libxcb-xkb1 libxcb-xfixes0 libxrender1 libxi6 libxt6 libsm6 libice6 libfontconfig1
  libfreetype6 libdbus-1-3 libglib2.0-0 fonts-dejavu-core
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.bodyage-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing bodyage and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch is pinned in pyproject.toml; on these machines the pin resolves to the CPU build on disk.
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
