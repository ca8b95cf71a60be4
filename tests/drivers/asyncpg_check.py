#!/usr/bin/env python3
"""asyncpg through pgward in transaction mode.

Usage: asyncpg_check.py PLAIN_URL ACME_URL GLOBEX_URL

PLAIN_URL is a non-tenant database (dbname `app`), ACME_URL and GLOBEX_URL connect as the
tenants acme and globex (dbname `acme` / `globex`). Every check asserts its results; any
error (in particular "prepared statement ... does not exist / already exists") makes the
script exit non-zero with the failures listed. On success prints one summary line.

asyncpg uses named prepared statements for every parameterised query (its statement cache,
`__asyncpg_stmt_N__` names), so this exercises pgward's prepared statement mapping with
hundreds of clients over few server connections.
"""

import asyncio
import sys
import time
import traceback

import asyncpg

TASKS = 300
POOL_SIZE = 100
ITERATIONS = 20
TENANT_ROUNDS = 200
TIMEOUT = 240  # seconds for the whole script

TENANT_SQL = "SELECT string_agg(name, ',' ORDER BY id) FROM items"
TENANT_WANT = {"acme": "acme-one,acme-two", "globex": "globex-one"}


class Stats:
    def __init__(self):
        self.queries = 0
        self.errors = []

    def fail(self, where, err):
        msg = f"{where}: {type(err).__name__}: {err}"
        sqlstate = getattr(err, "sqlstate", None)
        if sqlstate:
            msg += f" (SQLSTATE {sqlstate})"
        self.errors.append(msg)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def worker(pool, n, stats):
    """One task: several statement texts, executemany, explicit transactions."""
    table = "asyncpg_rows"
    for it in range(ITERATIONS):
        i = n * 1000 + it
        async with pool.acquire() as conn:
            v = await conn.fetchval("SELECT $1::int + 1", i)
            check(v == i + 1, f"SELECT $1::int + 1 with {i} returned {v!r}")
            s = await conn.fetchval("SELECT $1::text || '-' || $2::text", f"t{n}", str(it))
            check(s == f"t{n}-{it}", f"concat returned {s!r}")
            row = await conn.fetchrow(
                "SELECT $1::bigint * 2 AS doubled, $2::bool AS flag, $3::float8 AS f",
                i,
                it % 2 == 0,
                i / 4,
            )
            check(
                row["doubled"] == i * 2 and row["flag"] == (it % 2 == 0) and row["f"] == i / 4,
                f"fetchrow returned {dict(row)!r}",
            )
            rows = await conn.fetch("SELECT g FROM generate_series(1, $1::int) g", it % 7 + 1)
            check([r["g"] for r in rows] == list(range(1, it % 7 + 2)), f"generate_series returned {rows!r}")
            stats.queries += 4

            if it % 5 == 0:
                # executemany inside an explicit transaction, then read back in the same
                # transaction and roll back half of the time.
                async with conn.transaction():
                    await conn.executemany(
                        f"INSERT INTO {table} (task, seq, val) VALUES ($1, $2, $3)",
                        [(n, it * 10 + k, f"v{n}-{it}-{k}") for k in range(5)],
                    )
                    cnt = await conn.fetchval(
                        f"SELECT count(*) FROM {table} WHERE task = $1 AND seq >= $2 AND seq < $3",
                        n,
                        it * 10,
                        it * 10 + 5,
                    )
                    check(cnt == 5, f"count in transaction returned {cnt!r}")
                    tx_id = await conn.fetchval("SELECT txid_current()")
                    tx_id2 = await conn.fetchval("SELECT txid_current()")
                    check(tx_id == tx_id2, f"transaction changed server: txid {tx_id} then {tx_id2}")
                    stats.queries += 8
            elif it % 5 == 1:
                # a transaction that is rolled back on purpose
                try:
                    async with conn.transaction():
                        await conn.execute(
                            f"INSERT INTO {table} (task, seq, val) VALUES ($1, $2, $3)",
                            n,
                            -1 - it,
                            "rolled back",
                        )
                        raise RuntimeError("rollback on purpose")
                except RuntimeError as e:
                    if str(e) != "rollback on purpose":
                        raise
                gone = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE task = $1 AND seq = $2", n, -1 - it)
                check(gone == 0, f"rolled-back row visible: {gone!r}")
                stats.queries += 2
    async with pool.acquire() as conn:
        cnt = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE task = $1", n)
        want = len([it for it in range(ITERATIONS) if it % 5 == 0]) * 5
        check(cnt == want, f"task {n}: {cnt} rows, want {want}")
        stats.queries += 1


async def own_connection_worker(url, n, stats):
    """Tasks with their own connection (not from the pool), short-lived."""
    conn = await asyncpg.connect(url)
    try:
        for it in range(5):
            v = await conn.fetchval("SELECT $1::int * 3", n + it)
            check(v == (n + it) * 3, f"SELECT $1::int * 3 returned {v!r}")
            stats.queries += 1
        # prepared statement object used explicitly
        stmt = await conn.prepare("SELECT $1::int - $2::int")
        for it in range(5):
            v = await stmt.fetchval(n, it)
            check(v == n - it, f"prepared $1-$2 returned {v!r}")
            stats.queries += 1
    finally:
        await conn.close()


