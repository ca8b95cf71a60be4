//! The differential protocol tester: each generated sequence runs on a direct connection to
//! PostgreSQL whose session has the tenant's context set, and through pgward as that tenant;
//! the two message streams must be equal, and every probe through pgward must show the
//! tenant's context. A failing sequence is shrunk to a minimal one and printed.

pub mod exec;
pub mod gen;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use exec::Run;
use gen::Op;

use crate::common::wire::{Read, Wire};

/// Where the two sides are.
pub struct Env {
    pub pg_socket_dir: PathBuf,
    pub pg_port: u16,
    pub proxy_port: u16,
    pub password: String,
    /// OID of current_setting(text), for FunctionCall.
    pub fn_oid: u32,
}

/// pgward in front of a fresh PostgreSQL with `size` server connections and the tenants, the
/// fixture (`SETUP_SQL`) loaded, and the two sides' addresses.
pub async fn start(size: usize) -> (crate::common::Harness, Env) {
    use crate::common::*;
    let h = Harness::start(Opts {
        size,
        extra: TENANTS.into(),
        ..Opts::default()
    })
    .await;
    h.pg.psql("app", &format!("SET ROLE pgward;\n{}", gen::SETUP_SQL))
        .expect("differential fixture");
    let direct = h.connect_direct().await;
    let fn_oid: u32 = scalar(
        &direct,
        "SELECT 'pg_catalog.current_setting(text)'::regprocedure::oid",
    )
    .await
    .parse()
    .unwrap();
    let env = Env {
        pg_socket_dir: h.pg.socket_dir().to_path_buf(),
        pg_port: h.pg.port(),
        proxy_port: h.port(),
        password: PASSWORD.into(),
        fn_oid,
    };
    (h, env)
}

/// The direct side's session: the tenant's context at session level.
const DIRECT_SETUP: &str =
    "SET search_path = globex, public; SET app.tenant_id = 'globex'; SET ROLE tenant_globex";

pub enum Verdict {
    Same(Run),
    /// The sequence does not finish even on PostgreSQL (e.g. left inside COPY): not a test.
    Invalid,
    /// A difference pgward documents (docs/tenancy.md): not a failure.
    Documented(&'static str),
    Differs(String),
}

impl Env {
    async fn direct(&self) -> Wire {
        let mut w = Wire::unix(&self.pg_socket_dir, self.pg_port, "pgward", "app")
            .await
            .expect("connect to PostgreSQL");
        w.send(&crate::common::wire::fe::query(DIRECT_SETUP))
            .await
            .unwrap();
        loop {
            match w.read(Duration::from_secs(5)).await {
                Read::Msg(b'Z', _) => return w,
                Read::Msg(b'E', b) => {
                    panic!("direct setup: {}", crate::common::wire::error_text(&b))
                }
                Read::Msg(..) => {}
                other => panic!("direct setup: {other:?}"),
            }
        }
    }

    pub async fn proxied(&self) -> Result<Wire, String> {
        Wire::tcp(self.proxy_port, "md5_user", "globex", &self.password).await
    }

    /// Run `ops` on both sides and compare.
    pub async fn check(&self, ops: &[Op]) -> Verdict {
        let mut d = self.direct().await;
        let direct = exec::run(&mut d, ops, self.fn_oid, None, None).await;
        if direct.stuck.is_some() {
            return Verdict::Invalid;
        }
        assert!(
            direct.bad_probes.is_empty(),
            "the direct session itself lacks the context: {:?}",
            direct.bad_probes
        );
        let mut p = match self.proxied().await {
            Ok(p) => p,
            Err(e) => return Verdict::Differs(format!("could not connect through pgward: {e}")),
        };
        let proxied = exec::run(&mut p, ops, self.fn_oid, Some(&direct.waits), None).await;
        if let Some(s) = &proxied.stuck {
            return Verdict::Differs(format!(
                "pgward stopped answering ({s}); PostgreSQL answered everything\n{}",
                diff(&direct.msgs, &proxied.msgs)
            ));
        }
        if !proxied.bad_probes.is_empty() {
            return Verdict::Differs(format!(
                "T1: a probe ran without the tenant context: {:?}\n{}",
                proxied.bad_probes,
                diff(&direct.msgs, &proxied.msgs)
            ));
        }
        if proxied.msgs != direct.msgs {
            if let Some(why) = documented(ops, &direct, &proxied) {
                return Verdict::Documented(why);
            }
            return Verdict::Differs(diff(&direct.msgs, &proxied.msgs));
        }
        Verdict::Same(direct)
    }

