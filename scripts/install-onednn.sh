#!/usr/bin/env bash
# Installs Debian's oneDNN (libdnnl-dev), which `--features onednn` links, unless present.
set -euo pipefail

if dpkg -s libdnnl-dev >/dev/null 2>&1; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >/dev/null
$sudo apt-get install -y -q libdnnl-dev >/dev/null
echo "installed libdnnl-dev $(dpkg-query -W -f='${Version}' libdnnl-dev)"
