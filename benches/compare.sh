#!/usr/bin/env bash
# End-to-end comparison: pgbench direct vs PgBouncer vs pgward (plain, tenant, no http_listen),
# plus memory per idle client. One command, from the repo root:
#
#   bash benches/compare.sh            # full: 3 interleaved rounds, 15 s per run (~45 min)
#   bash benches/compare.sh --quick    # 1 round, 5 s per run, fewer workloads (~6 min)
#
# Needs: root (PostgreSQL and PgBouncer are run as the `postgres` OS user), PostgreSQL 15 server
# binaries in $PGBIN (default /usr/lib/postgresql/15/bin), pgbench, psql, python3, cargo.
# PgBouncer is installed with apt-get if missing.
#
# Writes: docs/benchmarks.md (the part between the results markers), bench-results/latest.json
# (previous one kept as bench-results/previous.json and compared against: changes > 5 %).
# Everything it starts is stopped on exit, Ctrl-C included; the temp dir is removed
# (KEEP_WORK=1 keeps it for inspection).
#
# Environment overrides: BENCH_ROUNDS, BENCH_DURATION (s), BENCH_WORKLOADS (space-separated ids,
# see WORKLOADS below), BENCH_IDLE_CLIENTS (default 10000), PGWARD_BIN (skip the cargo build),
# PGWARD_REV (label of that binary in the report), BENCH_PGWARD_WORKERS (pgward's `workers`,
# default 1), BENCH_TENANT_ROLE=1 (the tenant target in the recommended fail-closed setup:
# `baseline_role` on the database and a tenant role per transaction), CARGO_TARGET_DIR, PGBIN.
set -euo pipefail

QUICK=0
for a in "$@"; do
    case "$a" in
        --quick) QUICK=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $a (use --quick)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
HELPER="$ROOT/benches/compare.py"
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PY=${PYTHON:-python3}
PASSWORD=secret

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $EUID -eq 0 ]] || die "run as root: PostgreSQL and PgBouncer are started as the postgres user via runuser"
id postgres >/dev/null 2>&1 || die "no postgres OS user"
[[ -x $PGBIN/postgres && -x $PGBIN/initdb ]] || die "PostgreSQL server binaries not found in $PGBIN"
command -v pgbench >/dev/null || die "pgbench not found"
command -v psql >/dev/null || die "psql not found"
command -v "$PY" >/dev/null || die "python3 not found"

# ---------------------------------------------------------------------------------- settings
if [[ $QUICK == 1 ]]; then
    ROUNDS=${BENCH_ROUNDS:-1}
    DURATION=${BENCH_DURATION:-5}
    DEFAULT_WORKLOADS="S_simple_10 S_simple_100 S_extended_100 S_prepared_100 S_simple_1000 tpcb_50 select1_100"
else
    ROUNDS=${BENCH_ROUNDS:-3}
    DURATION=${BENCH_DURATION:-15}
    DEFAULT_WORKLOADS="S_simple_10 S_simple_100 S_simple_1000 S_extended_10 S_extended_100 S_extended_1000 S_prepared_10 S_prepared_100 S_prepared_1000 tpcb_50 select1_100"
fi
WORKLOADS=(${BENCH_WORKLOADS:-$DEFAULT_WORKLOADS})
TARGETS=(direct pgbouncer pgward pgward_tenant pgward_nometrics)

# id -> "clients|pgbench arguments|label"
workload_spec() {
    local id=$1 mode clients
    case "$id" in
        S_*_*)
            mode=${id#S_}; mode=${mode%_*}; clients=${id##*_}
            echo "$clients|-S -M $mode|pgbench -S, $mode, $clients clients" ;;
        tpcb_*)
            clients=${id#tpcb_}
            echo "$clients|-M simple|TPC-B-like, $clients clients" ;;
        select1_*)
            clients=${id#select1_}
            echo "$clients|-f $WORK/select1.sql -M simple|SELECT 1 script, $clients clients" ;;
        *) die "unknown workload $id" ;;
    esac
}