async def tenant_check(acme_url, globex_url, stats):
    acme = await asyncpg.connect(acme_url)
    globex = await asyncpg.connect(globex_url)
    try:
        for r in range(TENANT_ROUNDS):
            # strictly interleaved and also concurrently
            a = await acme.fetchval(TENANT_SQL)
            check(a == TENANT_WANT["acme"], f"acme round {r}: got {a!r}")
            g = await globex.fetchval(TENANT_SQL)
            check(g == TENANT_WANT["globex"], f"globex round {r}: got {g!r}")
            a, g = await asyncio.gather(acme.fetchval(TENANT_SQL), globex.fetchval(TENANT_SQL))
            check(a == TENANT_WANT["acme"], f"acme concurrent round {r}: got {a!r}")
            check(g == TENANT_WANT["globex"], f"globex concurrent round {r}: got {g!r}")
            # also with a parameter, inside explicit transactions
            if r % 10 == 0:
                async with acme.transaction():
                    a = await acme.fetchval(TENANT_SQL + " WHERE id >= $1", 1)
                async with globex.transaction():
                    g = await globex.fetchval(TENANT_SQL + " WHERE id >= $1", 1)
                check(a == TENANT_WANT["acme"], f"acme tx round {r}: got {a!r}")
                check(g == TENANT_WANT["globex"], f"globex tx round {r}: got {g!r}")
                stats.queries += 2
            stats.queries += 4
    finally:
        await acme.close()
        await globex.close()

    # many tenant connections at once, mixed
    async def one(url, tenant):
        c = await asyncpg.connect(url)
        try:
            for _ in range(10):
                v = await c.fetchval(TENANT_SQL)
                check(v == TENANT_WANT[tenant], f"{tenant} (crowd): got {v!r}")
                stats.queries += 1
        finally:
            await c.close()

    await asyncio.gather(*[one(acme_url if k % 2 == 0 else globex_url, "acme" if k % 2 == 0 else "globex") for k in range(40)])


async def guarded(coro, where, stats):
    try:
        await coro
    except Exception as e:  # noqa: BLE001 - every failure is reported
        stats.fail(where, e)
        if len(stats.errors) <= 3:
            traceback.print_exc(file=sys.stderr)


async def main(plain_url, acme_url, globex_url):
    stats = Stats()
    t0 = time.monotonic()

    setup = await asyncpg.connect(plain_url)
    await setup.execute(
        "DROP TABLE IF EXISTS asyncpg_rows; CREATE TABLE asyncpg_rows (task int, seq int, val text, PRIMARY KEY (task, seq))"
    )
    await setup.close()

    pool = await asyncpg.create_pool(plain_url, min_size=POOL_SIZE, max_size=POOL_SIZE)
    try:
        await asyncio.gather(*[guarded(worker(pool, n, stats), f"pool task {n}", stats) for n in range(TASKS)])
    finally:
        await pool.close()
    t_pool = time.monotonic() - t0

    await asyncio.gather(
        *[guarded(own_connection_worker(plain_url, n, stats), f"own-connection task {n}", stats) for n in range(100)]
    )

    await guarded(tenant_check(acme_url, globex_url, stats), "tenant check", stats)

    # the total, read back through a fresh connection
    async def total():
        c = await asyncpg.connect(plain_url)
        try:
            n = await c.fetchval("SELECT count(*) FROM asyncpg_rows")
            want = TASKS * len([it for it in range(ITERATIONS) if it % 5 == 0]) * 5
            check(n == want, f"asyncpg_rows has {n} rows, want {want}")
        finally:
            await c.close()

    await guarded(total(), "final count", stats)

    elapsed = time.monotonic() - t0
    if stats.errors:
        prepared = [e for e in stats.errors if "prepared statement" in e]
        print(f"asyncpg: FAILED with {len(stats.errors)} errors ({len(prepared)} about prepared statements), "
              f"{stats.queries} queries ok in {elapsed:.1f}s", file=sys.stderr)
        seen = set()
        for e in stats.errors:
            key = e.split(":", 1)[1] if ":" in e else e
            if key in seen:
                continue
            seen.add(key)
            print(f"  {e}", file=sys.stderr)
            if len(seen) >= 30:
                print("  ...", file=sys.stderr)
                break
        return 1
    print(f"asyncpg {asyncpg.__version__}: OK: {TASKS} pooled tasks (pool of {POOL_SIZE}) + 100 own-connection tasks "
          f"+ tenant check, {stats.queries} queries, 0 errors, pooled phase {t_pool:.1f}s, total {elapsed:.1f}s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print("usage: asyncpg_check.py PLAIN_URL ACME_URL GLOBEX_URL", file=sys.stderr)
        sys.exit(2)
    try:
        rc = asyncio.run(asyncio.wait_for(main(*sys.argv[1:]), TIMEOUT))
    except asyncio.TimeoutError:
        print(f"asyncpg: FAILED: timed out after {TIMEOUT}s (hang?)", file=sys.stderr)
        rc = 1
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        print(f"asyncpg: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        rc = 1
    sys.exit(rc)
