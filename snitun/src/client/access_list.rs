//! Which callers may reach the endpoint: an allow-list or a block-list of
//! IP networks.
//!
//! The check runs on the caller address the server put in the NEW frame,
//! before the connector is called; a refused caller's channel is closed at
//! once (CLOSE is sent). An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is
//! matched as the IPv4 address it carries, on both sides of the comparison.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};

use crate::error::{Error, Result};

/// How the networks of an [`AccessList`] are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    /// Every caller may connect; the list is ignored.
    AllowAll,
    /// Only callers inside one of the networks may connect (an empty list
    /// refuses everyone, as the reference's `ALLOW` action does).
    Allow,
    /// Callers inside one of the networks are refused, everyone else may
    /// connect.
    Block,
}

/// A per-caller policy: allow everyone, only some networks, or everyone but
/// some networks.
///
/// ```
/// use snitun::client::AccessList;
///
/// let list = AccessList::parse_allow(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]).unwrap();
/// assert!(list.permits("10.1.2.3".parse().unwrap()));
/// assert!(list.permits("::ffff:10.1.2.3".parse().unwrap()));
/// assert!(!list.permits("192.0.2.8".parse().unwrap()));
///
/// let list: AccessList = "block:203.0.113.0/24".parse().unwrap();
/// assert!(!list.permits("203.0.113.9".parse().unwrap()));
/// assert!(list.permits("198.51.100.1".parse().unwrap()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessList {
    mode: AccessMode,
    networks: Vec<IpNet>,
}

impl Default for AccessList {
    /// [`AccessList::allow_all`].
    fn default() -> Self {
        AccessList::allow_all()
    }
}

impl AccessList {
    /// Every caller may connect (the default).
    pub fn allow_all() -> AccessList {
        AccessList {
            mode: AccessMode::AllowAll,
            networks: Vec::new(),
        }
    }

    /// Only callers inside one of `networks` may connect. An empty list
    /// refuses every caller.
    pub fn allow(networks: Vec<IpNet>) -> AccessList {
        AccessList::with(AccessMode::Allow, networks)
    }

    /// Callers inside one of `networks` are refused; everyone else may
    /// connect.
    pub fn block(networks: Vec<IpNet>) -> AccessList {
        AccessList::with(AccessMode::Block, networks)
    }

    /// [`allow`](Self::allow) with networks parsed by [`parse_network`].
    pub fn parse_allow<I, S>(networks: I) -> Result<AccessList>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Ok(AccessList::allow(parse_networks(networks)?))
    }

    /// [`block`](Self::block) with networks parsed by [`parse_network`].
    pub fn parse_block<I, S>(networks: I) -> Result<AccessList>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Ok(AccessList::block(parse_networks(networks)?))
    }

    fn with(mode: AccessMode, networks: Vec<IpNet>) -> AccessList {
        let mut list = AccessList {
            mode,
            networks: Vec::with_capacity(networks.len()),
        };
        for network in networks {
            list.add(network);
        }
        list
    }

    /// Add a network (ignored by an allow-all list; a duplicate is kept
    /// once).
    pub fn add(&mut self, network: IpNet) {
        let network = canonical_network(network);
        if !self.networks.contains(&network) {
            self.networks.push(network);
        }
    }

    /// How the networks are used.
    pub fn mode(&self) -> AccessMode {
        self.mode
    }

    /// The networks of the list (IPv4-mapped IPv6 networks are stored as
    /// IPv4).
    pub fn networks(&self) -> &[IpNet] {
        &self.networks
    }

    /// Whether a caller at `ip` may connect.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let matched = || self.networks.iter().any(|net| net.contains(&ip));
        match self.mode {
            AccessMode::AllowAll => true,
            AccessMode::Allow => matched(),
            AccessMode::Block => !matched(),
        }
    }
}

impl fmt::Display for AccessList {
    /// The form [`FromStr`] reads: `allow-all`, `allow:NET,NET,...` or
    /// `block:NET,NET,...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.mode {
            AccessMode::AllowAll => return f.write_str("allow-all"),
            AccessMode::Allow => "allow:",
            AccessMode::Block => "block:",
        };
        f.write_str(prefix)?;
        for (i, network) in self.networks.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{network}")?;
        }
        Ok(())
    }
}

impl FromStr for AccessList {
    type Err = Error;

    /// Parse `allow-all` (or `all`), `allow:NET,NET,...` or
    /// `block:NET,NET,...`; each NET as [`parse_network`] reads it. Spaces
    /// around the items are ignored.
    fn from_str(text: &str) -> Result<AccessList> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("allow-all") || text.eq_ignore_ascii_case("all") {
            return Ok(AccessList::allow_all());
        }
        let Some((mode, list)) = text.split_once(':') else {
            return Err(Error::Config(format!(
                "access list {text:?}: expected allow-all, allow:NETWORKS or block:NETWORKS"
            )));
        };
        let items = list.split(',').map(str::trim).filter(|s| !s.is_empty());
        match mode.trim().to_ascii_lowercase().as_str() {
            "allow" => AccessList::parse_allow(items),
            "block" => AccessList::parse_block(items),
            other => Err(Error::Config(format!(
                "access list mode {other:?}: expected allow or block"
            ))),
        }
    }
}

