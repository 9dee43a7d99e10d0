//! IPv4 networks as xnet writes them: CIDR text without host bits (`10.244.1.0/24`), held in the
//! `ipnetwork` crate's [`Ipv4Network`].

use std::net::Ipv4Addr;

pub use ipnetwork::Ipv4Network;

/// Why a string is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not an IPv4 network in CIDR form such as 10.244.0.0/16")]
    Syntax(String),
    #[error("`{given}` has host bits set; the network is {network}")]
    HostBits { given: String, network: Ipv4Network },
}

/// Parses `10.244.1.0/24`: the prefix length is required and host bits are refused.
pub fn parse(s: &str) -> Result<Ipv4Network, CidrError> {
    let syntax = || CidrError::Syntax(s.to_string());
    let (addr, prefix) = s.split_once('/').ok_or_else(syntax)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
    let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
    let net = Ipv4Network::new(addr, prefix).map_err(|_| syntax())?;
    if net.network() != addr {
        let network = Ipv4Network::new(net.network(), prefix).map_err(|_| syntax())?;
        return Err(CidrError::HostBits { given: s.to_string(), network });
    }
    Ok(net)
}

/// The network of `prefix` bits at `addr`; `None` if the prefix is over 32 or host bits are set.
pub fn network(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Network> {
    Ipv4Network::new(addr, prefix).ok().filter(|n| n.network() == addr)
}

/// The network of `prefix` bits that `addr` lies in.
pub fn network_of(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Network> {
    let net = Ipv4Network::new(addr, prefix).ok()?;
    Ipv4Network::new(net.network(), prefix).ok()
}

/// The netmask of a prefix length (0..=32) as an integer.
pub fn mask(prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - prefix.min(32)) }
}

/// The first usable address: what a container bridge holds (10.244.1.1 in 10.244.1.0/24).
pub fn first_host(net: &Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + u32::from(net.prefix() < 31))
}

/// The first and last address of `net`, as integers.
pub fn range(net: &Ipv4Network) -> (u32, u32) {
    let start = u32::from(net.network());
    (start, start | !mask(net.prefix()))
}

/// Whether `inner` lies entirely inside `outer`.
pub fn contains(outer: &Ipv4Network, inner: &Ipv4Network) -> bool {
    inner.prefix() >= outer.prefix() && outer.contains(inner.network())
}

/// Whether two networks share an address.
pub fn overlaps(a: &Ipv4Network, b: &Ipv4Network) -> bool {
    contains(a, b) || contains(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_relates_networks() {
        let n = parse("10.244.0.0/16").unwrap();
        let s = parse("10.244.1.0/24").unwrap();
        assert!(contains(&n, &s) && !contains(&s, &n) && overlaps(&n, &s) && overlaps(&s, &n));
        assert!(!overlaps(&s, &parse("10.244.2.0/24").unwrap()));
        assert_eq!(first_host(&s), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(s.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(
            range(&s),
            (u32::from(Ipv4Addr::new(10, 244, 1, 0)), u32::from(Ipv4Addr::new(10, 244, 1, 255)))
        );
        assert_eq!(
            parse("10.244.1.0/16"),
            Err(CidrError::HostBits {
                given: "10.244.1.0/16".into(),
                network: parse("10.244.0.0/16").unwrap()
            })
        );
        for bad in ["10.244.0.0", "10.244.0.0/33", "10.244.0/16", "x/8", ""] {
            assert!(matches!(parse(bad), Err(CidrError::Syntax(_))), "{bad}");
        }
        assert_eq!(network(Ipv4Addr::new(10, 244, 1, 5), 24), None);
        assert_eq!(network_of(Ipv4Addr::new(10, 244, 1, 5), 24), Some(s));
        assert_eq!((mask(0), mask(24), mask(32)), (0, 0xffff_ff00, u32::MAX));
    }
}
