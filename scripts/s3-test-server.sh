#!/usr/bin/env bash
# s3-test-server.sh — run a real single-node Garage S3 server on loopback for
# synapse-backup's tests and benchmarks. The work is done by s3_test_server.py
# beside this file, whose top comment (also printed when run without
# arguments) describes the commands, the env file and the knobs:
#   scripts/s3-test-server.sh start|restart|stop|kill|status DIR
#   scripts/s3-test-server.sh install
#   env_file=$(scripts/s3-test-server.sh start "$dir" | tail -n1); . "$env_file"
exec python3 "$(dirname "$0")/s3_test_server.py" "$@"
