#!/usr/bin/env python3
"""asyncpg through pgward in transaction mode.

Usage: asyncpg_check.py PLAIN_URL ACME_URL GLOBEX_URL [PHASE...]

PHASE is one or more of `core` (the default), `features`, `copy`, `schema-change`,
`tenant-pool`.

PLAIN_URL is a non-tenant database (dbname `app`), ACME_URL and GLOBEX_URL connect as the
tenants acme and globex (dbname `acme` / `globex`). Every check asserts its results; any
error (in particular "prepared statement ... does not exist / already exists") makes the
script exit non-zero with the failures listed. On success prints one summary line.

asyncpg uses named prepared statements for every parameterised query (its statement cache,
`__asyncpg_stmt_N__` names), so this exercises pgward's prepared statement mapping with
hundreds of clients over few server connections.

Phases:
  core           300 tasks over an asyncpg pool of 100 (and 100 short-lived connections):
                 parameterised queries through the statement cache, executemany, explicit
                 transactions; the two tenants running the same statement text.
  features       cursors (named portals, prefetch), an enum type (asyncpg's type
                 introspection), statement cache eviction, explicit prepare, executemany error.
  copy           copy_records_to_table (binary), copy_from_query, copy_to_table: asyncpg
                 pipelines CopyData/CopyDone behind the COPY Query without waiting for
                 CopyInResponse.
  schema-change  a cached statement after ALTER TABLE: asyncpg gets "cached plan must not
                 change result type", drops its cache and prepares the text again; on
                 PostgreSQL that retry succeeds. And a type dropped and created again: a new
                 connection preparing `SELECT $1::type` must see the new type.
  tenant-pool    an asyncpg Pool on a tenant URL: asyncpg's reset on release sends
                 `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;`.
  bulk-context   as tenant globex (its own role): every bulk and streaming path
                 (copy_records_to_table, copy_to_table, copy_from_table, copy_from_query,
                 executemany, a cursor in a transaction) followed by statements that must
                 show the tenant's search_path, app.tenant_id and role, and must not read
                 tenant acme's table (the issue: after asyncpg's COPY a statement ran as the
                 pooler's login role).
"""

import asyncio
import hashlib
import io
import os
import sys
import threading
import time
import traceback

import asyncpg

TASKS = 300
POOL_SIZE = 100
ITERATIONS = 20
TENANT_ROUNDS = 200
TIMEOUT = 200  # seconds for the whole script (then the watchdog reports and exits)

TENANT_SQL = "SELECT string_agg(name, ',' ORDER BY id) FROM items"
TENANT_WANT = {"acme": "acme-one,acme-two", "globex": "globex-one"}


class Stats:
    def __init__(self):
        self.queries = 0
        self.errors = []
        self.phase = "start"
        self.tasks_done = 0

    def fail(self, where, err):
        msg = f"{where}: {type(err).__name__}: {err}"
        sqlstate = getattr(err, "sqlstate", None)
        if sqlstate:
            msg += f" (SQLSTATE {sqlstate})"
        self.errors.append(msg)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def within(coro, seconds, what):
    """Await `coro`; a hang becomes an AssertionError saying what did not finish."""
    try:
        return await asyncio.wait_for(coro, seconds)
    except asyncio.TimeoutError:
        raise AssertionError(f"{what} did not finish within {seconds}s (hang)") from None


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
    finally:
        stats.tasks_done += 1


