//! Which addresses alert webhooks may reach. A webhook URL is written by whoever may edit a
//! Heartbeat or an Application, and the server posts to it from inside the cluster: without
//! a check, a tenant could make it call the cloud's metadata service, the Kubernetes API
//! or anything else only the server can reach (server-side request forgery).
//!
//! Loopback, link-local (where cloud metadata services live), unspecified, multicast and
//! reserved addresses are always refused; with `refuse_private`, so are the private,
//! shared and benchmarking ranges (RFC 1918, CGNAT, unique-local IPv6). `allowed` ranges
//! are reachable whatever they are, and `allow_all` turns the check off (tests, trusted
//! on-prem setups). The check runs on literal addresses in the URL and on every address a
//! host name resolves to, in the resolver the HTTP client connects with, so a name cannot
//! resolve to one address when checked and another when used.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Which webhook addresses are allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// No check at all (`--allow-private-webhooks`).
    pub allow_all: bool,
    /// Also refuse private, shared and unique-local ranges (`--refuse-private-webhooks`).
    pub refuse_private: bool,
    /// Ranges allowed whatever they are (`--webhook-allowed-cidrs`).
    pub allowed: Vec<IpNet>,
}

/// Why an address was refused, as a webhook delivery error reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "webhook address {addr} is {what}; it is refused unless --webhook-allowed-cidrs covers it or --allow-private-webhooks is set"
)]
pub struct Refused {
    /// The address.
    pub addr: IpAddr,
    /// What kind of address it is.
    pub what: &'static str,
}

impl AddressPolicy {
    /// `Ok` when a webhook may connect to `addr`.
    pub fn check(&self, addr: IpAddr) -> Result<(), Refused> {
        if self.allow_all {
            return Ok(());
        }
        let addr = addr.to_canonical();
        if self.allowed.iter().any(|net| net.contains(&addr)) {
            return Ok(());
        }
        match classify(addr) {
            Some((what, private)) if !private || self.refuse_private => Err(Refused { addr, what }),
            _ => Ok(()),
        }
    }
}

/// What kind of non-public address `addr` is, and whether it is merely private (refused
/// only with `refuse_private`); `None` for a public address.
fn classify(addr: IpAddr) -> Option<(&'static str, bool)> {
    match addr {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(a: Ipv4Addr) -> Option<(&'static str, bool)> {
    let [o1, o2, ..] = a.octets();
    let blocked = if a.is_loopback() {
        "loopback"
    } else if a.is_link_local() {
        "link-local (cloud metadata services live there)"
    } else if a.is_unspecified() || o1 == 0 {
        "unspecified"
    } else if a.is_multicast() || a.is_broadcast() || o1 >= 240 {
        "multicast, broadcast or reserved"
    } else if a.is_private() {
        return Some(("private (RFC 1918)", true));
    } else if o1 == 100 && (64..128).contains(&o2) {
        return Some(("shared address space (carrier-grade NAT)", true));
    } else if o1 == 198 && (o2 == 18 || o2 == 19) {
        return Some(("a benchmarking range", true));
    } else {
        return None;
    };
    Some((blocked, false))
}

fn classify_v6(a: Ipv6Addr) -> Option<(&'static str, bool)> {
    // An IPv4 address carried inside IPv6 (NAT64 64:ff9b::/96, 6to4 2002::/16) is judged
    // as that IPv4 address; IPv4-mapped ones arrive here already converted.
    let segments = a.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., a4, b4, c4, d4] = a.octets();
        return classify_v4(Ipv4Addr::new(a4, b4, c4, d4));
    }
    if segments[0] == 0x2002 {
        let [_, _, a4, b4, c4, d4, ..] = a.octets();
        return classify_v4(Ipv4Addr::new(a4, b4, c4, d4));
    }
    let blocked = if a.is_loopback() {
        "loopback"
    } else if a.is_unicast_link_local() {
        "link-local"
    } else if a.is_unspecified() {
        "unspecified"
    } else if a.is_multicast() {
        "multicast"
    } else if a.is_unique_local() {
        return Some(("unique-local (private IPv6)", true));
    } else {
        return None;
    };
    Some((blocked, false))
}

/// The host of `url` when it is a literal IP address (the HTTP client connects to those
/// without asking the resolver).
pub fn literal_host(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// A URL refused before anything is sent to it: its host is an address the policy refuses
/// whatever DNS says (a literal address, or `localhost`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "host {host} is {what}: alerts are not sent there unless --webhook-allowed-cidrs covers it or --allow-private-webhooks is set"
)]
pub struct RefusedHost {
    /// The URL's host as written (never its path or query: they may hold a secret).
    pub host: String,
    /// What kind of address it is.
    pub what: &'static str,
}

impl AddressPolicy {
    /// Checks the host of `url` as far as that needs no DNS, so that a definition whose
    /// every delivery would be refused is refused when it is loaded, not when its first
    /// alert is lost: a literal address is checked as a delivery would check it, and
    /// `localhost` (with the names under `.localhost`, which resolve to loopback, RFC
    /// 6761) as loopback. Any other host name passes here: what it resolves to can
    /// change, so it is checked at each delivery, by the resolver. A URL that does not
    /// parse passes too (the definition's own checks, or its delivery, say why).
    pub fn check_url(&self, url: &str) -> Result<(), RefusedHost> {
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return Ok(());
        };
        let Some(host) = parsed.host_str() else {
            return Ok(());
        };
        if let Some(ip) = literal_host(&parsed) {
            return self.check(ip).map_err(|r| RefusedHost {
                host: host.to_string(),
                what: r.what,
            });
        }
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if name == "localhost" || name.ends_with(".localhost") {
            // Either loopback address allowed is enough: the resolver keeps the allowed ones.
            let loopback = [
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ];
            if loopback.iter().all(|ip| self.check(*ip).is_err()) {
                return Err(RefusedHost {
                    host: host.to_string(),
                    what: "loopback (localhost)",
                });
            }
        }
        Ok(())
    }
}