# File descriptors: 1,000 pgbench clients, 10,000 idle clients (opener and pooler each).
HARD_NOFILE=$(ulimit -Hn)
[[ $HARD_NOFILE == unlimited ]] && HARD_NOFILE=1048576
WANT_NOFILE=$(( HARD_NOFILE < 65536 ? HARD_NOFILE : 65536 ))
ulimit -n "$WANT_NOFILE" || true
NOFILE=$(ulimit -n)
IDLE_N=${BENCH_IDLE_CLIENTS:-10000}
# pgward's worker threads: one, like PgBouncer, because PostgreSQL and pgbench share these
# cores (docs/benchmarks.md, "Worker threads"); 0 = one per core.
PGWARD_WORKERS=${BENCH_PGWARD_WORKERS:-1}
if (( IDLE_N > NOFILE - 500 )); then
    IDLE_N=$(( NOFILE - 500 ))
    log "ulimit -n is $NOFILE: measuring with $IDLE_N idle clients instead of 10000"
fi

# ---------------------------------------------------------------------------------- cleanup
WORK=$(mktemp -d /tmp/pgward-bench.XXXXXX)
chmod 755 "$WORK"
PIDS=()          # processes we started (pgward, opener, pgbench): killed by pid
PGDATA_DIR=""
PGB_PIDFILES=()