def start_watchdog(stats, loop):
    """At TIMEOUT: print where things stand (progress, pending asyncio tasks with their
    stacks) and exit hard, so a hang through the proxy is reported instead of blocking."""

    def fire():
        time.sleep(TIMEOUT)
        out = sys.stderr
        print(f"asyncpg: FAILED: no result after {TIMEOUT}s (hang?) in phase {stats.phase!r}: "
              f"{stats.tasks_done} tasks done, {stats.queries} queries ok, {len(stats.errors)} errors", file=out)
        for e in stats.errors[:10]:
            print(f"  {e}", file=out)
        try:
            tasks = list(asyncio.all_tasks(loop))
        except RuntimeError:
            tasks = []
        print(f"  {len(tasks)} asyncio tasks pending; where the first 5 wait:", file=out)
        for t in tasks[:5]:
            print(f"  task {t.get_name()}:", file=out)
            # walk the chain of awaited coroutines (Task.print_stack shows only the outer one)
            coro, depth = t.get_coro(), 0
            while coro is not None and depth < 30:
                frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
                if frame is not None:
                    print(f"    {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}", file=out)
                else:
                    print(f"    {coro!r}", file=out)
                coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
                depth += 1
        out.flush()
        os._exit(3)

    threading.Thread(target=fire, daemon=True).start()


async def phase_core(plain_url, acme_url, globex_url, stats):
    t0 = time.monotonic()
    setup = await asyncpg.connect(plain_url)
    await setup.execute(
        "DROP TABLE IF EXISTS asyncpg_rows; CREATE TABLE asyncpg_rows (task int, seq int, val text, PRIMARY KEY (task, seq))"
    )
    await setup.close()

    stats.phase = "core: pool"
    pool = await asyncpg.create_pool(plain_url, min_size=POOL_SIZE, max_size=POOL_SIZE)
    try:
        await asyncio.gather(*[guarded(worker(pool, n, stats), f"pool task {n}", stats) for n in range(TASKS)])
    finally:
        await pool.close()
    t_pool = time.monotonic() - t0

    stats.phase = "core: own connections"
    await asyncio.gather(
        *[guarded(own_connection_worker(plain_url, n, stats), f"own-connection task {n}", stats) for n in range(100)]
    )

    stats.phase = "core: tenants"
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
    return (f"core: {TASKS} pooled tasks (pool of {POOL_SIZE}, {t_pool:.1f}s) + 100 own-connection tasks "
            f"+ tenant same-text check")


async def phase_features(plain_url, acme_url, globex_url, stats):
    conn = await asyncpg.connect(plain_url, statement_cache_size=4)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS asyncpg_feat; DROP TYPE IF EXISTS asyncpg_mood;"
            "CREATE TYPE asyncpg_mood AS ENUM ('sad', 'ok', 'happy');"
            "CREATE TABLE asyncpg_feat (id int PRIMARY KEY, payload text, mood asyncpg_mood);"
            "INSERT INTO asyncpg_feat SELECT g, 'row ' || g, (ARRAY['sad', 'ok', 'happy'])[g % 3 + 1]::asyncpg_mood "
            "FROM generate_series(0, 2999) g"
        )
        # enum parameters and results: asyncpg introspects the type with its own statements
        for m in ("sad", "ok", "happy"):
            v = await conn.fetchval("SELECT $1::asyncpg_mood", m)
            check(v == m, f"enum round trip {m!r} -> {v!r}")
            n = await conn.fetchval("SELECT count(*) FROM asyncpg_feat WHERE mood = $1", m)
            check(n == 1000, f"rows with mood {m!r}: {n!r}")
            stats.queries += 2
        # cursors: named portals with prefetch, inside a transaction
        async with conn.transaction():
            got = [r["id"] async for r in conn.cursor("SELECT id FROM asyncpg_feat WHERE id < $1 ORDER BY id", 500, prefetch=37)]
            check(got == list(range(500)), f"cursor iteration returned {len(got)} rows")
            cur = await conn.cursor("SELECT id FROM asyncpg_feat ORDER BY id")
            first = await cur.fetch(10)
            await cur.forward(100)
            row = await cur.fetchrow()
            check([r["id"] for r in first] == list(range(10)) and row["id"] == 110, f"cursor fetch/forward: {row!r}")
            stats.queries += 2
        # statement cache of 4 with 12 statement texts: asyncpg closes evicted statements
        for i in range(120):
            k = i % 12
            v = await conn.fetchval(f"SELECT $1::int * {k}", i)
            check(v == i * k, f"cache churn: {v!r}")
            stats.queries += 1
        # many statements prepared and closed explicitly
        for i in range(50):
            st = await conn.prepare(f"SELECT $1::text || '{i}'")
            v = await st.fetchval("x")
            check(v == f"x{i}", f"explicit prepare: {v!r}")
            stats.queries += 1
        # an error in the middle of executemany inside a transaction, then more work
        try:
            async with conn.transaction():
                await conn.executemany("INSERT INTO asyncpg_feat (id, payload) VALUES ($1, $2)",
                                       [(10000, "a"), (10001, "b"), (1, "duplicate")])
            raise AssertionError("duplicate key accepted")
        except asyncpg.UniqueViolationError:
            pass
        n = await conn.fetchval("SELECT count(*) FROM asyncpg_feat WHERE id >= $1", 10000)
        check(n == 0, f"rows of the failed executemany are visible: {n}")
        stats.queries += 2
    finally:
        await conn.close()
    return "features: enum, cursors, statement cache eviction, explicit prepare, executemany error"


