//! systemd readiness (`Type=notify`): `READY=1` once every shard is serving,
//! `STOPPING=1` when the stop begins, and with `WatchdogSec=` `WATCHDOG=1` at half the
//! watchdog period while every shard is looping (a stuck shard stops the pings, and
//! systemd restarts the server), sent to `$NOTIFY_SOCKET` when systemd set it.
//! The protocol is one datagram on a Unix socket, which std's `UnixDatagram` sends;
//! a crate would add a dependency for these few lines.

use std::os::unix::net::UnixDatagram;

/// The interval to send `WATCHDOG=1` at: half of `$WATCHDOG_USEC` when systemd set it
/// for this process (`$WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<std::time::Duration> {
    parse_watchdog(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, own: u32) -> Option<std::time::Duration> {
    let usec: u64 = usec?.parse().ok().filter(|&u| u > 0)?;
    if pid.is_some_and(|p| p.parse::<u32>().ok() != Some(own)) {
        return None;
    }
    Some(std::time::Duration::from_micros(usec / 2))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_watchdog_is_pinged_at_half_its_period_for_this_process_only() {
        assert_eq!(
            parse_watchdog(Some("10000000"), None, 7),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_watchdog(Some("10000000"), Some("7"), 7),
            Some(Duration::from_secs(5))
        );
        assert_eq!(parse_watchdog(Some("10000000"), Some("8"), 7), None);
        assert_eq!(parse_watchdog(Some("0"), None, 7), None);
        assert_eq!(parse_watchdog(Some("x"), None, 7), None);
        assert_eq!(parse_watchdog(None, None, 7), None);
    }
}
