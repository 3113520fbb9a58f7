#!/usr/bin/env bash
# The benchmark driver is scripts/bench.py (its --help says what it does); this runs it.
# `--only wal` runs scripts/bench/wal.py instead: PostgreSQL's archiver through wal-push (its
# --help says how; it needs root and the installed PostgreSQL server).
if [[ "${1:-}" == --only && "${2:-}" == wal ]]; then
    shift 2
    exec python3 "$(dirname "$0")/bench/wal.py" "$@"
fi
# `--only physical` runs scripts/bench/physical.py: PostgreSQL's logical and physical modes on a
# Synapse-shaped database of a few GB (root and the installed PostgreSQL server, as for wal).
if [[ "${1:-}" == --only && "${2:-}" == physical ]]; then
    shift 2
    exec python3 "$(dirname "$0")/bench/physical.py" "$@"
fi
exec python3 "$(dirname "$0")/bench.py" "$@"
