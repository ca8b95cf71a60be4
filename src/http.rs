//! HTTP endpoints on `http_listen`: `/metrics` (Prometheus text), `/health` (200 while the
//! process serves), `/ready` (200 only when every database's upstream accepted a
//! connection recently; 503 with a plain-text reason otherwise), and the status page for
//! people: `/` (HTML) and `/status.json` (what it draws; `crate::status`).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::proxy::Shared;

/// An upstream is "recently" reachable if proven within this window.
pub const READY_WINDOW: Duration = Duration::from_secs(5);

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(&shared, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

fn typed(content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

fn respond(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/" => typed("text/html; charset=utf-8", crate::status::PAGE.to_string()),
        "/status.json" => typed("application/json", crate::status::json(shared)),
        "/metrics" => {
            publish_gauges(shared);
            let mut r = text(StatusCode::OK, crate::metrics::render());
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/health" => {
            if shared.shutting_down.load(Ordering::Acquire) {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into())
            } else {
                text(StatusCode::OK, "ok\n".into())
            }
        }
        "/ready" => {
            let warnings = posture_warnings(shared);
            match readiness(shared) {
                Ok(()) => text(StatusCode::OK, format!("ready\n{warnings}")),
                Err(reason) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{reason}\n{warnings}"),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /, /status.json, /metrics, /health, /ready\n".into(),
        ),
    }
}

/// Ok when every pool's upstream answered within [`READY_WINDOW`] (a completed transaction or
/// the maintenance task's `SELECT 1` probe) and no connection attempt or probe failed since.
/// An open connection proves nothing: a frozen server keeps its sockets open.
pub fn readiness(shared: &Shared) -> Result<(), String> {
    if shared.shutting_down.load(Ordering::Acquire) {
        return Err("shutting down".into());
    }
    let now = crate::pool::now_ms();
    let mut bad = Vec::new();
    for p in shared.pools.iter().filter(|p| p.dedicated_tenant.is_none()) {
        let last = p.last_ok_ms.load(Ordering::Relaxed);
        let failed_since = p.last_error_ms.load(Ordering::Relaxed) > last;
        let error = || {
            p.last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default()
        };
        let why = if last == 0 {
            format!("no successful connection yet ({})", error())
        } else if failed_since {
            error()
        } else if now.saturating_sub(last) > READY_WINDOW.as_millis() as u64 {
            format!(
                "nothing answered for {} s (every server connection busy, or the server stuck)",
                now.saturating_sub(last) / 1000
            )
        } else {
            continue;
        };
        bad.push(format!("database {}: {why}", p.name()));
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

/// T5 findings, one line each ("warning: database app: role pgward: is a superuser …"; a
/// tenant's own upstream as "app/tenant").
fn posture_warnings(shared: &Shared) -> String {
    crate::tenancy::posture::unsafe_findings(shared)
        .into_iter()
        .map(|(key, summary)| format!("warning: database {key}: {summary}\n"))
        .collect()
}

/// Connection gauges are computed when scraped rather than on every state change. Pools of
/// one database (its own, auth_query users', dedicated tenants') add up under its name.
fn publish_gauges(shared: &Shared) {
    #[derive(Default)]
    struct Sum {
        active: usize,
        idle: usize,
        received: u64,
        sent: u64,
        prepared_max: usize,
        prepared_total: usize,
        shares: Vec<(crate::pool::ClassKey, usize, usize)>,
    }
    let mut by_db: std::collections::BTreeMap<String, Sum> = Default::default();
    for p in shared.pools.iter() {
        let e = by_db.entry(p.name().to_string()).or_default();
        e.active += p.stats.active.load(Ordering::Relaxed);
        e.idle += p.stats.idle.load(Ordering::Relaxed);
        e.received += p.stats.bytes_received.load(Ordering::Relaxed);
        e.sent += p.stats.bytes_sent.load(Ordering::Relaxed);
        let (max, total) = p.prepared_counts();
        e.prepared_max = e.prepared_max.max(max);
        e.prepared_total += total;
        e.shares.extend(
            p.shares()
                .into_iter()
                .filter(|(class, _, _)| !class.is_empty() && !class.starts_with('\0')),
        );
    }
    for (db, sum) in by_db {
        let mut n = [0usize; 3];
        for c in shared.clients.iter() {
            if c.database == db {
                n[(c.state.load(Ordering::Relaxed) as usize).min(2)] += 1;
            }
        }
        crate::metrics::set_connection_gauges(
            &db,
            n[1] as f64,
            n[0] as f64,
            n[2] as f64,
            sum.active as f64,
            sum.idle as f64,
        );
        metrics::counter!("pgward_bytes_total", "database" => db.clone(), "direction" => "from_clients")
            .absolute(sum.received);
        metrics::counter!("pgward_bytes_total", "database" => db.clone(), "direction" => "to_clients")
            .absolute(sum.sent);
        crate::metrics::set_tenant_share_gauges(&db, &sum.shares);
        metrics::gauge!("pgward_server_prepared_statements", "database" => db.clone(), "stat" => "max")
            .set(sum.prepared_max as f64);
        metrics::gauge!("pgward_server_prepared_statements", "database" => db, "stat" => "total")
            .set(sum.prepared_total as f64);
    }
}
