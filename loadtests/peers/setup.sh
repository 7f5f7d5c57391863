#!/usr/bin/env bash
# Installs both peers for `relay-load run` from the registries (npm and
# Debian). Nothing of theirs is committed.
set -euo pipefail
cd "$(dirname "$0")"
socketio/setup.sh
nchan/setup.sh
