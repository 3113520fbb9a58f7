#!/usr/bin/env bash
# The benchmark driver is scripts/bench.py (its --help says what it does); this runs it.
exec python3 "$(dirname "$0")/bench.py" "$@"