async def phase_copy(plain_url, acme_url, globex_url, stats):
    """asyncpg sends CopyData and CopyDone right behind the COPY Query, without waiting for
    CopyInResponse (PostgreSQL reads them in order)."""
    conn = await asyncpg.connect(plain_url)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS asyncpg_copy; CREATE TABLE asyncpg_copy (id int PRIMARY KEY, payload text)"
        )
        records = [(i, f"row {i} \t \\ é") for i in range(3000)]
        # binary COPY FROM STDIN of records; a few rounds, since whether the data overtakes
        # the server's CopyInResponse depends on timing
        for round_ in range(10):
            await conn.execute("TRUNCATE asyncpg_copy")
            res = await within(conn.copy_records_to_table("asyncpg_copy", records=records), 20,
                               f"copy_records_to_table (COPY ... FROM STDIN (FORMAT binary), 3000 rows), round {round_}")
            check(res == "COPY 3000", f"copy_records_to_table: {res!r}")
        back = await conn.fetch("SELECT id, payload FROM asyncpg_copy ORDER BY id")
        check([tuple(r) for r in back] == records, "rows read back differ from the rows copied in")
        # COPY TO STDOUT, checksummed
        out = io.BytesIO()
        res = await within(conn.copy_from_query("SELECT id, payload FROM asyncpg_copy ORDER BY id", output=out), 30,
                           "copy_from_query (COPY ... TO STDOUT)")
        check(res == "COPY 3000", f"copy_from_query: {res!r}")
        want = "".join(f"{i}\t{p.replace(chr(92), chr(92) * 2).replace(chr(9), chr(92) + 't')}\n" for i, p in records)
        check(hashlib.md5(out.getvalue()).hexdigest() == hashlib.md5(want.encode()).hexdigest(),
              "copy_from_query output differs")
        # text COPY FROM STDIN of a bytes source, back into a second table
        await conn.execute("DROP TABLE IF EXISTS asyncpg_copy2; CREATE TABLE asyncpg_copy2 (id int, payload text)")
        res = await within(conn.copy_to_table("asyncpg_copy2", source=io.BytesIO(out.getvalue())), 30,
                           "copy_to_table (COPY ... FROM STDIN, text)")
        check(res == "COPY 3000", f"copy_to_table: {res!r}")
        same = await conn.fetchval(
            "SELECT count(*) FROM asyncpg_copy a JOIN asyncpg_copy2 b USING (id) WHERE a.payload = b.payload")
        check(same == 3000, f"copy_to_table: {same} rows equal")
        stats.queries += 6
    finally:
        conn.terminate()
    return "copy: copy_records_to_table (binary), copy_from_query, copy_to_table, 3000 rows with checksums"


