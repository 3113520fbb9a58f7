#!/usr/bin/env bash
# The benchmark driver is scripts/bench.py (its --help says what it does); this runs it.
# `--only wal` runs scripts/bench/wal.py instead: PostgreSQL's archiver through wal-push (its
# --help says how; it needs root and the installed PostgreSQL server).
if [[ "${1:-}" == --only && "${2:-}" == wal ]]; then
    shift 2
    exec python3 "$(dirname "$0")/bench/wal.py" "$@"
fi
exec python3 "$(dirname "$0")/bench.py" "$@"
