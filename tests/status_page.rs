//! The status page (`GET /` on `http_listen`) in a real browser: headless Chromium loads it
//! from pgward running in front of a real PostgreSQL under load, and the test reads the
//! rendered DOM: the pool row of `app` against `SHOW POOLS` from the admin console, the
//! tenant rows against `SHOW TENANTS`, points in the latency chart, the count of a
//! deliberate error's SQLSTATE class, the query shapes, and the T5 warning for an upstream
//! role with BYPASSRLS. A screenshot is saved as target/test-artifacts/status-page.png.
//!
//! Chromium is found as `chromium`, `chromium-browser` or `google-chrome` on PATH (`CHROMIUM`
//! overrides). Absent, the test prints SKIPPED with the install command, except under CI
//! (`CI` set), where it fails: .ci/run installs Debian's `chromium`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const APT_INSTALL: &str = "apt-get install chromium";

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .ok()?;
            let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
            (!path.is_empty()).then(|| PathBuf::from(path))
        })
}

/// The browser, or `None` after printing why the test is skipped (panics under CI).
fn require_chromium() -> Option<PathBuf> {
    match chromium() {
        Some(b) => Some(b),
        None if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => {
            panic!("chromium not found; this test needs it in CI (`{APT_INSTALL}`)")
        }
        None => {
            eprintln!("SKIPPED: chromium not found (`{APT_INSTALL}` to run this test)");
            None
        }
    }
}

/// Run headless Chromium on `url` with `extra` arguments; its standard output. Bounded: the
/// browser is killed after two minutes.
fn browse(bin: &Path, url: &str, extra: &[&str]) -> String {
    use std::os::unix::fs::MetadataExt;
    let profile = std::env::temp_dir().join(format!(
        "pgward-chromium-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        "--virtual-time-budget=6000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    // Chromium's sandbox refuses to run as root.
    if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        cmd.arg("--no-sandbox");
    }
    let mut child = cmd
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).ok();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let _ = std::fs::remove_dir_all(&profile);
    assert!(status.success(), "chromium failed ({status}): {err}");
    out
}

fn rand_suffix() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The rendered DOM of the page, once it has drawn a snapshot.
fn dump_dom(bin: &Path, url: &str) -> String {
    for _ in 0..3 {
        let dom = browse(bin, url, &["--dump-dom"]);
        if dom.contains("data-loaded=\"true\"") {
            return dom;
        }
        eprintln!("the page had not loaded a snapshot yet; again");
    }
    panic!("the page never drew /status.json");
}

/// The element that starts with `open` (a prefix of its start tag) up to its end tag.
fn element<'a>(dom: &'a str, open: &str, end: &str) -> Option<&'a str> {
    let start = dom.find(open)?;
    let len = dom[start..].find(end)?;
    Some(&dom[start..start + len])
}

/// The text of the cell `data-col="col"` in a row.
fn col(row: &str, col: &str) -> String {
    let at = row
        .find(&format!("data-col=\"{col}\""))
        .unwrap_or_else(|| panic!("no column {col} in {row}"));
    let text = &row[at..];
    let text = &text[text.find('>').unwrap() + 1..];
    text[..text.find('<').unwrap()].to_string()
}

fn num(row: &str, c: &str) -> i64 {
    col(row, c)
        .parse()
        .unwrap_or_else(|_| panic!("{c} is not a number in {row}"))
}

/// One row of a SHOW command, by its first column's value: column name → value.
async fn show_row(
    admin: &tokio_postgres::Client,
    what: &str,
    first: &str,
) -> HashMap<String, String> {
    for m in admin.simple_query(&format!("SHOW {what}")).await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            if r.get(0) == Some(first) && (what != "POOLS" || r.get("tenant").is_none()) {
                return r
                    .columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).unwrap_or("").to_string()))
                    .collect();
            }
        }
    }
    panic!("SHOW {what}: no row {first}");
}

fn n(row: &HashMap<String, String>, c: &str) -> i64 {
    row[c].parse().unwrap()
}

/// The figures compared with the page: (cl_active, cl_waiting, sv_active, sv_idle, sv_login).
const POOL_COLS: [&str; 5] = [
    "cl_active",
    "cl_waiting",
    "sv_active",
    "sv_idle",
    "sv_login",
];

