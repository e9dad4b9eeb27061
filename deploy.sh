#!/usr/bin/env bash
# Builds and starts the server with Docker Compose, opens its ports with ufw
# when ufw is active, and prints the address clients use.
set -euo pipefail

die() {
    echo "deploy.sh: $*" >&2
    exit 1
}

cd "$(dirname "$0")"
[[ -f docker-compose.yml ]] || die "run me from the replication-server folder (no docker-compose.yml in $PWD)"

command -v docker >/dev/null 2>&1 || die "Docker is not installed: https://docs.docker.com/engine/install/"
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
else
    die "neither 'docker compose' nor 'docker-compose' is available"
fi

[[ -f .env ]] || ./prepare.sh
mkdir -p data logs

if command -v ufw >/dev/null 2>&1 && ufw status 2>/dev/null | grep -q "Status: active"; then
    echo "opening 5555-5557/tcp in ufw"
    ufw allow 5555:5557/tcp >/dev/null || die "ufw refused to open 5555-5557/tcp (run as root?)"
fi

"${compose[@]}" up -d --build || die "docker compose failed; see the messages above"
"${compose[@]}" ps

address=$(hostname -I 2>/dev/null | awk '{print $1}')
echo
echo "Blender clients connect to: ${address:-the address of this machine} port 5555"
echo "logs: ${compose[*]} logs -f blender-collab-server"
