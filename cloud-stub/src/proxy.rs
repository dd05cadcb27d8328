//! Trusted proxies: which peers may tell the cloud the client's address in
//! `X-Forwarded-For`. With none configured (the default) the source address of a request
//! (for login throttling, failed-authentication budgets, registration budgets and the audit
//! log) is always the TCP peer, and the header is ignored. With a list of CIDRs, a request
//! whose TCP peer is in the list takes the right-most hop of `X-Forwarded-For` that is not
//! in the list (each proxy appends the address it saw, so hops left of the first untrusted
//! one may be forged by the client).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderMap;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0:?} is not an IP address or CIDR (such as 10.0.0.0/8 or fd00::/8)")]
    Invalid(String),
}

/// One network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = ProxyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ProxyError::Invalid(s.to_owned());
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let addr = canonical(ip.parse::<IpAddr>().map_err(|_| bad())?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as a dual-stack socket reports IPv4
/// peers) compares as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The configured trusted proxies (empty by default: trust no header).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<Cidr>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<Cidr>) -> Self {
        Self { nets }
    }

    /// Parses a list such as `["10.0.0.0/8", "192.0.2.7"]`.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Self, ProxyError> {
        list.iter()
            .map(|s| s.as_ref().parse())
            .collect::<Result<_, _>>()
            .map(Self::new)
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    /// The client's address for a request from `peer` with `headers`: `peer` unless it is a
    /// trusted proxy, else the right-most untrusted `X-Forwarded-For` hop (the left-most hop
    /// when all are trusted; the nearest trusted hop when the next one is not an address).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>().map(canonical) else {
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// The source address of `req` under `trusted` (see [`TrustedProxies::client`]), or `None`
/// when the request has no TCP peer (in-process calls).
pub fn source(trusted: &TrustedProxies, req: &Request) -> Option<String> {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>()?.0.ip();
    Some(trusted.client(peer, req.headers()).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let n: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains(ip("10.1.2.3")));
        assert!(n.contains(ip("::ffff:10.1.2.3")));
        assert!(!n.contains(ip("11.0.0.1")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0/8", "::/129", "1.2.3.4/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let t = TrustedProxies::default();
        assert_eq!(
            t.client(ip("127.0.0.1"), &xff("203.0.113.9")),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn an_untrusted_peer_cannot_spoof_its_address() {
        let t = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        assert_eq!(
            t.client(ip("198.51.100.1"), &xff("203.0.113.9")),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_wins() {
        let t = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        // The client forged the first hop; the proxy chain appended the real one and itself.
        let h = xff("1.1.1.1, 203.0.113.9, 10.0.0.2");
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // Several header lines are one list.
        let mut h = xff("1.1.1.1");
        h.append("x-forwarded-for", "203.0.113.9".parse().unwrap());
        assert_eq!(t.client(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        // All trusted: the left-most; garbage stops the walk at the nearest trusted hop.
        assert_eq!(
            t.client(ip("10.0.0.1"), &xff("10.9.9.9, 10.0.0.2")),
            ip("10.9.9.9")
        );
        assert_eq!(
            t.client(ip("10.0.0.1"), &xff("junk, 10.0.0.2")),
            ip("10.0.0.2")
        );
        assert_eq!(t.client(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
    }
}