async fn show_pools_app(admin: &tokio_postgres::Client) -> Vec<i64> {
    let r = show_row(admin, "POOLS", "app").await;
    POOL_COLS.iter().map(|c| n(&r, c)).collect()
}

fn dom_pool_app(dom: &str) -> Vec<i64> {
    let row = element(dom, "<tr data-pool=\"app\" data-user=\"pgward\">", "</tr>")
        .unwrap_or_else(|| panic!("no pool row for app in the page:\n{dom}"));
    POOL_COLS.iter().map(|c| num(row, c)).collect()
}

fn status_json(h: &Harness) -> serde_json::Value {
    let (code, body) = http_get(h.proxy.http_addr.unwrap(), "/status.json");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_a_browser_matches_the_admin_console() {
    let Some(browser) = require_chromium() else {
        return;
    };
    let h = Harness::start(Opts {
        size: 2,
        checkout_timeout: "60s",
        extra: format!("{TENANTS}\n[metrics]\nquery_stats = true\n"),
        ..Opts::default()
    })
    .await;
    let http = h.proxy.http_addr.unwrap();
    let url = format!("http://{http}/");
    let admin = h.connect("admin", "pgward").await;

    // T5: the upstream login role can bypass row-level security; RELOAD checks it again.
    h.pg.psql("postgres", "ALTER ROLE pgward BYPASSRLS;")
        .expect("ALTER ROLE");
    admin.simple_query("RELOAD").await.unwrap();

    // Load: two acme clients, one globex, one without a tenant, looping statements; a fifth
    // client sends one statement that fails (SQLSTATE 22012, class 22).
    let mut clients = Vec::new();
    for db in ["acme", "acme", "globex", "app"] {
        clients.push(Arc::new(h.connect("app_user", db).await));
    }
    let failing = h.connect("app_user", "app").await;
    let e = failing.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&e), "22012");
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = clients
        .iter()
        .map(|c| {
            let (c, stop) = (c.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    c.simple_query("SELECT pg_sleep(0.002)").await.unwrap();
                    c.query_one("SELECT $1::int + 1", &[&1i32]).await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();

    // Wait for two latency samples with statements in them (one every 5 s) and the role
    // check's finding.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = tokio::task::block_in_place(|| status_json(&h));
        let points = s["latency"]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| !x["p50_ms"].is_null())
            .count();
        let bypass = s["warnings"].as_array().unwrap().iter().any(|w| {
            w["kind"] == "role_check" && w["message"].as_str().unwrap().contains("BYPASSRLS")
        });
        if points >= 2 && bypass {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no latency samples or T5 warning: {s}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The other endpoints answer as before.
    tokio::task::block_in_place(|| {
        assert_eq!(http_get(http, "/metrics").0, 200);
        assert_eq!(http_get(http, "/health").0, 200);
        assert_eq!(
            http_get(http, "/ready").0,
            200,
            "{}",
            http_get(http, "/ready").1
        );
        assert_eq!(http_get(http, "/nope").0, 404);
        let (code, page) = http_get(http, "/");
        assert_eq!(code, 200);
        assert!(page.starts_with("<!doctype html>"), "{page}");
    });

    // Under load: which client holds a server connection changes all the time, but the
    // number of connected clients (cl_active + cl_waiting) and of server connections
    // (sv_active + sv_idle + sv_login) do not.
    let before = show_pools_app(&admin).await;
    let acme_before = show_row(&admin, "TENANTS", "acme").await;
    let dom = tokio::task::block_in_place(|| dump_dom(&browser, &url));
    let after = show_pools_app(&admin).await;
    let sums = |v: &[i64]| (v[0] + v[1], v[2] + v[3] + v[4]);
    assert_eq!(sums(&before), (5, 2), "SHOW POOLS under load: {before:?}");
    assert_eq!(sums(&before), sums(&after), "{before:?} {after:?}");
    assert_eq!(
        sums(&dom_pool_app(&dom)),
        sums(&before),
        "page vs SHOW POOLS"
    );

    // Tenants, as SHOW TENANTS has them.
    for t in ["acme", "globex"] {
        let row = element(&dom, &format!("<tr data-tenant-id=\"{t}\">"), "</tr>")
            .unwrap_or_else(|| panic!("no tenant row {t}"));
        assert_eq!(col(row, "database"), "app");
    }
    let acme = element(&dom, "<tr data-tenant-id=\"acme\">", "</tr>").unwrap();
    assert_eq!(num(acme, "clients"), n(&acme_before, "clients"));
    assert_eq!(num(acme, "clients"), 2);

    // The chart has points (p50 and p99 of at least two intervals).
    let chart = element(&dom, "<svg id=\"latency-chart\"", "</svg>").expect("chart");
    let points = chart.matches("<circle").count();
    assert!(points >= 4, "{points} points: {chart}");
    assert!(chart.contains("<polyline"), "{chart}");

    // The deliberate error's class.
    let errors = element(&dom, "<tr data-error-class=\"22\">", "</tr>").expect("class 22 row");
    assert!(num(errors, "count") >= 1, "{errors}");
    assert_eq!(col(errors, "name"), "data exception");

    // Query shapes (literals normalised away).
    let queries = element(&dom, "<table id=\"queries\"", "</table>").unwrap();
    assert!(queries.contains("pg_sleep"), "{queries}");

    // The T5 finding.
    let warnings = element(&dom, "<ul id=\"warnings\"", "</ul>").unwrap();
    let finding = element(
        warnings,
        "<li data-kind=\"role_check\" data-subject=\"app\">",
        "</li>",
    )
    .unwrap_or_else(|| panic!("no T5 warning: {warnings}"));
    assert!(finding.contains("BYPASSRLS"), "{finding}");
    assert!(!dom.contains(UPSTREAM_PASSWORD) && !dom.contains(PASSWORD));

    // A screenshot under load, kept as a test artifact.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    tokio::task::block_in_place(|| {
        browse(
            &browser,
            &url,
            &[
                &format!("--screenshot={}", shot.display()),
                "--window-size=1280,1600",
            ],
        )
    });
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} is {size} bytes",
        shot.display()
    );
    eprintln!("screenshot: {}", shot.display());

    // Held steady: two acme clients hold both server connections in open transactions, the
    // globex and the plain client wait for one. Every figure is then fixed.
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        assert!(l.await.unwrap() > 0);
    }
    clients[0].batch_execute("BEGIN; SELECT 1").await.unwrap();
    clients[1].batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiters: Vec<_> = clients[2..]
        .iter()
        .map(|c| {
            let c = c.clone();
            tokio::spawn(async move { c.simple_query("SELECT 1").await.map(|_| ()) })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while show_pools_app(&admin).await[1] != 2 {
        assert!(Instant::now() < deadline, "the two clients never waited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = show_pools_app(&admin).await;
    let globex_before = show_row(&admin, "TENANTS", "globex").await;
    let dom = tokio::task::block_in_place(|| dump_dom(&browser, &url));
    let after = show_pools_app(&admin).await;
    assert_eq!(
        before,
        vec![3, 2, 2, 0, 0],
        "SHOW POOLS held: {POOL_COLS:?}"
    );
    assert_eq!(before, after);
    assert_eq!(
        dom_pool_app(&dom),
        before,
        "page vs SHOW POOLS: {POOL_COLS:?}"
    );
    let globex = element(&dom, "<tr data-tenant-id=\"globex\">", "</tr>").unwrap();
    assert_eq!(num(globex, "waiting"), n(&globex_before, "waiting"));
    assert_eq!(num(globex, "waiting"), 1);
    let acme = element(&dom, "<tr data-tenant-id=\"acme\">", "</tr>").unwrap();
    assert_eq!(num(acme, "server_connections"), 2);
    let pool = element(&dom, "<tr data-pool=\"app\" data-user=\"pgward\">", "</tr>").unwrap();
    assert!(pool.contains("data-col=\"maxwait_us\""), "{pool}");

    // Released: the waiting clients are served.
    clients[0].batch_execute("COMMIT").await.unwrap();
    clients[1].batch_execute("COMMIT").await.unwrap();
    for w in waiters {
        w.await.unwrap().unwrap();
    }
}