    /// A smaller sequence that still fails (delta debugging over the ops), within `budget`.
    pub async fn shrink(&self, ops: Vec<Op>, budget: Duration) -> (Vec<Op>, String) {
        let start = Instant::now();
        let mut best = ops;
        let mut why = match self.check(&best).await {
            Verdict::Differs(w) => w,
            _ => return (best, "did not fail again (timing-dependent)".into()),
        };
        let mut chunk = best.len().div_ceil(2).max(1);
        while start.elapsed() < budget {
            let mut progress = false;
            let mut i = 0;
            while i < best.len() && start.elapsed() < budget {
                let mut candidate = best.clone();
                candidate.drain(i..(i + chunk).min(candidate.len()));
                match self.check(&candidate).await {
                    Verdict::Differs(w) => {
                        best = candidate;
                        why = w;
                        progress = true;
                    }
                    _ => i += chunk,
                }
            }
            if chunk == 1 && !progress {
                break;
            }
            chunk = (chunk / 2).max(1);
        }
        (best, why)
    }
}

/// Differences docs/tenancy.md lists: pgward refuses `COMMIT; …` sent inside a transaction
/// (T1); a statement that cannot run in a pipeline fails after a Parse, Bind, Describe or
/// Close (that opened an implicit transaction) when pgward's context (an Execute) went in
/// front of it, where PostgreSQL would run it because the client executed nothing yet; a Parse of a statement name that exists gets
/// 42P05 even when its text is invalid too (PostgreSQL reports the text's error first); on
/// Terminate after messages without a Sync, the answers delivered last may differ (PostgreSQL
/// flushes an error but not the rest; pgward neither waits for unflushed answers nor
/// withholds the ones it makes itself).
fn documented(ops: &[Op], direct: &Run, r: &Run) -> Option<&'static str> {
    let at = direct.msgs.iter().zip(&r.msgs).position(|(a, b)| a != b);
    if let Some(i) = at {
        if r.msgs[i].contains("C=42P05") && direct.msgs[i].starts_with("E[") {
            return Some("42P05 before the text's own error");
        }
    }
    let terminated = matches!(ops.last(), Some(Op::Terminate));
    if terminated && (r.msgs.starts_with(&direct.msgs) || direct.msgs.starts_with(&r.msgs)) {
        return Some("last answers before Terminate without Sync");
    }
    let has = |code: &str, text: &str| r.msgs.iter().any(|m| m.contains(code) && m.contains(text));
    if has("C=0A000", "may not end it and continue") {
        return Some("COMMIT; … inside a transaction refused");
    }
    if has("C=25001", "") && non_txn_after_unexecuted_parse(ops) {
        return Some("VACUUM or isolation level after unexecuted extended messages");
    }
    let isolation_then_more = ops
        .iter()
        .any(|o| matches!(o, Op::Query(q) if q.contains("ISOLATION LEVEL") && q.contains(';')));
    if has("C=25001", "before any query") && isolation_then_more {
        return Some("isolation level and more statements in one Query, in an open transaction");
    }
    None
}

fn non_txn_after_unexecuted_parse(ops: &[Op]) -> bool {
    let mut parsed_unexecuted = false;
    for op in ops {
        match op {
            Op::Query(sql) | Op::Parse(_, sql) if gen::is_non_txn(sql) && parsed_unexecuted => {
                return true
            }
            Op::Parse(..) | Op::Bind(..) | Op::Close(..) | Op::Describe(..) => {
                parsed_unexecuted = true
            }
            Op::Execute(..) | Op::Sync | Op::Query(_) => parsed_unexecuted = false,
            _ => {}
        }
    }
    false
}

/// Where two message streams part, with a little context.
fn diff(direct: &[String], proxied: &[String]) -> String {
    let at = direct
        .iter()
        .zip(proxied)
        .position(|(a, b)| a != b)
        .unwrap_or(direct.len().min(proxied.len()));
    let from = at.saturating_sub(4);
    let show = |v: &[String]| {
        v.iter()
            .enumerate()
            .skip(from)
            .take(12)
            .map(|(i, m)| format!("    {i:3} {m}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "first difference at message {at}\n  PostgreSQL:\n{}\n  pgward:\n{}",
        show(direct),
        show(proxied)
    )
}

/// A sequence as a reader can replay it.
pub fn describe(ops: &[Op]) -> String {
    ops.iter()
        .map(|op| format!("    {op:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}
