//! systemd readiness (`Type=notify`): `READY=1` once every shard is serving,
//! `STOPPING=1` when the stop begins, sent to `$NOTIFY_SOCKET` when systemd set it.
//! The protocol is one datagram on a Unix socket, which std's `UnixDatagram` sends;
//! a crate would add a dependency for these few lines.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) to systemd; does nothing outside a `Type=notify`
/// unit. A failure is logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|s| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket: the name after '@'.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                s.send_to_addr(state.as_bytes(), &addr)
            }
            None => s.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(
            "telling systemd {state} through {}: {e}",
            path.to_string_lossy()
        );
    }
}
