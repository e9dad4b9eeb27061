#!/bin/sh
# Starts the server with its settings from the environment.
# An empty variable means "use the default" (an empty SERVER_PASSWORD is a
# public session); it is unset so that no empty value reaches a flag, which
# is what broke the Python image's command line.
set -eu
for var in SERVER_PASSWORD LOG_FILE; do
    eval "value=\${$var:-}"
    if [ -z "$value" ]; then
        unset "$var"
    fi
done
# exec: the server becomes PID 1, so `docker stop` (SIGTERM) reaches it and
# it saves the session before exiting.
exec replication-server "$@"
