//! Telling systemd about the process's state (`sd_notify`), so that a unit with
//! `Type=notify` knows when pgward serves and, after a takeover, which process is now the
//! unit's main one (`NotifyAccess=all`; docs/operations.md, "Upgrading without downtime").
//!
//! Invariant: without `NOTIFY_SOCKET` in the environment nothing is sent; a failure to send
//! is logged once and changes nothing else (systemd is an observer, never a dependency).

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// What pgward tells systemd.
pub enum Notice {
    /// Serving (after a normal start).
    Ready,
    /// Serving, and this process is now the unit's main process (after a takeover).
    ReadyAsMain,
    /// Draining before exit.
    Stopping,
}

impl Notice {
    fn text(&self) -> String {
        match self {
            Notice::Ready => "READY=1".into(),
            Notice::ReadyAsMain => format!("MAINPID={}\nREADY=1", std::process::id()),
            Notice::Stopping => "STOPPING=1".into(),
        }
    }
}

/// Send `notice` to the socket named by `NOTIFY_SOCKET`, if there is one.
pub fn notify(notice: Notice) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(e) = send(&path.to_string_lossy(), &notice.text()) {
            tracing::warn!(error = %e, "could not notify systemd (NOTIFY_SOCKET)");
        }
    }
}

/// One datagram to a path or, with a leading `@`, an abstract socket name.
fn send(socket: &str, text: &str) -> std::io::Result<()> {
    let addr = match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(socket)?,
    };
    let s = UnixDatagram::unbound()?;
    s.send_to_addr(text.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_a_path_and_an_abstract_name() {
        let dir = std::env::temp_dir().join(format!("pgward-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let rx = UnixDatagram::bind(&dir).unwrap();
        send(&dir.to_string_lossy(), &Notice::ReadyAsMain.text()).unwrap();
        let mut buf = [0u8; 128];
        let n = rx.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert_eq!(got, format!("MAINPID={}\nREADY=1", std::process::id()));
        let _ = std::fs::remove_file(&dir);

        use std::os::linux::net::SocketAddrExt;
        let name = format!("pgward-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        send(&format!("@{name}"), "READY=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(send("/nonexistent/pgward/notify", "READY=1").is_err());
    }
}