async def phase_schema_change(plain_url, acme_url, globex_url, stats):
    async def altered_table():
        setup = await asyncpg.connect(plain_url)
        conn = await asyncpg.connect(plain_url)
        try:
            await setup.execute("DROP TABLE IF EXISTS asyncpg_ddl; CREATE TABLE asyncpg_ddl (a int); INSERT INTO asyncpg_ddl VALUES (1)")
            rows = await conn.fetch("SELECT * FROM asyncpg_ddl WHERE a = $1", 1)
            check([tuple(r) for r in rows] == [(1,)], f"before ALTER: {rows!r}")
            await setup.execute("ALTER TABLE asyncpg_ddl ADD COLUMN b int DEFAULT 7")
            # asyncpg: InvalidCachedStatementError -> drop cache, prepare again, retry once
            rows = await conn.fetch("SELECT * FROM asyncpg_ddl WHERE a = $1", 1)
            check([tuple(r) for r in rows] == [(1, 7)], f"after ALTER: {rows!r}")
            stats.queries += 2
        finally:
            await conn.close()
            await setup.close()
        # a fresh connection preparing the text for the first time
        fresh = await asyncpg.connect(plain_url)
        try:
            rows = await fresh.fetch("SELECT * FROM asyncpg_ddl WHERE a = $1", 1)
            check([tuple(r) for r in rows] == [(1, 7)], f"fresh connection after ALTER: {rows!r}")
            stats.queries += 1
        finally:
            await fresh.close()

    async def recreated_type():
        # a type dropped and created again (a migration re-run): new OID, same name
        for round_ in range(2):
            conn = await asyncpg.connect(plain_url)
            try:
                await conn.execute("DROP TYPE IF EXISTS asyncpg_level; CREATE TYPE asyncpg_level AS ENUM ('low', 'high')")
                v = await conn.fetchval("SELECT $1::asyncpg_level", "high")
                check(v == "high", f"round {round_}: {v!r}")
                stats.queries += 1
            finally:
                await conn.close()

    await guarded(altered_table(), "schema-change: ALTER TABLE, then the same SELECT *", stats)
    await guarded(recreated_type(), "schema-change: DROP TYPE + CREATE TYPE, then a new connection", stats)
    return "schema-change: statement prepared again after ALTER TABLE and after a type was re-created"


async def phase_tenant_pool(plain_url, acme_url, globex_url, stats):
    for tenant, url in (("acme", acme_url), ("globex", globex_url)):
        pool = await asyncpg.create_pool(url, min_size=2, max_size=2)
        try:
            for i in range(10):
                async with pool.acquire() as conn:  # released with asyncpg's reset query
                    v = await conn.fetchval(TENANT_SQL)
                    check(v == TENANT_WANT[tenant], f"{tenant} pool round {i}: {v!r}")
                    stats.queries += 1
        finally:
            await pool.close()
    return "tenant-pool: asyncpg pools on both tenants (reset on release)"


CONTEXT_SQL = ("SELECT current_setting('search_path'), current_user, "
               "current_setting('app.tenant_id', true)")
GLOBEX_CONTEXT = ("globex, public", "tenant_globex", "globex")


async def context_holds(conn, after, stats):
    """The statements right after `after` run with globex's context, simple and extended."""
    row = await conn.fetchrow(CONTEXT_SQL)
    check(tuple(row) == GLOBEX_CONTEXT, f"after {after}: context {tuple(row)!r}")
    n = await conn.fetchval("SELECT count(*) FROM items WHERE id >= $1", 0)
    check(n >= 1, f"after {after}: items of globex: {n}")
    try:
        leaked = await conn.fetchval("SELECT count(*) FROM acme.items")
        raise AssertionError(f"after {after}: read tenant acme's table ({leaked} rows)")
    except asyncpg.InsufficientPrivilegeError:
        pass
    stats.queries += 3