/// Parse one network: CIDR (`10.0.0.0/8`, `2001:db8::/32`; host bits are
/// cleared, as the reference's `strict=False` does) or a single address
/// (`192.0.2.7` is `/32`, `::1` is `/128`). IPv4-mapped IPv6 networks become
/// IPv4 networks.
pub fn parse_network(text: &str) -> Result<IpNet> {
    let text = text.trim();
    let network = if text.contains('/') {
        text.parse::<IpNet>()
            .map(|net| net.trunc())
            .map_err(|e| Error::Config(format!("network {text:?}: {e}")))?
    } else {
        text.parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|e| Error::Config(format!("address {text:?}: {e}")))?
    };
    Ok(canonical_network(network))
}

/// Parse several networks with [`parse_network`]; the first bad one is the
/// error.
pub fn parse_networks<I, S>(networks: I) -> Result<Vec<IpNet>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    networks
        .into_iter()
        .map(|s| parse_network(s.as_ref()))
        .collect()
}

/// `::ffff:a.b.c.d/p` (p >= 96) as `a.b.c.d/(p - 96)`; anything else as is.
fn canonical_network(network: IpNet) -> IpNet {
    if let IpNet::V6(net) = network
        && net.prefix_len() >= 96
        && let Some(v4) = net.addr().to_ipv4_mapped()
        && let Ok(mapped) = Ipv4Net::new(v4, net.prefix_len() - 96)
    {
        return IpNet::V4(mapped.trunc());
    }
    network
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn allow_all_permits_everyone() {
        let list = AccessList::allow_all();
        assert!(list.permits(ip("192.0.2.1")));
        assert!(list.permits(ip("2001:db8::1")));
        assert_eq!(AccessList::default(), list);
    }

    #[test]
    fn allow_list_ipv4_and_ipv6() {
        let list = AccessList::parse_allow(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]).unwrap();
        assert!(list.permits(ip("10.255.0.1")));
        assert!(list.permits(ip("192.0.2.7")));
        assert!(!list.permits(ip("192.0.2.8")));
        assert!(list.permits(ip("2001:db8:1::5")));
        assert!(!list.permits(ip("2001:db9::5")));
        // IPv4-mapped callers match as IPv4.
        assert!(list.permits(ip("::ffff:10.1.1.1")));
        assert!(!list.permits(ip("::ffff:11.1.1.1")));
    }

    #[test]
    fn empty_allow_list_refuses_everyone() {
        let list = AccessList::allow(Vec::new());
        assert!(!list.permits(ip("127.0.0.1")));
        assert!(!list.permits(ip("::1")));
    }

    #[test]
    fn block_list() {
        let list = AccessList::parse_block(["203.0.113.0/24", "2001:db8::1"]).unwrap();
        assert!(!list.permits(ip("203.0.113.200")));
        assert!(!list.permits(ip("::ffff:203.0.113.1")));
        assert!(!list.permits(ip("2001:db8::1")));
        assert!(list.permits(ip("2001:db8::2")));
        assert!(list.permits(ip("198.51.100.1")));
        assert!(AccessList::block(Vec::new()).permits(ip("198.51.100.1")));
    }

    #[test]
    fn parsing() {
        assert_eq!(
            parse_network("10.1.2.3/8").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_network(" 192.0.2.1 ").unwrap(),
            "192.0.2.1/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_network("::1").unwrap(),
            "::1/128".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_network("::ffff:10.0.0.0/104").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert!(matches!(
            parse_network("10.0.0.0/33"),
            Err(Error::Config(_))
        ));
        assert!(matches!(parse_network("nope"), Err(Error::Config(_))));
        assert!(AccessList::parse_allow(["10.0.0.0/8", "x"]).is_err());
    }

    #[test]
    fn from_str_and_display_round_trip() {
        for text in [
            "allow-all",
            "allow:10.0.0.0/8,2001:db8::/32",
            "block:192.0.2.1/32",
        ] {
            let list: AccessList = text.parse().unwrap();
            assert_eq!(list.to_string(), text);
        }
        let list: AccessList = "Allow: 10.0.0.1 , ::1".parse().unwrap();
        assert_eq!(list.mode(), AccessMode::Allow);
        assert_eq!(list.networks().len(), 2);
        assert!("deny:10.0.0.0/8".parse::<AccessList>().is_err());
        assert!("10.0.0.0/8".parse::<AccessList>().is_err());
    }
}