# Signal only what is ours: a child of this script, or the PgBouncer running our config file.
kill_child() { # signal pid
    [[ $(ps -o ppid= -p "$2" 2>/dev/null | tr -d ' ') == "$$" ]] && kill "-$1" "$2" 2>/dev/null
    return 0
}
kill_pgbouncer() { # signal pidfile
    local pp
    [[ -s $2 ]] || return 0
    pp=$(cat "$2")
    tr '\0' ' ' <"/proc/$pp/cmdline" 2>/dev/null | grep -qF "${2%/pgbouncer.pid}/pgbouncer.ini" &&
        kill "-$1" "$pp" 2>/dev/null
    return 0
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    log "tearing down"
    for p in "${PIDS[@]}"; do kill_child TERM "$p"; done
    for f in "${PGB_PIDFILES[@]}"; do kill_pgbouncer INT "$f"; done
    sleep 1
    for p in "${PIDS[@]}"; do kill_child KILL "$p"; done
    for f in "${PGB_PIDFILES[@]}"; do kill_pgbouncer KILL "$f"; done
    if [[ -n $PGDATA_DIR && -f $PGDATA_DIR/postmaster.pid ]]; then
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -w stop >/dev/null 2>&1
    fi
    wait 2>/dev/null
    if [[ ${KEEP_WORK:-0} == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------------------------- build
if [[ -n ${PGWARD_BIN:-} ]]; then
    BIN=$PGWARD_BIN
else
    # The `dist` profile (fat LTO, one codegen unit) is what is meant to be deployed.
    log "building pgward (cargo build --profile dist)"
    cargo build --profile dist --quiet
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/dist/pgward
fi
[[ -x $BIN ]] || die "pgward binary not found at $BIN"
if [[ -z ${PGWARD_REV:-} ]]; then   # label for the report; set it when PGWARD_BIN is another build
    PGWARD_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n $(git -C "$ROOT" status --porcelain -- src 2>/dev/null) ]]; then
        PGWARD_REV="$PGWARD_REV+uncommitted changes"
    fi
fi

if ! command -v pgbouncer >/dev/null 2>&1; then
    log "installing PgBouncer (apt-get install -y pgbouncer)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >"$WORK/apt.log" 2>&1 ||
        { DEBIAN_FRONTEND=noninteractive apt-get update >>"$WORK/apt.log" 2>&1 &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >>"$WORK/apt.log" 2>&1; } ||
        die "could not install pgbouncer (see apt-get output above)"
fi
PGBOUNCER=$(command -v pgbouncer)

# ---------------------------------------------------------------------------------- helpers
read -r PG_PORT PGB_PORT PGB_IDLE_PORT W_PLAIN W_TENANT W_NOMET W_IDLE H_PLAIN H_TENANT H_IDLE \
    < <("$PY" "$HELPER" ports 10)

wait_port() { # port [seconds]
    local i
    for (( i = 0; i < ${2:-30} * 10; i++ )); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

proc_rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# ---------------------------------------------------------------------------------- PostgreSQL
PGDATA_DIR=$WORK/pgdata
mkdir -p "$WORK/pgsock" "$PGDATA_DIR" && chown postgres: "$WORK/pgsock" "$PGDATA_DIR" && chmod 700 "$PGDATA_DIR"
log "initdb + PostgreSQL 15 on port $PG_PORT"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA_DIR" --auth-local=trust --auth-host=scram-sha-256 \
    -U postgres >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log"; die "initdb failed"; }
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$WORK/pgsock/postgres.log" -w -t 60 \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$WORK/pgsock \
        -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
        -c shared_buffers=256MB" start >/dev/null || { cat "$WORK/pgsock/postgres.log"; die "postgres did not start"; }
psql_admin() { runuser -u postgres -- psql -X -q -h "$WORK/pgsock" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
psql_admin -d postgres -c "CREATE ROLE pgward LOGIN PASSWORD '$PASSWORD'" -c "CREATE DATABASE app OWNER pgward"
PGWARD_VERIFIER=$(psql_admin -At -d postgres -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'pgward'")
export PGPASSWORD=$PASSWORD
log "pgbench -i -s 10"
pgbench -i -s 10 -q -h 127.0.0.1 -p "$PG_PORT" -U pgward app >"$WORK/pgbench-init.log" 2>&1 ||
    { cat "$WORK/pgbench-init.log"; die "pgbench -i failed"; }
TENANT_ROLE=${BENCH_TENANT_ROLE:-0}
if [[ $TENANT_ROLE == 1 ]]; then
    psql_admin -d app -c "CREATE ROLE bench_nobody NOLOGIN" -c "CREATE ROLE bench_tenant NOLOGIN" \
        -c "GRANT bench_nobody, bench_tenant TO pgward" \
        -c "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO bench_tenant"
fi
echo "SELECT 1;" >"$WORK/select1.sql"

# ---------------------------------------------------------------------------------- PgBouncer
start_pgbouncer() { # name port auth_type
    local name=$1 port=$2 auth=$3 dir="$WORK/$1"
    mkdir -p "$dir"
    # The SCRAM verifier, not the plaintext: with a plaintext entry PgBouncer runs the 4096-round
    # PBKDF2 for every client login (1,000 clients then take longer than a quick run). Server
    # logins use the password in [databases].
    printf '"pgward" "%s"\n"idle" ""\n' "$PGWARD_VERIFIER" >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
app = host=127.0.0.1 port=$PG_PORT dbname=app user=pgward password=$PASSWORD

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = $auth
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 12000
ignore_startup_parameters = extra_float_digits
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOF
    chown -R postgres: "$dir"
    PGB_PIDFILES+=("$dir/pgbouncer.pid")
    # runuser goes through PAM, which resets the soft fd limit to 1024: raise it again inside
    runuser -u postgres -- bash -c "ulimit -n $NOFILE && exec '$PGBOUNCER' -d '$dir/pgbouncer.ini'" ||
        die "pgbouncer $name did not start"
    wait_port "$port" 20 || { cat "$dir/pgbouncer.log"; die "pgbouncer $name not listening"; }
    local i; for i in $(seq 50); do [[ -s $dir/pgbouncer.pid ]] && break; sleep 0.1; done
    cat "$dir/pgbouncer.pid"
}

# ---------------------------------------------------------------------------------- pgward
write_pgward_config() { # file port http_port(or "") tenant(0/1)
    local f=$1 port=$2 http=$3 tenant=$4 baseline="" role=""
    if [[ $tenant == 1 && $TENANT_ROLE == 1 ]]; then
        baseline='baseline_role = "bench_nobody"' role='role = "bench_tenant"'
    fi
    {
        echo "listen = \"127.0.0.1:$port\""
        [[ -n $http ]] && echo "http_listen = \"127.0.0.1:$http\""
        cat <<EOF
admin_users = []
workers = $PGWARD_WORKERS

[pool]
mode = "transaction"
size = 20
max_client_connections = 12000
checkout_timeout = "5s"

[[databases]]
name = "app"
upstream = "postgres://pgward:$PASSWORD@127.0.0.1:$PG_PORT/app?sslmode=disable"
$baseline

[[users]]
name = "app_user"
password = "$PASSWORD"

[[users]]
name = "idle"
auth = "trust"
EOF
        if [[ -z $http ]]; then
            printf '\n[metrics]\nenabled = false\n'
        fi
        if [[ $tenant == 1 ]]; then
            cat <<EOF

[[tenants]]
id = "t1"
database = "app"
search_path = ["public"]
settings = { "app.tenant_id" = "t1" }
$role
EOF
        fi
    } >"$f"
}

start_pgward() { # name port http tenant -> prints pid
    local name=$1 cfg="$WORK/pgward-$1.toml"
    write_pgward_config "$cfg" "$2" "$3" "$4"
    "$BIN" --config "$cfg" >"$WORK/pgward-$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$2" 20 || { cat "$WORK/pgward-$name.log" >&2; die "pgward $name not listening"; }
    echo "$pid"
}

log "starting PgBouncer ($($PGBOUNCER --version | head -1)) and pgward"
# (not called as $(...): a subshell would lose the PIDS/PGB_PIDFILES bookkeeping)
start_pgbouncer pgbouncer "$PGB_PORT" scram-sha-256 >"$WORK/pid.pgbouncer"
start_pgward plain "$W_PLAIN" "$H_PLAIN" 0 >"$WORK/pid.plain"
start_pgward tenant "$W_TENANT" "$H_TENANT" 1 >"$WORK/pid.tenant"
start_pgward nometrics "$W_NOMET" "" 0 >"$WORK/pid.nometrics"
PGB_PID=$(cat "$WORK/pid.pgbouncer")
W_PLAIN_PID=$(cat "$WORK/pid.plain"); W_TENANT_PID=$(cat "$WORK/pid.tenant"); W_NOMET_PID=$(cat "$WORK/pid.nometrics")

target_conn() { # target -> "port user pid"
    case $1 in
        direct) echo "$PG_PORT pgward -" ;;
        pgbouncer) echo "$PGB_PORT pgward $PGB_PID" ;;
        pgward) echo "$W_PLAIN app_user $W_PLAIN_PID" ;;
        pgward_tenant) echo "$W_TENANT app_user.t1 $W_TENANT_PID" ;;
        pgward_nometrics) echo "$W_NOMET app_user $W_NOMET_PID" ;;
    esac
}

