//! Running one sequence on one connection and recording what the client receives, in a form
//! that compares across a direct connection and pgward (only what must differ is dropped).

use std::time::Duration;

use bytes::Bytes;

use super::gen::{Op, EXPECTED};
use crate::common::wire::{data_row, fe, fields, Read, Wire};

/// The last statement of every sequence: reading stops at its row.
pub const FENCE: &str = "SELECT 'pgward-fence'";
/// Longest wait for one message before a side is declared stuck.
const STUCK: Duration = Duration::from_secs(5);
/// A direct connection that sends nothing for this long has answered everything owed.
const IDLE: Duration = Duration::from_millis(15);
/// At a Wait, pgward is given this long to send what PostgreSQL sent by then (fewer answers
/// are not a hang: the comparison at the end shows the difference).
const PACE: Duration = Duration::from_millis(500);

/// What one side received.
#[derive(Debug, Default, Clone)]
pub struct Run {
    /// Backend messages, normalised.
    pub msgs: Vec<String>,
    /// How many messages had arrived at each Wait (the direct run's, replayed on pgward).
    pub waits: Vec<usize>,
    /// The side stopped answering: (messages received by then, what was owed).
    pub stuck: Option<String>,
    /// Probes that did not show the tenant's context.
    pub bad_probes: Vec<String>,
    /// Server connections terminated by [`Op::Cut`] during the run.
    pub cuts: usize,
}

/// Terminates the backend of pgward's one server connection if it is in a transaction;
/// returns whether it did.
const CUT: &str = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'pgward' AND backend_type = 'client backend' AND state <> 'idle' AND pid <> pg_backend_pid()";

/// Execute `ops` on `w`. `waits`: for pgward, how many messages to expect at each Wait (from
/// the direct run); `None` for the direct run, which waits until PostgreSQL is idle.
/// `cutter`: the connection that carries out [`Op::Cut`] (ignored without one).
pub async fn run(
    w: &mut Wire,
    ops: &[Op],
    fn_oid: u32,
    waits: Option<&[usize]>,
    cutter: Option<&tokio_postgres::Client>,
) -> Run {
    let mut r = Run::default();
    let mut out = Vec::new();
    let mut wait_no = 0;
    let mut terminated = false;
    for op in ops {
        match op {
            Op::Wait => {
                if w.send(&out).await.is_err() {
                    break;
                }
                out.clear();
                match waits {
                    None => {
                        while let Read::Msg(t, b) = w.read(IDLE).await {
                            record(&mut r, t, &b);
                        }
                    }
                    Some(counts) => {
                        let want = counts.get(wait_no).copied().unwrap_or(0);
                        while r.msgs.len() < want {
                            match w.read(PACE).await {
                                Read::Msg(t, b) => record(&mut r, t, &b),
                                Read::Eof | Read::Timeout => break,
                            }
                        }
                    }
                }
                r.waits.push(r.msgs.len());
                wait_no += 1;
            }
            Op::Terminate => {
                out.extend(op.encode(fn_oid));
                terminated = true;
                break;
            }
            Op::Cut => {
                let Some(c) = cutter else { continue };
                if w.send(&out).await.is_err() {
                    break;
                }
                out.clear();
                tokio::time::sleep(Duration::from_millis(20)).await;
                let rows = c.simple_query(CUT).await.expect("cut");
                if crate::common::first_value(&rows) != "0" {
                    r.cuts += 1;
                }
            }
            _ => out.extend(op.encode(fn_oid)),
        }
    }
    if !terminated {
        out.extend(fence());
    }
    if w.send(&out).await.is_err() && !terminated {
        r.stuck = Some("write failed".into());
        return r;
    }
    match read_to_fence(w, &mut r).await {
        Fence::Seen => {}
        Fence::Closed => {
            if !terminated {
                r.msgs.push("<connection closed>".into());
            }
        }
        Fence::Stuck => {
            r.stuck = Some(format!("after {} messages, before the fence", r.msgs.len()));
        }
    }
    r
}

/// The fence: end any block, leave any failed transaction, then a marker row.
pub fn fence() -> Vec<u8> {
    [fe::sync(), fe::query("ROLLBACK"), fe::query(FENCE)].concat()
}

/// How reading up to the fence ended.
pub enum Fence {
    /// Its row and the ReadyForQuery after it arrived.
    Seen,
    Closed,
    Stuck,
}

/// Read (and record) up to the fence's row and ReadyForQuery.
pub async fn read_to_fence(w: &mut Wire, r: &mut Run) -> Fence {
    let mut fence_seen = false;
    loop {
        match w.read(STUCK).await {
            Read::Msg(t, b) => {
                if t == b'D' && data_row(&b).first() == Some(&Some("pgward-fence".into())) {
                    fence_seen = true;
                }
                record(r, t, &b);
                if fence_seen && t == b'Z' {
                    return Fence::Seen;
                }
            }
            Read::Eof => return Fence::Closed,
            Read::Timeout => return Fence::Stuck,
        }
    }
}

fn record(r: &mut Run, tag: u8, body: &Bytes) {
    if let Some(bad) = probe_violation(tag, body) {
        r.bad_probes.push(bad);
    }
    r.msgs.push(normalise(tag, body));
}

/// A probe's answer that does not show the tenant context: a row, a COPY line or a notice
/// that starts with "probe".
fn probe_violation(tag: u8, body: &[u8]) -> Option<String> {
    let values: Vec<String> = match tag {
        b'D' => {
            let row = data_row(body);
            if row.first() != Some(&Some("probe".into())) {
                return None;
            }
            row[1..]
                .iter()
                .map(|v| v.clone().unwrap_or_default())
                .collect()
        }
        b'd' => {
            let line = String::from_utf8_lossy(body);
            let rest = line.trim_end_matches('\n').strip_prefix("probe\t")?;
            rest.split('\t').map(str::to_string).collect()
        }
        b'N' => {
            let f = fields(body);
            let msg = f.iter().find(|(k, _)| *k == b'M')?.1.clone();
            let rest = msg.strip_prefix("probe|")?;
            rest.split('|').map(str::to_string).collect()
        }
        _ => return None,
    };
    (values != EXPECTED).then(|| format!("{} -> {values:?}", tag as char))
}

/// A message as compared: errors and notices by severity, code, message, detail, hint,
/// position and context (not the server's source file and line); the rest byte for byte.
fn normalise(tag: u8, body: &[u8]) -> String {
    match tag {
        b'E' | b'N' => {
            let keep: Vec<String> = fields(body)
                .into_iter()
                .filter(|(k, _)| matches!(k, b'S' | b'C' | b'M' | b'D' | b'H' | b'P' | b'W'))
                .map(|(k, v)| format!("{}={v}", k as char))
                .collect();
            format!("{}[{}]", tag as char, keep.join(" "))
        }
        b'D' => format!("D{:?}", data_row(body)),
        b'C' | b'Z' | b'd' => format!(
            "{}[{}]",
            tag as char,
            String::from_utf8_lossy(body).trim_end_matches('\0')
        ),
        _ => format!("{}{:?}", tag as char, body),
    }
}
