#!/usr/bin/env bash
# Installs the Socket.IO peer from the npm registry into node_modules/
# (ignored by git). Versions are pinned in package.json.
set -euo pipefail
cd "$(dirname "$0")"
npm install --no-audit --no-fund --no-package-lock --loglevel=error
node -e 'for (const name of ["socket.io", "@socket.io/redis-streams-adapter", "redis"]) console.log(name, require(name + "/package.json").version)'
