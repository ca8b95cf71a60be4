#!/usr/bin/env python3
"""psycopg 3 through pgward in transaction mode.

Usage: psycopg_check.py PLAIN_URL ACME_URL GLOBEX_URL [bulk-context]

With `bulk-context`, only the tenant-context checks after COPY, pipeline and server-side
cursor paths run (as tenant globex).

PLAIN_URL is a non-tenant database (dbname `app`), ACME_URL and GLOBEX_URL connect as the
tenants acme and globex (dbname `acme` / `globex`). Checks server-side prepared statements
(prepare_threshold=0: every query is a named `_pg3_N` statement; a small prepared_max so
statements are evicted with protocol-level Close; ROLLBACK makes psycopg send
`DEALLOCATE ALL`), transactions, COPY in/out with checksums, server-side errors followed by
more work, pipeline mode, many concurrent async connections, and tenant isolation with the
same statement text. Exits non-zero listing the failures; prints one summary line on success.
"""

import asyncio
import hashlib
import sys
import time
import traceback

import psycopg
from psycopg import errors as pgerr

COPY_ROWS = 5000
ASYNC_CONNS = 60
ASYNC_ITER = 15
TENANT_ROUNDS = 200

TENANT_SQL = "SELECT string_agg(name, ',' ORDER BY id) FROM items"
TENANT_WANT = {"acme": "acme-one,acme-two", "globex": "globex-one"}

errors = []
counts = {"queries": 0}


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def q(cur, sql, params=None, prepare=True):
    cur.execute(sql, params, prepare=prepare)
    counts["queries"] += 1
    return cur


def run(name, fn, *args):
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - every failure is reported
        sqlstate = getattr(e, "sqlstate", None)
        errors.append(f"{name}: {type(e).__name__}: {e}" + (f" (SQLSTATE {sqlstate})" if sqlstate else ""))
        traceback.print_exc(file=sys.stderr)


def prepared_statements(url):
    with psycopg.connect(url, prepare_threshold=0, autocommit=True) as conn:
        conn.prepared_max = 5  # evictions: psycopg closes statements (protocol Close)
        cur = conn.cursor()
        for i in range(200):
            # 12 distinct texts cycling through a cache of 5 -> constant Parse/Close churn
            k = i % 12
            v = q(cur, f"SELECT %s::int + {k}", (i,)).fetchone()[0]
            check(v == i + k, f"SELECT %s::int + {k} with {i} returned {v}")
            # the same text again right away: uses the cached statement
            v = q(cur, f"SELECT %s::int + {k}", (i + 1,)).fetchone()[0]
            check(v == i + 1 + k, f"cached statement returned {v}")
        # explicit prepare=True on a connection that does not prepare by default
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.cursor()
        for i in range(50):
            v = q(cur, "SELECT %s::text || %s::text", ("a", str(i)), prepare=True).fetchone()[0]
            check(v == f"a{i}", f"prepare=True returned {v!r}")
        names = q(cur, "SELECT count(*) FROM pg_prepared_statements", prepare=False).fetchone()[0]
        # pgward's server-side names are its own; nothing to assert about the count beyond sanity
        check(names >= 0, "pg_prepared_statements")


def transactions(url):
    with psycopg.connect(url, prepare_threshold=0) as conn:
        cur = conn.cursor()
        q(cur, "DROP TABLE IF EXISTS pg3_tx")
        q(cur, "CREATE TABLE pg3_tx (id int PRIMARY KEY, v text)")
        conn.commit()  # DROP in the results: psycopg will DEALLOCATE ALL next
        for round_ in range(20):
            with conn.transaction():
                for k in range(5):
                    q(cur, "INSERT INTO pg3_tx VALUES (%s, %s)", (round_ * 10 + k, f"r{round_}"))
                t1 = q(cur, "SELECT txid_current()").fetchone()[0]
                n = q(cur, "SELECT count(*) FROM pg3_tx WHERE v = %s", (f"r{round_}",)).fetchone()[0]
                t2 = q(cur, "SELECT txid_current()").fetchone()[0]
                check(n == 5 and t1 == t2, f"round {round_}: count {n}, txids {t1} {t2}")
            # a rolled-back transaction: psycopg sends DEALLOCATE ALL after ROLLBACK
            try:
                with conn.transaction():
                    q(cur, "INSERT INTO pg3_tx VALUES (%s, 'rolled back')", (-1 - round_,))
                    raise RuntimeError("rollback")
            except RuntimeError:
                pass
            n = q(cur, "SELECT count(*) FROM pg3_tx WHERE id = %s", (-1 - round_,)).fetchone()[0]
            check(n == 0, f"rolled back row visible in round {round_}")
            conn.rollback()
        # executemany with prepared statements
        with conn.transaction():
            cur.executemany("INSERT INTO pg3_tx VALUES (%s, %s)", [(1000 + i, "many") for i in range(300)])
            counts["queries"] += 300
        n = q(cur, "SELECT count(*) FROM pg3_tx").fetchone()[0]
        check(n == 20 * 5 + 300, f"pg3_tx has {n} rows")
        conn.commit()


