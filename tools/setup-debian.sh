#!/usr/bin/env bash
# Installs every Debian (bookworm) package that pqvk's build, tests and apps need.
# Idempotent and quiet: packages already installed are skipped by apt.
set -euo pipefail
PKGS=(
  build-essential cmake ninja-build pkg-config git
  libvulkan-dev libvulkan-volk-dev glslc glslang-tools spirv-tools
  mesa-vulkan-drivers vulkan-validationlayers vulkan-tools
  libgtest-dev libbenchmark-dev nlohmann-json3-dev libcli11-dev
  libsentencepiece-dev sentencepiece libpcre2-dev libicu-dev
  clang-14 libclang-rt-14-dev
  libglfw3-dev libimgui-dev libpng-dev fonts-dejavu-core xvfb xauth
  python3-jinja2
  libcpp-httplib-dev nginx-light curl
)
# pq-server's test with the official OpenAI client runs on Node.js: Debian's nodejs and npm where
# no node / npm is installed (a newer Node.js from elsewhere is used as it is).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  PKGS+=(nodejs npm)
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: all ${#PKGS[@]} packages present"
