#!/usr/bin/env bash
# A three-master Redis Cluster on loopback for trying kvtc's shared tier by hand (the tests
# start their own). Usage:
#   scripts/redis-cluster.sh start [DIR] [FIRST_PORT]   # nodes on FIRST_PORT..FIRST_PORT+2 (default 7000)
#   scripts/redis-cluster.sh stop  [DIR]
# Then: kvtc serve --redis redis://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
action=${1:-start}
dir=${2:-/tmp/kvtc-redis-cluster}
first=${3:-7000}
ports=("$first" "$((first + 1))" "$((first + 2))")

case "$action" in
start)
    ensure_debian_packages
    for p in "${ports[@]}"; do
        mkdir -p "$dir/$p"
        # A cache: no persistence, LRU eviction at 2 GiB per node; a dead master leaves the
        # others serving their slots.
        redis-server --port "$p" --bind 127.0.0.1 --dir "$dir/$p" --daemonize yes --logfile redis.log \
            --pidfile "$dir/$p/redis.pid" --save "" --appendonly no --maxmemory 2gb --maxmemory-policy allkeys-lru \
            --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
            --cluster-require-full-coverage no
    done
    for p in "${ports[@]}"; do
        for _ in $(seq 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
    done
    if ! redis-cli -p "$first" cluster info | grep -q "cluster_slots_assigned:16384"; then
        redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
    fi
    for _ in $(seq 100); do
        redis-cli -p "$first" cluster info | grep -q "cluster_state:ok" && break; sleep 0.1
    done
    echo "redis://127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
    ;;
stop)
    for p in "${ports[@]}"; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start|stop [DIR] [FIRST_PORT]" >&2; exit 2 ;;
esac
