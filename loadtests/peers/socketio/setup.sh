#!/usr/bin/env bash
# Installs the Socket.IO peer from the npm registry into node_modules/
# (ignored by git), from the committed package-lock.json.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error
node -e 'for (const name of ["socket.io", "@socket.io/redis-streams-adapter", "redis"]) console.log(name, require(name + "/package.json").version)'
