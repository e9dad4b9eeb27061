#!/usr/bin/env bash
# Prepares a deployment: .env with a generated admin password, data/ and logs/.
# Safe to run again: an existing .env is kept as it is.
set -euo pipefail

die() {
    echo "prepare.sh: $*" >&2
    exit 1
}

cd "$(dirname "$0")"
[[ -f docker-compose.yml && -f .env.example ]] \
    || die "run me from the replication-server folder (docker-compose.yml and .env.example not found in $PWD)"

generate_password() {
    # 24 characters from the kernel's random source; no external tools needed.
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | cut -c1-24
}

if [[ -f .env ]]; then
    echo "keeping the existing .env"
else
    password=$(generate_password)
    [[ ${#password} -eq 24 ]] || die "could not generate a password"
    sed "s/^ADMIN_PASSWORD=.*/ADMIN_PASSWORD=${password}/" .env.example >.env
    chmod 600 .env
    echo "created .env with a generated admin password:"
    echo "    ADMIN_PASSWORD=${password}"
    echo "  (artists who initialise or kick need it; keep it somewhere safe)"
fi

mkdir -p data logs || die "cannot create data/ and logs/ in $PWD"
# The container runs as uid 10001; let it write the mounted folders.
if [[ $(id -u) -eq 0 ]]; then
    chown 10001 data logs 2>/dev/null || true
fi
echo "data/ and logs/ are ready"
echo
echo "next: ./deploy.sh   (or: docker compose up -d)"
