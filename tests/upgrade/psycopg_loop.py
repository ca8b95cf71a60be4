"""Transactions on ONE persistent psycopg connection while pgward is replaced, plus new
connections opened all along. Usage: psycopg_loop.py DSN SECONDS. Prints one JSON summary.

The persistent connection sets TimeZone at session level once; every transaction uses
prepared statements and checks that the setting is still there (it must survive each
handover). At the end a running statement is cancelled through the moved cancel key.
"""
import json
import sys
import threading
import time

import psycopg

dsn, seconds = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + seconds
errors = []
new_connections = [0]


def opener():
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(dsn, connect_timeout=10) as c:
                c.execute("SELECT 1").fetchone()
            new_connections[0] += 1
        except Exception as e:  # noqa: BLE001 - every failure counts
            errors.append(f"new connection: {e!r}")
        time.sleep(0.05)


conn = psycopg.connect(dsn, autocommit=True)
conn.execute("SET TimeZone = 'Asia/Tokyo'")
t = threading.Thread(target=opener)
t.start()
transactions = 0
max_latency = 0.0
max_latency_at = 0.0
start = time.monotonic()
# (wall-clock start in seconds since the epoch, latency in ms) of every transaction.
timeline = []
i = 0
while time.monotonic() < deadline:
    i += 1
    aid = i % 100000 + 1
    began = time.monotonic()
    try:
        with conn.transaction():
            conn.execute(
                "SELECT abalance FROM pgbench_accounts WHERE aid = %s", (aid,), prepare=True
            ).fetchone()
            conn.execute(
                "UPDATE pgbench_accounts SET abalance = abalance + 0 WHERE aid = %s",
                (aid,),
                prepare=True,
            )
        tz = conn.execute("SHOW TimeZone").fetchone()[0]
        if tz != "Asia/Tokyo":
            errors.append(f"TimeZone is {tz!r} after {transactions} transactions")
        transactions += 1
    except Exception as e:  # noqa: BLE001
        errors.append(f"transaction: {e!r}")
        if conn.closed:
            break
    latency = time.monotonic() - began
    timeline.append((round(time.time() - latency, 4), round(latency * 1000, 2)))
    if latency > max_latency:
        max_latency, max_latency_at = latency, began - start
    time.sleep(0.002)
t.join()

# A cancel request for the persistent connection, whose session moved: it must reach it.
cancelled = False
if not conn.closed:
    timer = threading.Timer(0.5, conn.cancel_safe)
    timer.start()
    began = time.monotonic()
    try:
        conn.execute("SELECT pg_sleep(10)")
        errors.append("pg_sleep(10) was not cancelled")
    except psycopg.errors.QueryCanceled:
        cancelled = time.monotonic() - began < 5
    except Exception as e:  # noqa: BLE001
        errors.append(f"cancel: {e!r}")
    timer.join()
    conn.close()

print(
    json.dumps(
        {
            "transactions": transactions,
            "new_connections": new_connections[0],
            "errors": errors[:20],
            "error_count": len(errors),
            "max_latency_ms": round(max_latency * 1000, 1),
            "max_latency_at_s": round(max_latency_at, 1),
            "cancelled": cancelled,
            "timeline": timeline,
        }
    )
)