/// A resolver that hands the HTTP client only addresses the policy allows; a name with
/// none left fails with [`Refused`].
#[derive(Debug, Clone)]
pub struct FilteringResolver {
    policy: Arc<AddressPolicy>,
}

impl FilteringResolver {
    /// A resolver enforcing `policy`.
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for FilteringResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = all
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(r) => {
                        refused.get_or_insert(r);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(r)) => Err(Box::new(r) as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &AddressPolicy, addr: &str) -> bool {
        policy.check(addr.parse().unwrap()).is_err()
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_allowed() {
        let default = AddressPolicy::default();
        for addr in [
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
        ] {
            assert!(refused(&default, addr), "{addr} should be refused");
        }
        for addr in [
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
            "8.8.8.8",
            "2a00:1450::1",
        ] {
            assert!(
                !refused(&default, addr),
                "{addr} should be allowed by default"
            );
        }
        let strict = AddressPolicy {
            refuse_private: true,
            ..Default::default()
        };
        for addr in [
            "10.0.0.1",
            "172.31.255.1",
            "192.168.1.1",
            "100.127.0.1",
            "198.18.0.1",
            "fd12::1",
            "::ffff:10.1.1.1",
        ] {
            assert!(
                refused(&strict, addr),
                "{addr} should be refused as private"
            );
        }
        for addr in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2a00:1450::1"] {
            assert!(!refused(&strict, addr), "{addr} is public");
        }
    }

    #[test]
    fn allowed_ranges_and_allow_all_override_the_rest() {
        let policy = AddressPolicy {
            refuse_private: true,
            allowed: vec![
                "10.20.0.0/16".parse().unwrap(),
                "127.0.0.1/32".parse().unwrap(),
            ],
            ..Default::default()
        };
        assert!(!refused(&policy, "10.20.3.4"));
        assert!(refused(&policy, "10.21.3.4"));
        assert!(!refused(&policy, "127.0.0.1"));
        assert!(refused(&policy, "127.0.0.2"));
        let all = AddressPolicy {
            allow_all: true,
            ..Default::default()
        };
        assert!(!refused(&all, "169.254.169.254"));
        let msg = AddressPolicy::default()
            .check("169.254.169.254".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("link-local") && msg.contains("--allow-private-webhooks"),
            "{msg}"
        );
    }

    #[test]
    fn urls_whose_host_needs_no_dns_are_checked_when_defined() {
        let default = AddressPolicy::default();
        let refused = |p: &AddressPolicy, u: &str| p.check_url(u).err();
        for (url, what) in [
            ("http://127.0.0.1:9093", "loopback"),
            ("http://[::1]:8080/hook", "loopback"),
            ("https://169.254.169.254/latest/meta-data", "link-local"),
            ("http://0.0.0.0/", "unspecified"),
            ("http://localhost:9093", "loopback (localhost)"),
            ("http://LocalHost.:9093", "loopback (localhost)"),
            ("http://am.localhost/", "loopback (localhost)"),
            ("http://2130706433/x", "loopback"),
        ] {
            let r = refused(&default, url).unwrap_or_else(|| panic!("{url} passed"));
            assert!(r.what.starts_with(what), "{url}: {r:?}");
        }
        // The message names the host, never the path, and the flags that allow it.
        let msg = refused(&default, "http://127.0.0.1:8081/services/T0/s3cr3t")
            .unwrap()
            .to_string();
        assert!(
            msg.starts_with("host 127.0.0.1 is loopback")
                && msg.contains("--webhook-allowed-cidrs")
                && msg.contains("--allow-private-webhooks")
                && !msg.contains("s3cr3t"),
            "{msg}"
        );
        // Names that need DNS, public and private literals pass (by default).
        for url in [
            "http://alertmanager.monitoring:9093",
            "https://hooks.slack.com/services/x",
            "http://10.0.0.5:9093",
            "http://localhost-proxy.example.com/",
            "not a url",
        ] {
            assert_eq!(refused(&default, url), None, "{url}");
        }
        let strict = AddressPolicy {
            refuse_private: true,
            ..Default::default()
        };
        assert_eq!(
            refused(&strict, "http://10.0.0.5:9093").map(|r| r.what),
            Some("private (RFC 1918)")
        );
        let all = AddressPolicy {
            allow_all: true,
            ..Default::default()
        };
        assert_eq!(refused(&all, "http://localhost:9093"), None);
        let cidr = AddressPolicy {
            allowed: vec!["127.0.0.0/8".parse().unwrap()],
            ..Default::default()
        };
        assert_eq!(refused(&cidr, "http://127.0.0.1:9093"), None);
        assert_eq!(refused(&cidr, "http://localhost:9093"), None);
        assert!(refused(&cidr, "http://[::1]:9093").is_some());
    }

    #[test]
    fn literal_hosts_are_found_in_urls() {
        let host = |u: &str| literal_host(&reqwest::Url::parse(u).unwrap());
        assert_eq!(
            host("http://127.0.0.1:8080/x"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(host("http://[::1]/x"), Some("::1".parse().unwrap()));
        assert_eq!(
            host("http://2130706433/x"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(host("https://hooks.example.com/x"), None);
    }
}