def copy_in_out(url):
    with psycopg.connect(url, prepare_threshold=0, autocommit=True) as conn:
        cur = conn.cursor()
        q(cur, "DROP TABLE IF EXISTS pg3_copy", prepare=False)
        q(cur, "CREATE TABLE pg3_copy (id int, payload text, n float8)", prepare=False)
        rows = [(i, f"payload {i} \t tab \\ backslash \n nl é", i / 3) for i in range(COPY_ROWS)]
        h_in = hashlib.md5()
        with cur.copy("COPY pg3_copy (id, payload, n) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(r)
        for r in rows:
            h_in.update(repr(r).encode())
        # read back via COPY TO (rows) and compare
        h_out = hashlib.md5()
        got = 0
        with cur.copy("COPY (SELECT id, payload, n FROM pg3_copy ORDER BY id) TO STDOUT") as copy:
            copy.set_types(["int4", "text", "float8"])
            for r in copy.rows():
                h_out.update(repr(r).encode())
                got += 1
        check(got == COPY_ROWS, f"COPY out returned {got} rows")
        check(h_in.hexdigest() == h_out.hexdigest(), "COPY out rows differ from the rows copied in")
        # raw text COPY out checksummed against the server's own md5
        raw = bytearray()
        with cur.copy("COPY (SELECT id, payload FROM pg3_copy ORDER BY id) TO STDOUT") as copy:
            for block in copy:
                raw += block
        server_md5 = q(
            cur,
            "SELECT md5(string_agg(id || E'\\t' || replace(replace(replace(replace(payload, E'\\\\', E'\\\\\\\\'), E'\\t', E'\\\\t'), E'\\n', E'\\\\n'), E'\\r', E'\\\\r'), E'\\n' ORDER BY id) || E'\\n') FROM pg3_copy",
        ).fetchone()[0]
        check(hashlib.md5(bytes(raw)).hexdigest() == server_md5, "raw COPY out md5 differs from the server's")
        # binary COPY in and out
        q(cur, "DROP TABLE IF EXISTS pg3_copy_b", prepare=False)
        q(cur, "CREATE TABLE pg3_copy_b (id int, payload text)", prepare=False)
        with cur.copy("COPY pg3_copy_b FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text"])
            for i in range(COPY_ROWS):
                copy.write_row((i, f"b{i}"))
        s = q(cur, "SELECT sum(id), count(*), md5(string_agg(payload, ',' ORDER BY id)) FROM pg3_copy_b").fetchone()
        want_md5 = hashlib.md5(",".join(f"b{i}" for i in range(COPY_ROWS)).encode()).hexdigest()
        check(s == (sum(range(COPY_ROWS)), COPY_ROWS, want_md5), f"binary COPY in: {s}")
        with cur.copy("COPY pg3_copy_b TO STDOUT (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text"])
            back = sorted(copy.rows())
        check(back == [(i, f"b{i}") for i in range(COPY_ROWS)], "binary COPY out differs")
        # a COPY that fails half way (bad data), then the connection is still usable
        try:
            with cur.copy("COPY pg3_copy (id) FROM STDIN") as copy:
                copy.write(b"1\n2\nnot-a-number\n4\n")
            raise AssertionError("bad COPY data was accepted")
        except pgerr.InvalidTextRepresentation:
            pass
        n = q(cur, "SELECT count(*) FROM pg3_copy").fetchone()[0]
        check(n == COPY_ROWS, f"after failed COPY: {n} rows")
        # a COPY the client aborts
        try:
            with cur.copy("COPY pg3_copy (id) FROM STDIN") as copy:
                copy.write(b"1\n")
                raise RuntimeError("client abort")
        except RuntimeError:
            pass
        except pgerr.QueryCanceled:
            pass
        n = q(cur, "SELECT count(*) FROM pg3_copy").fetchone()[0]
        check(n == COPY_ROWS, f"after aborted COPY: {n} rows")


