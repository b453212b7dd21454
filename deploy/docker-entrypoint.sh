#!/bin/sh
# Entry point of the parm image: `parm "$@"`, with the worker id defaulting to the
# container's hostname. A worker's default id is ROLE-PID, and every container's pid is 1,
# so replicas started with `docker compose --scale model-worker=N` would share one id.
set -e
: "${PARM_WORKER_ID:=${HOSTNAME:-}}"
if [ -n "$PARM_WORKER_ID" ]; then export PARM_WORKER_ID; fi
exec /usr/local/bin/parm "$@"