async def phase_bulk_context(plain_url, acme_url, globex_url, stats):
    conn = await asyncpg.connect(globex_url)
    try:
        await context_holds(conn, "connect", stats)
        for round_ in range(5):
            records = [(1000 + i, f"c{i}") for i in range(50)]
            res = await within(conn.copy_records_to_table("items", records=records, columns=["id", "name"]),
                               20, "copy_records_to_table")
            check(res == "COPY 50", f"copy_records_to_table: {res!r}")
            await context_holds(conn, f"copy_records_to_table (round {round_})", stats)
            out = io.BytesIO()
            res = await within(conn.copy_from_table("items", output=out, columns=["id", "name"]), 20,
                               "copy_from_table")
            check(res.startswith("COPY"), f"copy_from_table: {res!r}")
            await context_holds(conn, "copy_from_table", stats)
            await conn.execute("DELETE FROM items WHERE id >= 1000")
            res = await within(conn.copy_to_table("items", source=io.BytesIO(b"2000\tfrom-file\n")), 20,
                               "copy_to_table")
            check(res == "COPY 1", f"copy_to_table: {res!r}")
            await context_holds(conn, "copy_to_table", stats)
            out = io.BytesIO()
            res = await within(conn.copy_from_query(CONTEXT_SQL, output=out), 20, "copy_from_query")
            check(out.getvalue().decode() == "\t".join(GLOBEX_CONTEXT) + "\n",
                  f"copy_from_query ran without the context: {out.getvalue()!r}")
            await context_holds(conn, "copy_from_query", stats)
            await conn.executemany("INSERT INTO items (id, name) VALUES ($1, $2)",
                                   [(3000 + i, "many") for i in range(20)])
            await context_holds(conn, "executemany", stats)
            async with conn.transaction():
                seen = [tuple(r) async for r in conn.cursor(
                    "SELECT current_user, id FROM items WHERE id >= $1 ORDER BY id", 3000, prefetch=7)]
                check(len(seen) == 20 and all(u == "tenant_globex" for u, _ in seen),
                      f"cursor in a transaction: {seen[:3]!r}")
                await context_holds(conn, "a cursor in a transaction", stats)
            await context_holds(conn, "the transaction's end", stats)
            await conn.execute("DELETE FROM items WHERE id >= 1000")
    finally:
        await conn.close()
    return "bulk-context: the tenant context after every COPY path, executemany and a cursor (5 rounds)"


PHASES = {
    "core": phase_core,
    "features": phase_features,
    "copy": phase_copy,
    "schema-change": phase_schema_change,
    "tenant-pool": phase_tenant_pool,
    "bulk-context": phase_bulk_context,
}


async def main(plain_url, acme_url, globex_url, phases):
    stats = Stats()
    t0 = time.monotonic()
    done = []
    start_watchdog(stats, asyncio.get_running_loop())
    for name in phases:
        stats.phase = name
        before = len(stats.errors)
        try:
            summary = await PHASES[name](plain_url, acme_url, globex_url, stats)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            stats.fail(f"phase {name}", e)
            summary = f"{name}: FAILED"
        if len(stats.errors) > before and not summary.endswith("FAILED"):
            summary = f"{name}: FAILED"
        done.append(summary)
    elapsed = time.monotonic() - t0
    if stats.errors:
        prepared = [e for e in stats.errors if "prepared statement" in e]
        print(f"asyncpg: FAILED with {len(stats.errors)} errors ({len(prepared)} about prepared statements), "
              f"{stats.queries} queries ok in {elapsed:.1f}s; phases: {'; '.join(done)}", file=sys.stderr)
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
    print(f"asyncpg {asyncpg.__version__}: OK: {'; '.join(done)}; {stats.queries} queries, 0 errors, {elapsed:.1f}s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 4 or any(p not in PHASES for p in sys.argv[4:]):
        print(f"usage: asyncpg_check.py PLAIN_URL ACME_URL GLOBEX_URL [{'|'.join(PHASES)}]...", file=sys.stderr)
        sys.exit(2)
    phases = sys.argv[4:] or ["core"]
    try:
        rc = asyncio.run(main(*sys.argv[1:4], phases))
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        print(f"asyncpg: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        rc = 1
    sys.exit(rc)