def errors_then_continue(url):
    with psycopg.connect(url, prepare_threshold=0, autocommit=True) as conn:
        cur = conn.cursor()
        for i in range(20):
            # error at execution of a prepared statement
            try:
                q(cur, "SELECT 1 / %s::int", (0,))
                raise AssertionError("division by zero succeeded")
            except pgerr.DivisionByZero:
                pass
            # the same statement then works
            v = q(cur, "SELECT 1 / %s::int", (1,)).fetchone()[0]
            check(v == 1, f"after error: {v}")
            # error at Parse (unknown table / syntax error), then a good statement
            try:
                q(cur, "SELECT * FROM no_such_table_%s" % i)
                raise AssertionError("unknown table succeeded")
            except pgerr.UndefinedTable:
                pass
            try:
                q(cur, "SELEC %s::int", (i,))
                raise AssertionError("syntax error succeeded")
            except pgerr.SyntaxError:
                pass
            v = q(cur, "SELECT %s::int * 2", (i,)).fetchone()[0]
            check(v == i * 2, f"after parse errors: {v}")
    # errors inside a transaction: aborted until rollback, then fine
    with psycopg.connect(url, prepare_threshold=0) as conn:
        cur = conn.cursor()
        for i in range(10):
            q(cur, "SELECT %s::int", (i,))
            try:
                q(cur, "SELECT 1 / %s::int", (0,))
                raise AssertionError("division by zero succeeded")
            except pgerr.DivisionByZero:
                pass
            try:
                q(cur, "SELECT %s::int", (i,))
                raise AssertionError("statement in aborted transaction succeeded")
            except pgerr.InFailedSqlTransaction:
                pass
            conn.rollback()
            v = q(cur, "SELECT %s::int + 1", (i,)).fetchone()[0]
            check(v == i + 1, f"after rollback: {v}")
            conn.commit()


def pipeline(url):
    with psycopg.connect(url, prepare_threshold=0, autocommit=True) as conn:
        cur = conn.cursor()
        for round_ in range(10):
            with conn.pipeline():
                curs = []
                for i in range(50):
                    c = conn.cursor()
                    c.execute("SELECT %s::int * %s::int", (i, round_))
                    curs.append((i, c))
                counts["queries"] += 50
            for i, c in curs:
                v = c.fetchone()[0]
                check(v == i * round_, f"pipeline {round_}/{i}: {v}")
        # an error in the middle of a pipeline
        try:
            with conn.pipeline():
                a = conn.cursor()
                a.execute("SELECT %s::int", (1,))
                b = conn.cursor()
                b.execute("SELECT 1 / %s::int", (0,))
                c = conn.cursor()
                c.execute("SELECT %s::int", (3,))
            raise AssertionError("pipeline error not raised")
        except pgerr.DivisionByZero:
            pass
        v = q(cur, "SELECT %s::int", (42,)).fetchone()[0]
        check(v == 42, f"after pipeline error: {v}")


