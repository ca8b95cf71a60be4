// node-postgres (`pg`) through pgward, run by tests/drivers.rs.
//
// Usage: node node_check.js PLAIN_URL ACME_URL GLOBEX_URL
//
// Every bulk and streaming path of node-postgres as tenant globex — COPY FROM STDIN and TO
// STDOUT (pg-copy-streams) inside and outside a transaction, a cursor (pg-cursor: Execute
// with a row limit, PortalSuspended), named prepared statements, an error in the middle,
// a pg.Pool with concurrent queries — each followed by statements that must show the
// tenant's context (search_path, app.tenant_id, role) and must not read tenant acme's
// table. Exits non-zero with a message on the first wrong answer.
"use strict";

const { Client, Pool } = require("pg");
const { from: copyFrom, to: copyTo } = require("pg-copy-streams");
const Cursor = require("pg-cursor");
const { pipeline } = require("stream/promises");
const { Readable, Writable } = require("stream");

const CONTEXT_SQL =
  "SELECT current_setting('search_path') AS path, current_user AS role, " +
  "current_setting('app.tenant_id', true) AS tenant";
const GLOBEX = { path: "globex, public", role: "tenant_globex", tenant: "globex" };
let queries = 0;

function check(cond, what) {
  if (!cond) throw new Error(`wrong answer: ${what}`);
}

async function contextIs(c, after) {
  const r = (await c.query(CONTEXT_SQL)).rows[0];
  check(
    r.path === GLOBEX.path && r.role === GLOBEX.role && r.tenant === GLOBEX.tenant,
    `after ${after}: context ${JSON.stringify(r)}`
  );
  queries++;
}

// The context, and tenant acme's table is not readable (outside a transaction: the
// refused read would abort it).
async function contextHolds(c, after) {
  await contextIs(c, after);
  try {
    const n = (await c.query("SELECT count(*) AS n FROM acme.items")).rows[0].n;
    throw new Error(`after ${after}: read tenant acme's table (${n} rows)`);
  } catch (e) {
    check(e.code === "42501", `after ${after}: acme.items gave ${e.code} ${e.message}`);
  }
  queries++;
}

async function copyIn(c, first, n) {
  const lines = [];
  for (let i = 0; i < n; i++) lines.push(`${first + i}\tc${i}\n`);
  await pipeline(Readable.from(lines), c.query(copyFrom("COPY items (id, name) FROM STDIN")));
}

async function copyOut(c, sql) {
  const chunks = [];
  const sink = new Writable({
    write(chunk, _enc, done) {
      chunks.push(chunk);
      done();
    },
  });
  await pipeline(c.query(copyTo(`COPY (${sql}) TO STDOUT`)), sink);
  return Buffer.concat(chunks).toString("utf8").split("\n").filter((l) => l !== "");
}

async function readCursor(c, sql, values, batch) {
  const cursor = c.query(new Cursor(sql, values));
  const rows = [];
  for (;;) {
    const got = await cursor.read(batch);
    if (got.length === 0) break;
    rows.push(...got);
  }
  await cursor.close();
  return rows;
}

async function bulkPaths(url) {
  const c = new Client({ connectionString: url });
  await c.connect();
  try {
    await contextHolds(c, "connect");
    for (let round = 0; round < 3; round++) {
      await copyIn(c, 1000, 40);
      await contextHolds(c, "COPY FROM STDIN (autocommit)");
      const out = await copyOut(c, "SELECT id, name FROM items WHERE id >= 1000 ORDER BY id");
      check(out.length === 40, `COPY TO STDOUT rows: ${out.length}`);
      await contextHolds(c, "COPY TO STDOUT (autocommit)");

      await c.query("BEGIN");
      await copyIn(c, 2000, 5);
      const inside = await copyOut(c, CONTEXT_SQL);
      check(
        inside.length === 1 && inside[0] === "globex, public\ttenant_globex\tglobex",
        `COPY TO STDOUT in a transaction: ${JSON.stringify(inside)}`
      );
      await contextIs(c, "COPY in a transaction");
      await c.query("COMMIT");
      await contextHolds(c, "COMMIT after COPY");

      await c.query("BEGIN");
      const rows = await readCursor(
        c,
        "SELECT current_user AS role, id FROM items WHERE id >= $1 ORDER BY id",
        [1000],
        7
      );
      check(
        rows.length === 45 && rows.every((r) => r.role === "tenant_globex"),
        `cursor: ${rows.length} rows, first ${JSON.stringify(rows[0])}`
      );
      await c.query("COMMIT");
      await contextHolds(c, "a cursor in a transaction");

      for (let i = 0; i < 5; i++) {
        const r = await c.query({ name: "ctx", text: CONTEXT_SQL + " WHERE $1::int >= 0", values: [i] });
        check(r.rows[0].tenant === "globex", `prepared statement: ${JSON.stringify(r.rows[0])}`);
        queries++;
      }
      try {
        await c.query({ name: "div", text: "SELECT 1 / $1::int", values: [0] });
        throw new Error("1/0 did not fail");
      } catch (e) {
        check(e.code === "22012", `1/0 gave ${e.code} ${e.message}`);
      }
      await contextHolds(c, "a failed prepared statement");
      await c.query("DELETE FROM items WHERE id >= 1000");
      queries += 8;
    }
  } finally {
    await c.end();
  }
}

async function pooled(url) {
  const pool = new Pool({ connectionString: url, max: 6 });
  try {
    const runs = [];
    for (let i = 0; i < 60; i++) {
      runs.push(
        pool.query({ text: CONTEXT_SQL + " WHERE $1::int >= 0", values: [i] }).then((r) => {
          check(r.rows[0].role === "tenant_globex" && r.rows[0].tenant === "globex",
            `pool query ${i}: ${JSON.stringify(r.rows[0])}`);
          queries++;
        })
      );
    }
    await Promise.all(runs);
    const c = await pool.connect();
    try {
      await contextHolds(c, "a pool's checkout");
    } finally {
      c.release();
    }
  } finally {
    await pool.end();
  }
}

async function main() {
  const [, , plainUrl, , globexUrl] = process.argv;
  if (!globexUrl) {
    console.error("usage: node node_check.js PLAIN_URL ACME_URL GLOBEX_URL");
    process.exit(2);
  }
  const plain = new Client({ connectionString: plainUrl });
  await plain.connect();
  const r = await plain.query("SELECT current_setting('app.tenant_id', true) AS t");
  check(!r.rows[0].t, `plain client sees a tenant: ${r.rows[0].t}`);
  await plain.end();
  await bulkPaths(globexUrl);
  await pooled(globexUrl);
  console.log(`node-postgres ${require("pg/package.json").version}: ${queries} checked queries, all with the tenant context`);
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
