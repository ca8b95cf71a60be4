//! Random frontend message sequences for the differential test: simple Queries of one to
//! several statements (transaction control, errors, probes), extended-protocol messages in
//! any grouping (named and unnamed statements and portals, row limits, several Sync blocks
//! pipelined, Flush), COPY in and out (text and binary, simple and extended, CopyFail),
//! FunctionCall, statements that cannot run in a transaction block, procedures that commit,
//! waits for answers at arbitrary points, and Terminate.
//!
//! Everything a statement reads is fixed by the fixture (`SETUP_SQL`), so a sequence gives
//! the same answers on every run: writes go to `sink`, which nothing reads.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One step of a sequence.
#[derive(Clone, Debug)]
pub enum Op {
    Query(String),
    Parse(&'static str, String),
    Bind(&'static str, &'static str),
    Describe(u8, &'static str),
    Execute(&'static str, i32),
    Close(u8, &'static str),
    Sync,
    Flush,
    CopyData(Vec<u8>),
    CopyDone,
    CopyFail,
    /// current_setting(text) by OID, with this argument.
    FunctionCall(String),
    /// Read the answers owed so far before writing more.
    Wait,
    Terminate,
    /// Send what is buffered, then terminate the server backend serving this client if it
    /// is in a transaction (tests/lost_server.rs; nothing on a direct connection).
    #[allow(dead_code)] // constructed by tests/lost_server.rs only
    Cut,
}

impl Op {
    pub fn encode(&self, fn_oid: u32) -> Vec<u8> {
        use crate::common::wire::fe;
        match self {
            Op::Query(sql) => fe::query(sql),
            Op::Parse(name, sql) => fe::parse(name, sql),
            Op::Bind(portal, stmt) => fe::bind(portal, stmt),
            Op::Describe(k, name) => fe::describe(*k, name),
            Op::Execute(portal, n) => fe::execute(portal, *n),
            Op::Close(k, name) => fe::close(*k, name),
            Op::Sync => fe::sync(),
            Op::Flush => fe::flush(),
            Op::CopyData(d) => fe::copy_data(d),
            Op::CopyDone => fe::copy_done(),
            Op::CopyFail => fe::copy_fail("pgward differential test"),
            Op::FunctionCall(arg) => fe::function_call(fn_oid, &[arg]),
            Op::Terminate => fe::terminate(),
            Op::Wait | Op::Cut => Vec::new(),
        }
    }

    /// SQL statements this op sends (for the run's statistics).
    pub fn statements(&self) -> usize {
        match self {
            Op::Query(sql) => sql.split(';').filter(|s| !s.trim().is_empty()).count(),
            Op::Execute(..) | Op::FunctionCall(_) => 1,
            _ => 0,
        }
    }
}

/// Tables, a procedure and grants the sequences use (run once, as the login role).
pub const SETUP_SQL: &str = r#"
CREATE TABLE globex.sink (x int);
CREATE INDEX sink_idx ON globex.sink (x);
CREATE TABLE globex.uniq (x int PRIMARY KEY);
INSERT INTO globex.uniq VALUES (1);
GRANT ALL ON globex.sink, globex.uniq TO tenant_globex;
CREATE PROCEDURE public.probe_commit() LANGUAGE plpgsql AS $$
BEGIN
  RAISE NOTICE 'probe|%|%|%', current_user, current_setting('search_path'), current_setting('app.tenant_id', true);
  COMMIT;
  RAISE NOTICE 'probe|%|%|%', current_user, current_setting('search_path'), current_setting('app.tenant_id', true);
END $$;
GRANT EXECUTE ON PROCEDURE public.probe_commit() TO tenant_globex;
"#;

/// The tenant context every probe must show: (current_user, search_path, app.tenant_id).
pub const EXPECTED: [&str; 3] = ["tenant_globex", "globex, public", "globex"];

const PROBE: &str = "SELECT 'probe', current_user, current_setting('search_path'), current_setting('app.tenant_id', true)";
const PROBE_COPY: &str = "COPY (SELECT 'probe', current_user, current_setting('search_path'), current_setting('app.tenant_id', true)) TO STDOUT";

/// Statements that may appear anywhere (in a simple Query or alone in a Parse).
const STATEMENTS: &[(u32, &str)] = &[
    (12, PROBE),
    (4, "SELECT 1"),
    (3, "SELECT generate_series(1, 4)"),
    (3, "SELECT count(*) FROM items"),
    (3, "SELECT name FROM acme.items"),
    (3, "SELECT 1/0"),
    (2, "SELEC 1"),
    (2, "INSERT INTO uniq VALUES (1)"),
    (2, "INSERT INTO sink VALUES (7)"),
    (5, "BEGIN"),
    (1, "START TRANSACTION ISOLATION LEVEL REPEATABLE READ"),
    (4, "COMMIT"),
    (3, "ROLLBACK"),
    (1, "END"),
    (2, "SAVEPOINT s"),
    (2, "ROLLBACK TO SAVEPOINT s"),
    (1, "RELEASE SAVEPOINT s"),
    (1, "COMMIT AND CHAIN"),
    (1, "ROLLBACK AND CHAIN"),
    (1, "SET LOCAL statement_timeout = '20s'"),
    (2, "SHOW search_path"),
    (2, "CALL probe_commit()"),
    (1, "DO $$ BEGIN RAISE NOTICE 'probe|%|%|%', current_user, current_setting('search_path'), current_setting('app.tenant_id', true); END $$"),
    (2, PROBE_COPY),
];

/// Statements that cannot run in a transaction block (T4): alone only.
const NON_TXN: &[&str] = &[
    "VACUUM sink",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS sink_idx ON sink (x)",
];

/// Does `sql` hold a statement that must come first in its transaction (cannot run in a
/// transaction block or pipeline, or sets the isolation level)?
pub fn is_non_txn(sql: &str) -> bool {
    NON_TXN.iter().any(|s| sql.starts_with(s)) || sql.contains("ISOLATION LEVEL")
}

pub struct Gen {
    rng: StdRng,
    /// Named statements parsed so far (may be bound again).
    named: Vec<&'static str>,
}

fn pick<'a>(rng: &mut StdRng, items: &'a [(u32, &'a str)]) -> &'a str {
    let total: u32 = items.iter().map(|(w, _)| w).sum();
    let mut x = rng.random_range(0..total);
    for (w, s) in items {
        if x < *w {
            return s;
        }
        x -= w;
    }
    items[0].1
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen {
            rng: StdRng::seed_from_u64(seed),
            named: Vec::new(),
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn statement(&mut self) -> &'static str {
        pick(&mut self.rng, STATEMENTS)
    }

    /// One sequence: 1 to 12 steps, then (usually) nothing: the runner adds the fence.
    pub fn sequence(&mut self) -> Vec<Op> {
        let mut ops = Vec::new();
        let steps = self.rng.random_range(1..=12);
        for _ in 0..steps {
            self.step(&mut ops);
            if self.chance(0.35) {
                ops.push(Op::Wait);
            }
        }
        if self.chance(0.04) {
            // Terminate at an arbitrary point, possibly inside a block.
            ops.push(Op::Terminate);
        }
        ops
    }

    fn step(&mut self, ops: &mut Vec<Op>) {
        match self.rng.random_range(0..100) {
            0..=29 => {
                let n = match self.rng.random_range(0..10) {
                    0..=5 => 1,
                    6..=8 => 2,
                    _ => 3,
                };
                let sql: Vec<&str> = (0..n).map(|_| self.statement()).collect();
                ops.push(Op::Query(sql.join("; ")));
            }
            30..=64 => self.extended(ops),
            65..=69 => ops.push(Op::Sync),
            70..=72 => ops.push(Op::Flush),
            73..=80 => self.copy_in(ops),
            81..=83 => {
                let portal = if self.chance(0.5) { "" } else { "c" };
                ops.push(Op::Parse("", PROBE_COPY.into()));
                ops.push(Op::Bind(portal, ""));
                ops.push(Op::Execute(portal, 0));
                ops.push(Op::Sync);
            }
            84..=87 => {
                let arg = ["search_path", "app.tenant_id", "role"][self.rng.random_range(0..3)];
                ops.push(Op::FunctionCall(arg.into()));
            }
            88..=92 => {
                let sql = NON_TXN[self.rng.random_range(0..NON_TXN.len())];
                if self.chance(0.6) {
                    ops.push(Op::Query(sql.into()));
                } else {
                    ops.push(Op::Parse("", sql.into()));
                    ops.push(Op::Bind("", ""));
                    ops.push(Op::Execute("", 0));
                    ops.push(Op::Sync);
                }
            }
            93..=96 => {
                // Close something, or execute a suspended portal again.
                match self.rng.random_range(0..3) {
                    0 => ops.push(Op::Close(b'S', self.any_name())),
                    1 => ops.push(Op::Close(b'P', if self.chance(0.5) { "" } else { "p" })),
                    _ => ops.push(Op::Execute(if self.chance(0.5) { "" } else { "p" }, 1)),
                }
            }
            _ => {
                // A named statement bound again (later transaction, maybe another server).
                if let Some(name) = self.named.first().copied() {
                    ops.push(Op::Bind("", name));
                    ops.push(Op::Execute("", 0));
                    ops.push(Op::Sync);
                } else {
                    ops.push(Op::Query(PROBE.into()));
                }
            }
        }
    }

    fn any_name(&mut self) -> &'static str {
        ["", "s1", "s2"][self.rng.random_range(0..3)]
    }

    /// Parse / Bind / Describe / Execute of one statement, in the shapes drivers use.
    fn extended(&mut self, ops: &mut Vec<Op>) {
        let sql = self.statement();
        let stmt = match self.rng.random_range(0..10) {
            0..=5 => "",
            6..=8 => "s1",
            _ => "s2",
        };
        if !stmt.is_empty() && self.named.contains(&stmt) && self.chance(0.6) {
            // Already parsed in this session: Close it first (as drivers do) or not (42P05).
            if self.chance(0.8) {
                ops.push(Op::Close(b'S', stmt));
            }
        }
        ops.push(Op::Parse(stmt, sql.into()));
        if !stmt.is_empty() && !self.named.contains(&stmt) {
            self.named.push(stmt);
        }
        if self.chance(0.25) {
            // asyncpg prepares: Parse, Describe, Flush, and waits for the answers.
            ops.push(Op::Describe(b'S', stmt));
            ops.push(Op::Flush);
            ops.push(Op::Wait);
        }
        let portal = if self.chance(0.75) { "" } else { "p" };
        ops.push(Op::Bind(portal, stmt));
        if self.chance(0.4) {
            ops.push(Op::Describe(b'P', portal));
        }
        let limit = if self.chance(0.2) { 1 } else { 0 };
        ops.push(Op::Execute(portal, limit));
        if limit > 0 && self.chance(0.5) {
            ops.push(Op::Execute(portal, 0));
        }
        match self.rng.random_range(0..10) {
            0..=6 => ops.push(Op::Sync),
            7 => {
                ops.push(Op::Flush);
                ops.push(Op::Wait);
            }
            _ => {} // more messages in the same block (pipelined)
        }
    }

    /// COPY … FROM STDIN, text or binary, simple or extended, ended by CopyDone or CopyFail,
    /// with the data sent before or after the CopyInResponse.
    fn copy_in(&mut self, ops: &mut Vec<Op>) {
        let binary = self.chance(0.3);
        let sql = if binary {
            "COPY sink FROM STDIN (FORMAT binary)"
        } else {
            "COPY sink FROM STDIN"
        };
        let extended = self.chance(0.3);
        let in_block = self.chance(0.2);
        if in_block {
            ops.push(Op::Query("BEGIN".into()));
        }
        if extended {
            ops.push(Op::Parse("", sql.into()));
            ops.push(Op::Bind("", ""));
            ops.push(Op::Execute("", 0));
            if self.chance(0.5) {
                ops.push(Op::Sync); // ignored by PostgreSQL during COPY IN
            }
        } else {
            ops.push(Op::Query(sql.into()));
        }
        if self.chance(0.4) {
            ops.push(Op::Wait);
        }
        let rows = self.rng.random_range(0..4);
        ops.push(Op::CopyData(copy_payload(binary, rows)));
        if self.chance(0.85) {
            ops.push(Op::CopyDone);
        } else {
            ops.push(Op::CopyFail);
        }
        if extended {
            ops.push(Op::Sync);
        }
        if in_block {
            ops.push(Op::Query(PROBE.into()));
            ops.push(Op::Query(
                if self.chance(0.5) {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                }
                .into(),
            ));
        }
    }
}

fn copy_payload(binary: bool, rows: i32) -> Vec<u8> {
    if !binary {
        return (0..rows)
            .map(|i| format!("{i}\n"))
            .collect::<String>()
            .into_bytes();
    }
    let mut b = b"PGCOPY\n\xff\r\n\0".to_vec();
    b.extend_from_slice(&0i32.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    for i in 0..rows {
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&4i32.to_be_bytes());
        b.extend_from_slice(&i.to_be_bytes());
    }
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b
}