async def async_many(url):
    async def one(n):
        async with await psycopg.AsyncConnection.connect(url, prepare_threshold=0, autocommit=True) as conn:
            cur = conn.cursor()
            for it in range(ASYNC_ITER):
                await cur.execute("SELECT %s::int + %s::int", (n, it))
                v = (await cur.fetchone())[0]
                check(v == n + it, f"async {n}/{it}: {v}")
                await cur.execute("SELECT %s::text || '/' || %s::text", (str(n), str(it)))
                v = (await cur.fetchone())[0]
                check(v == f"{n}/{it}", f"async text {n}/{it}: {v!r}")
                async with conn.transaction():
                    await cur.execute("SELECT txid_current()")
                    t1 = (await cur.fetchone())[0]
                    await cur.execute("SELECT txid_current() + %s::bigint", (0,))
                    t2 = (await cur.fetchone())[0]
                    check(t1 == t2, f"async {n}/{it}: txids {t1} {t2}")
                counts["queries"] += 4

    results = await asyncio.gather(*[one(n) for n in range(ASYNC_CONNS)], return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    for r in failed[:10]:
        errors.append(f"async connection: {type(r).__name__}: {r}")
    if failed:
        raise AssertionError(f"{len(failed)} of {ASYNC_CONNS} async connections failed")


def tenants(acme_url, globex_url):
    acme = psycopg.connect(acme_url, prepare_threshold=0, autocommit=True)
    globex = psycopg.connect(globex_url, prepare_threshold=0, autocommit=True)
    try:
        ca, cg = acme.cursor(), globex.cursor()
        for r in range(TENANT_ROUNDS):
            a = q(ca, TENANT_SQL).fetchone()[0]
            g = q(cg, TENANT_SQL).fetchone()[0]
            check(a == TENANT_WANT["acme"], f"acme round {r}: {a!r}")
            check(g == TENANT_WANT["globex"], f"globex round {r}: {g!r}")
            a = q(ca, TENANT_SQL + " WHERE id >= %s", (1,)).fetchone()[0]
            g = q(cg, TENANT_SQL + " WHERE id >= %s", (1,)).fetchone()[0]
            check(a == TENANT_WANT["acme"], f"acme param round {r}: {a!r}")
            check(g == TENANT_WANT["globex"], f"globex param round {r}: {g!r}")
    finally:
        acme.close()
        globex.close()
    # non-autocommit tenant connections: psycopg sends DEALLOCATE ALL after each rollback
    acme = psycopg.connect(acme_url, prepare_threshold=0)
    globex = psycopg.connect(globex_url, prepare_threshold=0)
    try:
        ca, cg = acme.cursor(), globex.cursor()
        for r in range(20):
            a = q(ca, TENANT_SQL).fetchone()[0]
            g = q(cg, TENANT_SQL).fetchone()[0]
            check(a == TENANT_WANT["acme"], f"acme tx round {r}: {a!r}")
            check(g == TENANT_WANT["globex"], f"globex tx round {r}: {g!r}")
            if r % 2:
                acme.rollback()
                globex.rollback()
            else:
                acme.commit()
                globex.commit()
    finally:
        acme.close()
        globex.close()


def tenant_pipeline_commit(acme_url, globex_url):
    """T1 inside one extended-protocol block (libpq pipeline mode: no Sync until the end):
    statements after a COMMIT or ROLLBACK in the same pipeline run in a new transaction, which
    must get the tenant context again."""
    for tenant, url in (("acme", acme_url), ("globex", globex_url)):
        with psycopg.connect(url, autocommit=True) as conn:
            for round_ in range(5):
                with conn.pipeline():
                    cs = [conn.cursor() for _ in range(7)]
                    cs[0].execute("BEGIN")
                    cs[1].execute(TENANT_SQL)
                    cs[2].execute("COMMIT" if round_ % 2 else "ROLLBACK")
                    cs[3].execute(TENANT_SQL)
                    cs[4].execute("SELECT current_setting('app.tenant_id', true)")
                    cs[5].execute("COMMIT")  # no transaction in progress: a warning only
                    cs[6].execute("SELECT %s::text || current_setting('app.tenant_id', true)", ("x",))
                counts["queries"] += 7
                got = [cs[1].fetchone()[0], cs[3].fetchone()[0], cs[4].fetchone()[0], cs[6].fetchone()[0]]
                want = [TENANT_WANT[tenant], TENANT_WANT[tenant], tenant, "x" + tenant]
                check(got == want, f"{tenant} pipeline round {round_}: {got!r}")


CONTEXT_SQL = ("SELECT current_setting('search_path'), current_user, "
               "current_setting('app.tenant_id', true)")
GLOBEX_CONTEXT = ("globex, public", "tenant_globex", "globex")


def context_holds(conn, after):
    """The statements right after `after` run with globex's context (and its role)."""
    row = conn.execute(CONTEXT_SQL).fetchone()
    check(tuple(row) == GLOBEX_CONTEXT, f"after {after}: context {tuple(row)!r}")
    try:
        n = conn.execute("SELECT count(*) FROM acme.items").fetchone()[0]
        raise AssertionError(f"after {after}: read tenant acme's table ({n} rows)")
    except pgerr.InsufficientPrivilege:
        if not conn.autocommit:
            conn.rollback()
    counts["queries"] += 2


def tenant_bulk_context(globex_url):
    """Every bulk and streaming path of psycopg as tenant globex, each followed by statements
    that must show the tenant's context and must not read tenant acme's table."""
    with psycopg.connect(globex_url, autocommit=True) as conn:
        for round_ in range(3):
            with conn.cursor().copy("COPY items (id, name) FROM STDIN") as cp:
                for i in range(40):
                    cp.write_row((1000 + i, f"c{i}"))
            context_holds(conn, "COPY FROM STDIN (autocommit)")
            with conn.cursor().copy("COPY (SELECT id, name FROM items ORDER BY id) TO STDOUT") as cp:
                got = [r for r in cp.rows()]
            check(len(got) == 41, f"COPY TO STDOUT rows: {len(got)}")
            context_holds(conn, "COPY TO STDOUT (autocommit)")
            with conn.transaction():
                with conn.cursor().copy("COPY items (id, name) FROM STDIN (FORMAT binary)") as cp:
                    cp.set_types(["int4", "text"])
                    cp.write_row((2000, "binary"))
                with conn.cursor().copy(f"COPY ({CONTEXT_SQL}) TO STDOUT") as cp:
                    inside = [tuple(r) for r in cp.rows()]
                check(inside == [GLOBEX_CONTEXT], f"COPY TO STDOUT in a transaction: {inside!r}")
                row = conn.execute(CONTEXT_SQL).fetchone()
                check(tuple(row) == GLOBEX_CONTEXT, f"after COPY in a transaction: {tuple(row)!r}")
            context_holds(conn, "COPY in a transaction")
            with conn.pipeline():
                cs = [conn.execute(CONTEXT_SQL) for _ in range(3)]
            for c in cs:
                check(tuple(c.fetchone()) == GLOBEX_CONTEXT, "pipeline: context")
            try:
                with conn.pipeline():
                    conn.execute("SELECT 1/0")
                    conn.execute(CONTEXT_SQL)
            except pgerr.DivisionByZero:
                pass
            context_holds(conn, "a pipeline whose first statement failed")
            with conn.transaction():
                with conn.cursor(name=f"srv{round_}") as sc:
                    sc.itersize = 3
                    sc.execute("SELECT current_user, id FROM items WHERE id >= %s ORDER BY id", (1000,))
                    rows = list(sc)
                check(len(rows) == 41 and all(u == "tenant_globex" for u, _ in rows),
                      f"server-side cursor: {rows[:2]!r}")
            context_holds(conn, "a server-side cursor")
            conn.execute("DELETE FROM items WHERE id >= 1000")
            counts["queries"] += 10
    # the hanging pipeline: a failing first statement, repeated, with other clients
    with psycopg.connect(globex_url, autocommit=True) as conn:
        for i in range(30):
            with conn.pipeline():
                cs = [conn.execute(CONTEXT_SQL) for _ in range(3)]
            for c in cs:
                check(tuple(c.fetchone()) == GLOBEX_CONTEXT, f"pipeline {i}: context")
            try:
                with conn.pipeline():
                    conn.execute("SELECT 1/0")
                    conn.execute(CONTEXT_SQL)
            except pgerr.DivisionByZero:
                pass
            counts["queries"] += 5


def main(plain_url, acme_url, globex_url):
    t0 = time.monotonic()
    run("prepared statements", prepared_statements, plain_url)
    run("transactions", transactions, plain_url)
    run("COPY in/out", copy_in_out, plain_url)
    run("errors then continue", errors_then_continue, plain_url)
    run("pipeline", pipeline, plain_url)
    run("async connections", lambda u: asyncio.run(asyncio.wait_for(async_many(u), 180)), plain_url)
    run("tenants", tenants, acme_url, globex_url)
    run("tenant pipeline with COMMIT", tenant_pipeline_commit, acme_url, globex_url)
    elapsed = time.monotonic() - t0
    if errors:
        print(f"psycopg: FAILED with {len(errors)} errors, {counts['queries']} queries ok in {elapsed:.1f}s",
              file=sys.stderr)
        for e in errors:
            print(f"  {e}", file=sys.stderr)
        return 1
    print(f"psycopg {psycopg.__version__} (libpq {psycopg.pq.version()}): OK: prepared statements, transactions, "
          f"COPY {COPY_ROWS} rows in/out, errors, pipeline, {ASYNC_CONNS} async connections, tenants; "
          f"{counts['queries']} queries, 0 errors, {elapsed:.1f}s")
    return 0


def main_bulk_context(globex_url):
    t0 = time.monotonic()
    run("tenant context after bulk paths", tenant_bulk_context, globex_url)
    if errors:
        for e in errors:
            print(f"  {e}", file=sys.stderr)
        return 1
    print(f"psycopg {psycopg.__version__}: OK: tenant context after COPY in/out (text, binary, in and out of "
          f"transactions), pipelines (one failing), server-side cursors; {counts['queries']} queries, "
          f"{time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[4] == "bulk-context":
        sys.exit(main_bulk_context(sys.argv[3]))
    if len(sys.argv) != 4:
        print("usage: psycopg_check.py PLAIN_URL ACME_URL GLOBEX_URL [bulk-context]", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