for t in "${TARGETS[@]}"; do
    read -r port user _ < <(target_conn "$t")
    out=$(psql -X -At -h 127.0.0.1 -p "$port" -U "$user" -d app \
        -c "SELECT current_setting('app.tenant_id', true), count(*) FROM pgbench_branches" 2>&1) ||
        die "smoke test through $t failed: $out"
    log "smoke test $t: $out"
done

# ---------------------------------------------------------------------------------- runs
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
SKIPPED=()

run_one() { # round workload target
    local round=$1 wl=$2 target=$3 spec clients args port user pid
    spec=$(workload_spec "$wl")
    clients=${spec%%|*}; args=${spec#*|}; args=${args%%|*}
    read -r port user pid < <(target_conn "$target")
    local dir="$WORK/runs/r$round-$wl-$target"
    mkdir -p "$dir"
    local jobs=2; (( clients < 2 )) && jobs=1
    # pgbench's -T includes connecting; 1,000 SCRAM logins take a few seconds on 2 cores
    local dur=$DURATION; (( clients >= 1000 )) && dur=$(( DURATION + 10 ))
    printf '{"target":"%s","workload":"%s","round":%d,"clients":%d}\n' "$target" "$wl" "$round" "$clients" >"$dir/meta.json"

    # sampler: time, utime+stime ticks, resident pages of the pooler, 4 times a second
    local spid=""
    if [[ $pid != - ]]; then
        (
            while [[ ! -e $dir/done && -d $dir ]] && kill -0 "$pid" 2>/dev/null; do
                if read -r statline <"/proc/$pid/stat" && read -r _ res _ <"/proc/$pid/statm"; then
                    rest=${statline##*') '}
                    read -r -a f <<<"$rest"
                    echo "$EPOCHREALTIME $(( f[11] + f[12] )) $res"
                fi
                sleep 0.25
            done
        ) >"$dir/samples" 2>/dev/null &
        spid=$!
        PIDS+=("$spid")
    fi
    local rc=0 bpid
    # In the background + wait, so that Ctrl-C reaches the trap at once; the timeout catches a
    # pgbench stuck connecting (a pooler that stops accepting). Exit 124 = timed out.
    # shellcheck disable=SC2086
    timeout --foreground -k 5 $(( dur + 90 )) \
        pgbench -n -h 127.0.0.1 -p "$port" -U "$user" -c "$clients" -j "$jobs" -T "$dur" $args \
        -l --log-prefix="$dir/log" app >"$dir/pgbench.out" 2>&1 &
    bpid=$!
    PIDS+=("$bpid")
    wait "$bpid" || rc=$?
    [[ $rc == 124 ]] && echo "pgbench: error: timed out after $(( dur + 90 )) s (killed by compare.sh)" >>"$dir/pgbench.out"
    echo "$rc" >"$dir/rc"
    touch "$dir/done"
    [[ -n $spid ]] && wait "$spid" 2>/dev/null || true
    if [[ $pid != - ]] && ! kill -0 "$pid" 2>/dev/null; then
        log "!!! $target (pid $pid) is gone after $wl"
        echo '{"crash":true}' >>"$dir/meta.crash"
    fi
    local line
    line=$("$PY" "$HELPER" analyze "$dir")
    echo "$line" >>"$RESULTS"
    "$PY" - "$line" <<'EOF' >&2
import json, sys
r = json.loads(sys.argv[1])
f = lambda k, fmt: (fmt % r[k]) if r.get(k) is not None else "-"
print(f"    {r['target']:<17} tps {f('tps', '%9.0f')}  avg {f('lat_avg_ms', '%7.2f')} ms  p99 {f('lat_p99_ms', '%7.2f')} ms"
      f"  cpu/1k {f('cpu_ms_per_1k', '%6.1f')} ms  rss {f('rss_kb', '%7d')} kB" + ("" if r["ok"] else "   FAILED: " + "; ".join((r["aborted"] + r["error_lines"])[:2])))
EOF
}

TOTAL_RUNS=0
for wl in "${WORKLOADS[@]}"; do
    for t in "${TARGETS[@]}"; do
        [[ $t == direct && $wl == *_1000 ]] && continue
        TOTAL_RUNS=$(( TOTAL_RUNS + 1 ))
    done
    [[ $wl == *_1000 ]] && SKIPPED+=("direct at 1,000 clients ($wl: over max_connections = 300)")
done
log "$ROUNDS round(s) × $TOTAL_RUNS runs × ${DURATION}s"
for (( round = 1; round <= ROUNDS; round++ )); do
    for wl in "${WORKLOADS[@]}"; do
        spec=$(workload_spec "$wl")
        log "round $round/$ROUNDS: ${spec##*|}"
        # rotate the target order every round so no target always runs first/last
        n=${#TARGETS[@]}
        for (( k = 0; k < n; k++ )); do
            t=${TARGETS[$(( (k + round - 1) % n ))]}
            [[ $t == direct && $wl == *_1000 ]] && continue
            run_one "$round" "$wl" "$t"
        done
    done
done

# ---------------------------------------------------------------------------------- idle clients
idle_measure() { # target port pid
    local target=$1 port=$2 pid=$3
    psql -X -q -h 127.0.0.1 -p "$port" -U idle -d app -c "SELECT 1" >/dev/null 2>&1 ||
        log "warm-up connection to $target as idle failed"
    sleep 1
    local before after
    before=$(proc_rss_kb "$pid")
    local fifo="$WORK/idle-$target.in"
    mkfifo "$fifo"
    "$PY" "$HELPER" idle 127.0.0.1 "$port" idle app "$IDLE_N" <"$fifo" >"$WORK/idle-$target.out" 2>&1 &
    local opid=$!
    PIDS+=("$opid")
    exec {hold}>"$fifo"   # keep the opener's stdin open until we are done measuring
    local i
    for (( i = 0; i < 3000; i++ )); do
        grep -q '^READY' "$WORK/idle-$target.out" 2>/dev/null && break
        kill -0 "$opid" 2>/dev/null || break
        sleep 0.1
    done
    sleep 2
    after=$(proc_rss_kb "$pid")
    local ok errs note
    read -r _ ok errs note < <(grep '^READY' "$WORK/idle-$target.out" || echo "READY 0 0 \"opener failed\"")
    exec {hold}>&-
    wait "$opid" 2>/dev/null || true
    log "idle $target: RSS $before kB -> $after kB with $ok connections ($errs errors) $note"
    "$PY" "$HELPER" idle-record "$target" "$before" "$after" "$ok" "$errs" "$note" >>"$RESULTS"
}

log "idle clients: $IDLE_N connections each to fresh PgBouncer and pgward instances"
start_pgbouncer pgbouncer-idle "$PGB_IDLE_PORT" trust >"$WORK/pid.pgbouncer-idle"
PGB_IDLE_PID=$(cat "$WORK/pid.pgbouncer-idle")
idle_measure pgbouncer "$PGB_IDLE_PORT" "$PGB_IDLE_PID"
kill_pgbouncer INT "$WORK/pgbouncer-idle/pgbouncer.pid"
start_pgward idle "$W_IDLE" "$H_IDLE" 0 >"$WORK/pid.idle"
W_IDLE_PID=$(cat "$WORK/pid.idle")
idle_measure pgward "$W_IDLE" "$W_IDLE_PID"
kill_child TERM "$W_IDLE_PID"

# ---------------------------------------------------------------------------------- report
NOTES_FILE=$WORK/log-notes.txt
: >"$NOTES_FILE"
for name in plain tenant nometrics idle; do
    f="$WORK/pgward-$name.log"
    [[ -f $f ]] || continue
    n=$(grep -ciE 'warn|error|panic' "$f" || true)
    if (( n > 0 )); then
        echo "pgward ($name): $n warning/error lines, first ones:" >>"$NOTES_FILE"
        grep -iE 'warn|error|panic' "$f" | sort | uniq -c | sort -rn | head -8 | cut -c1-220 >>"$NOTES_FILE"
    fi
done
for name in pgbouncer pgbouncer-idle; do
    f="$WORK/$name/pgbouncer.log"
    [[ -f $f ]] || continue
    n=$(grep -cE 'WARNING|ERROR|FATAL' "$f" || true)
    if (( n > 0 )); then
        echo "PgBouncer ($name): $n warning/error lines, most frequent:" >>"$NOTES_FILE"
        grep -E 'WARNING|ERROR|FATAL' "$f" | sed -E 's/^[0-9-]+ [0-9:.]+ [A-Z]+ \[[0-9]+\] //; s/[CS]-0x[0-9a-f]+:/X:/' |
            sort | uniq -c | sort -rn | head -5 | cut -c1-220 >>"$NOTES_FILE"
    fi
done
for f in "$WORK"/runs/*/meta.crash; do
    [[ -e $f ]] && echo "pooler process exited during $(basename "$(dirname "$f")")" >>"$NOTES_FILE"
done

mkdir -p "$ROOT/bench-results"
[[ -f $ROOT/bench-results/latest.json ]] && cp "$ROOT/bench-results/latest.json" "$ROOT/bench-results/previous.json"
PREV=$ROOT/bench-results/previous.json
[[ -f $ROOT/bench-results/latest.json ]] || PREV=""

WL_JSON=$(for wl in "${WORKLOADS[@]}"; do spec=$(workload_spec "$wl"); printf '%s\t%s\n' "$wl" "${spec##*|}"; done)
"$PY" - "$WORK/env.json" <<EOF
import json, sys, subprocess, platform
wl = [dict(zip(("id", "label"), l.split("\t"))) for l in """$WL_JSON""".strip().splitlines()]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
notes = open("$NOTES_FILE").read().splitlines()
env = {
    "date": subprocess.check_output(["date", "-u", "+%Y-%m-%d %H:%M UTC"], text=True).strip(),
    "uname": subprocess.check_output(["uname", "-a"], text=True).strip(),
    "nproc": subprocess.check_output(["nproc"], text=True).strip(),
    "cpu": cpu,
    "postgres": subprocess.check_output(["$PGBIN/postgres", "--version"], text=True).strip(),
    "pgbouncer": subprocess.check_output(["$PGBOUNCER", "--version"], text=True).splitlines()[0].strip(),
    "pgward_rev": "$PGWARD_REV",
    "pgward_workers": $PGWARD_WORKERS,
    "quick": $QUICK == 1,
    "rounds": $ROUNDS,
    "duration": $DURATION,
    "idle_n": $IDLE_N,
    "workloads": wl,
    "skipped": sorted(set("""$(printf '%s\n' "${SKIPPED[@]:-}")""".strip().splitlines())),
    "pooler_log_notes": notes,
}
json.dump(env, open(sys.argv[1], "w"), indent=1)
EOF
mkdir -p "$ROOT/docs"
echo
"$PY" "$HELPER" report "$RESULTS" "$WORK/env.json" "${PREV:-/nonexistent}" "$ROOT/bench-results/latest.json" "$ROOT/docs/benchmarks.md"
cp "$RESULTS" "$ROOT/bench-results/latest-runs.jsonl"
echo
log "wrote docs/benchmarks.md and bench-results/latest.json"
