//! Source allowlist (`--allow CIDR`): which peers may send heartbeats. Parsed once at
//! start; checked per datagram (on the raw socket address the receive gave, so no
//! conversion when the list is empty) and per TCP connection at accept.
//!
//! An IPv4 peer reaching an IPv6 socket appears as `::ffff:a.b.c.d`; it is matched
//! against the IPv4 entries, so one list serves both socket families.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cidr {
    V4 { net: u32, prefix: u8 },
    V6 { net: u128, prefix: u8 },
}

impl Cidr {
    /// `10.0.0.0/8`, `fd00::/8`, or a bare address (a single host). Host bits set
    /// below the prefix (`10.1.2.3/8`) are refused: they usually mean a typo.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let ip: IpAddr = addr.trim().parse().map_err(|_| {
            format!("`{text}`: not an IPv4 or IPv6 address (e.g. 10.0.0.0/8, fd00::/8)")
        })?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(v) if v <= max => v,
                _ => return Err(format!("`{text}`: the prefix length must be 0 to {max}")),
            },
        };
        let cidr = match ip {
            IpAddr::V4(a) => Cidr::V4 {
                net: u32::from(a),
                prefix,
            },
            IpAddr::V6(a) => Cidr::V6 {
                net: u128::from(a),
                prefix,
            },
        };
        let host_bits = match cidr {
            Cidr::V4 { net, prefix } => net & !Self::mask4(prefix) != 0,
            Cidr::V6 { net, prefix } => net & !Self::mask6(prefix) != 0,
        };
        if host_bits {
            return Err(format!(
                "`{text}`: address bits are set beyond the /{prefix} prefix (did you mean {}?)",
                cidr.network()
            ));
        }
        Ok(cidr)
    }

    fn mask4(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0)
    }
    fn mask6(prefix: u8) -> u128 {
        u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0)
    }

    /// The network with the host bits cleared, as `addr/prefix`.
    pub fn network(&self) -> String {
        match *self {
            Cidr::V4 { net, prefix } => {
                format!("{}/{prefix}", Ipv4Addr::from(net & Self::mask4(prefix)))
            }
            Cidr::V6 { net, prefix } => {
                format!("{}/{prefix}", Ipv6Addr::from(net & Self::mask6(prefix)))
            }
        }
    }
}

/// The networks heartbeats may come from; empty = everyone. Kept as (network, mask)
/// pairs per family, so a check is a few integer compares with no conversion.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    cidrs: Vec<Cidr>,
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

/// Linux `AF_INET` and `AF_INET6` (the core names no OS crate).
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

impl Allowlist {
    pub fn new(cidrs: Vec<Cidr>) -> Allowlist {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for c in &cidrs {
            match *c {
                Cidr::V4 { net, prefix } => {
                    let m = Cidr::mask4(prefix);
                    v4.push((net & m, m));
                }
                Cidr::V6 { net, prefix } => {
                    let m = Cidr::mask6(prefix);
                    v6.push((net & m, m));
                }
            }
        }
        Allowlist { cidrs, v4, v6 }
    }

    fn allows_v4(&self, a: u32) -> bool {
        self.v4.iter().any(|&(net, m)| a & m == net)
    }
    fn allows_v6(&self, a: u128) -> bool {
        // An IPv4 peer of an IPv6 socket: ::ffff:a.b.c.d.
        if a >> 32 == 0xffff {
            return self.allows_v4(a as u32);
        }
        self.v6.iter().any(|&(net, m)| a & m == net)
    }
    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty()
    }
    pub fn cidrs(&self) -> &[Cidr] {
        &self.cidrs
    }

    /// Whether `ip` may send (always, with an empty list).
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.cidrs.is_empty()
            || match ip {
                IpAddr::V4(a) => self.allows_v4(u32::from(a)),
                IpAddr::V6(a) => self.allows_v6(u128::from(a)),
            }
    }

    /// Whether the peer of a raw `sockaddr_in` / `sockaddr_in6` (as the kernel wrote
    /// it: family in native byte order, address in network order) may send. A name
    /// that is neither is refused (never seen from a UDP or TCP socket).
    pub fn allows_sockaddr(&self, name: &[u8]) -> bool {
        if self.cidrs.is_empty() {
            return true;
        }
        let family = match name.get(0..2) {
            Some(f) => u16::from_ne_bytes([f[0], f[1]]),
            None => return false,
        };
        match (family, name.get(4..8), name.get(8..24)) {
            (AF_INET, Some(a), _) => self.allows_v4(u32::from_be_bytes([a[0], a[1], a[2], a[3]])),
            (AF_INET6, _, Some(a)) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(a);
                self.allows_v6(u128::from_be_bytes(b))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Allowlist {
        Allowlist::new(items.iter().map(|s| Cidr::parse(s).unwrap()).collect())
    }

    #[test]
    fn networks_hosts_and_both_families() {
        let l = list(&["10.0.0.0/8", "192.168.1.7", "fd00::/8", "0.0.0.0/0"]);
        assert!(l.allows("10.200.3.4".parse().unwrap()));
        let only6 = list(&["fd00::/8"]);
        assert!(only6.allows("fd12::1".parse().unwrap()));
        assert!(!only6.allows("fe80::1".parse().unwrap()));
        assert!(!only6.allows("10.0.0.1".parse().unwrap()));
        let hosts = list(&["192.168.1.7", "::1"]);
        assert!(hosts.allows("192.168.1.7".parse().unwrap()));
        assert!(!hosts.allows("192.168.1.8".parse().unwrap()));
        assert!(hosts.allows("::1".parse().unwrap()));
        // An IPv4 peer of an IPv6 socket is matched as IPv4.
        let v4 = list(&["127.0.0.0/8"]);
        assert!(v4.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!v4.allows("::ffff:10.0.0.1".parse().unwrap()));
        assert!(Allowlist::default().allows("203.0.113.9".parse().unwrap()));
        assert!(list(&["0.0.0.0/0"]).allows("203.0.113.9".parse().unwrap()));
        assert!(list(&["::/0"]).allows("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn bad_entries_say_why() {
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(Cidr::parse("fd00::/129").unwrap_err().contains("0 to 128"));
        assert!(Cidr::parse("example.com")
            .unwrap_err()
            .contains("not an IPv4"));
        let e = Cidr::parse("10.1.2.3/8").unwrap_err();
        assert!(e.contains("did you mean 10.0.0.0/8"), "{e}");
    }

    #[test]
    fn raw_socket_addresses() {
        let l = list(&["127.0.0.0/8", "::1/128"]);
        let mut v4 = [0u8; 16];
        v4[..2].copy_from_slice(&AF_INET.to_ne_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 9]);
        assert!(l.allows_sockaddr(&v4));
        v4[4] = 10;
        assert!(!l.allows_sockaddr(&v4));
        let mut v6 = [0u8; 28];
        v6[..2].copy_from_slice(&AF_INET6.to_ne_bytes());
        v6[23] = 1;
        assert!(l.allows_sockaddr(&v6));
        v6[23] = 2;
        assert!(!l.allows_sockaddr(&v6));
        assert!(!l.allows_sockaddr(&[0u8; 3]), "too short");
        assert!(
            Allowlist::default().allows_sockaddr(&[]),
            "empty list: anyone"
        );
    }
}
