//! Running the proxy: bind the listeners (or take them over from a running process, see
//! `crate::upgrade`), accept clients, serve HTTP, handle signals (SIGHUP reload,
//! SIGTERM/SIGINT graceful drain), and stop.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::proxy::Shared;

/// A proxy bound to its ports and serving in the background (used by tests and the demo).
pub struct Running {
    pub shared: Arc<Shared>,
    pub addr: std::net::SocketAddr,
    pub http_addr: Option<std::net::SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Copies of the listening sockets, for a successor process (`upgrade_socket`).
    handed: Option<crate::upgrade::listen::Handed>,
}

/// Listening sockets received from the process this one takes over from.
pub struct Inherit {
    pub client: std::net::TcpListener,
    pub http: Option<std::net::TcpListener>,
    /// Accepting starts when this resolves: once the old process was told (until then it
    /// accepts alone, and nothing is accepted here that a failed takeover would drop).
    pub go: tokio::sync::oneshot::Receiver<()>,
}

impl Running {
    pub fn shutdown(&self) {
        self.shared.begin_shutdown();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.begin_shutdown();
        for t in &self.tasks {
            t.abort();
        }
        for p in self.shared.pools.iter() {
            p.close();
        }
    }
}

/// Bind and start serving. Ports 0 in the config pick free ports (see `addr`).
pub async fn start(config: Config) -> Result<Running, String> {
    start_with(config, None).await
}

/// Start on inherited listeners (a takeover) or, without them, bind.
pub async fn start_with(config: Config, inherited: Option<Inherit>) -> Result<Running, String> {
    if config.metrics.enabled {
        crate::metrics::install(&config.metrics);
    }
    let (inherited_client, inherited_http, go) = match inherited {
        Some(i) => (Some(i.client), i.http, Some(i.go)),
        None => (None, None, None),
    };
    let listener = match inherited_client {
        Some(l) => TcpListener::from_std(l).map_err(|e| format!("inherited listener: {e}"))?,
        None => bind(config.listen, config.listen_backlog)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?,
    };
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    if addr != config.listen && config.listen.port() != 0 {
        tracing::warn!(inherited = %addr, configured = %config.listen, "listening on the inherited address; a changed `listen` takes effect at a full restart");
    }
    let http = match (config.http_listen, inherited_http) {
        (Some(_), Some(l)) => {
            Some(TcpListener::from_std(l).map_err(|e| format!("inherited listener: {e}"))?)
        }
        (Some(a), None) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|e| format!("cannot listen on {a} (http_listen): {e}"))?,
        ),
        (None, _) => None,
    };
    let handed = match &config.upgrade_socket {
        Some(_) => Some(crate::upgrade::listen::Handed {
            client: listener
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| e.to_string())?,
            http: match &http {
                Some(h) => Some(h.as_fd().try_clone_to_owned().map_err(|e| e.to_string())?),
                None => None,
            },
        }),
        None => None,
    };
    let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    let shared = Shared::new(config)?;
    if let Some(tq) = shared.config().tenant_query.clone() {
        // The first load completes before clients are accepted, so tenants exist at start.
        let c = shared.config();
        crate::tenancy::source::refresh(&shared, &c, &tq).await;
    }
    let mut tasks = Vec::new();
    let s = shared.clone();
    tasks.push(tokio::spawn(async move {
        if let Some(go) = go {
            if go.await.is_err() {
                return; // the takeover failed
            }
        }
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = s.shutdown.notified() => return,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    if s.shutting_down.load(std::sync::atomic::Ordering::Acquire) {
                        return;
                    }
                    tokio::spawn(crate::client::handle(tcp, peer, s.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }));
    if let Some(l) = http {
        let s = shared.clone();
        tasks.push(tokio::spawn(async move {
            // A successor serves HTTP on the same socket from the handover on.
            tokio::select! {
                _ = crate::http::serve(l, s.clone()) => {}
                _ = s.upgrade.wait_handed_over() => {}
            }
        }));
    }
    tasks.extend(crate::tenancy::source::spawn(shared.clone()));
    tasks.push(crate::tenancy::posture::spawn(shared.clone()));
    let s = shared.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            crate::metrics::upkeep();
            crate::status::history::sample_if_due();
            let _ = &s;
        }
    }));
    tracing::info!(%addr, http = ?http_addr, "pgward listening");
    Ok(Running {
        shared,
        addr,
        http_addr,
        tasks,
        handed,
    })
}

/// The client listener, with `listen_backlog` pending connections queued by the kernel.
fn bind(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let sock = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(backlog)
}

/// Run in the foreground until SIGTERM/SIGINT or the admin SHUTDOWN; SIGHUP reloads.
pub async fn run_foreground(path: PathBuf, config: Config) -> Result<(), String> {
    let upgrade_socket = config.upgrade_socket.clone();
    let taken = match &upgrade_socket {
        Some(p) => crate::upgrade::takeover::take_over(p).await?,
        None => None,
    };
    let started = std::time::Instant::now();
    let (inherit, conversation) = match taken {
        Some(t) => {
            let (client, http, rest) = t.into_parts();
            let (tx, go) = tokio::sync::oneshot::channel();
            (Some(Inherit { client, http, go }), Some((rest, tx)))
        }
        None => (None, None),
    };
    let mut running = start_with(config, inherit).await?;
    let shared = running.shared.clone();
    if let Some((c, go)) = conversation {
        c.ready(&shared).await?;
        let _ = go.send(());
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "upgrade: took over the listeners"
        );
        crate::upgrade::systemd::notify(crate::upgrade::systemd::Notice::ReadyAsMain);
    } else {
        crate::upgrade::systemd::notify(crate::upgrade::systemd::Notice::Ready);
    }
    if let (Some(p), Some(handed)) = (&upgrade_socket, running.handed.take()) {
        let l = crate::upgrade::listen::bind(p)
            .map_err(|e| format!("cannot create upgrade_socket {}: {e}", p.display()))?;
        running.tasks.push(crate::upgrade::listen::spawn(
            l,
            p.clone(),
            shared.clone(),
            handed,
        ));
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| e.to_string())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = hup.recv() => match Config::load(&path) {
                Ok(c) => match shared.reload(c) {
                    Ok(()) => tracing::info!(path = %path.display(), "configuration reloaded"),
                    Err(e) => tracing::error!(error = %e, "reload failed; keeping the old configuration"),
                },
                Err(e) => tracing::error!(error = %e, "reload failed; keeping the old configuration"),
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = shared.shutdown.notified() => break,
        }
    }
    if shared.upgrade.handed_over() {
        let t = std::time::Instant::now();
        crate::upgrade::wait_for_sessions(&shared, DRAIN_LIMIT).await;
        tracing::info!(
            clients_moved = shared.upgrade.moved(),
            clients_left = shared.clients.len(),
            seconds = t.elapsed().as_secs_f64(),
            "upgrade: handed over to the new process; exiting"
        );
        drop(running);
        return Ok(());
    }
    tracing::info!("shutting down: new connections refused, waiting for transactions to finish");
    crate::upgrade::systemd::notify(crate::upgrade::systemd::Notice::Stopping);
    shared.begin_shutdown();
    drain(&shared, DRAIN_LIMIT).await;
    drop(running);
    Ok(())
}

/// The longest a stopping process waits for its transactions (or, after a takeover, for its
/// sessions to move).
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Wait until no client holds a server connection (or the deadline passes).
pub async fn drain(shared: &Shared, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        let busy: usize = shared
            .pools
            .iter()
            .map(|p| p.stats.active.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        if busy == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
