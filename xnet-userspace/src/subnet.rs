//! IPv4 subnets and MAC addresses as the config and the maps use them.

use std::{fmt, net::Ipv4Addr, str::FromStr};

/// An IPv4 network: an address with no host bits set and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// A network from an address and prefix; `None` if the prefix is over 32 or host bits are set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        let net = Self { addr, prefix };
        (prefix <= 32 && u32::from(addr) & !net.mask() == 0).then_some(net)
    }
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
    pub fn mask(&self) -> u32 {
        Self::mask_of(self.prefix)
    }
    /// The netmask of a prefix length (0..=32) as an integer.
    pub fn mask_of(prefix: u8) -> u32 {
        if prefix == 0 { 0 } else { u32::MAX << (32 - prefix.min(32)) }
    }
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }
    pub fn contains_addr(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }
    /// Whether `other` lies entirely inside `self`.
    pub fn contains(&self, other: &Ipv4Net) -> bool {
        other.prefix >= self.prefix && self.contains_addr(other.addr)
    }
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other) || other.contains(self)
    }
    /// The first usable address: what a container bridge holds (10.244.1.1 in 10.244.1.0/24).
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + u32::from(self.prefix < 31))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a string is not an [`Ipv4Net`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetParseError {
    #[error("`{0}` is not an IPv4 network in CIDR form such as 10.244.0.0/16")]
    Syntax(String),
    #[error("`{given}` has host bits set; the network is {network}")]
    HostBits { given: String, network: Ipv4Net },
}

impl FromStr for Ipv4Net {
    type Err = NetParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || NetParseError::Syntax(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        if prefix > 32 {
            return Err(syntax());
        }
        Ipv4Net::new(addr, prefix).ok_or_else(|| {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
            NetParseError::HostBits {
                given: s.to_string(),
                network: Ipv4Net { addr: Ipv4Addr::from(u32::from(addr) & mask), prefix },
            }
        })
    }
}

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The default VTEP MAC of a host: locally administered, unicast, derived from its public IP
    /// (02:00 followed by the four address bytes), so every host gets a distinct one without
    /// configuration.
    pub fn from_ipv4(ip: Ipv4Addr) -> Self {
        let o = ip.octets();
        Mac([0x02, 0x00, o[0], o[1], o[2], o[3]])
    }
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || format!("`{s}` is not a MAC address such as 02:00:c6:12:00:01");
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Mac(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_relates_networks() {
        let n: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let s: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        assert!(n.contains(&s) && !s.contains(&n) && n.overlaps(&s));
        assert!(!s.overlaps(&"10.244.2.0/24".parse().unwrap()));
        assert_eq!(s.first_host(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(s.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(
            "10.244.1.0/16".parse::<Ipv4Net>(),
            Err(NetParseError::HostBits {
                given: "10.244.1.0/16".into(),
                network: "10.244.0.0/16".parse().unwrap()
            })
        );
        for bad in ["10.244.0.0", "10.244.0.0/33", "10.244.0/16", "x/8", ""] {
            assert!(matches!(bad.parse::<Ipv4Net>(), Err(NetParseError::Syntax(_))), "{bad}");
        }
    }

    #[test]
    fn parses_macs() {
        let m: Mac = "02:00:c6:12:00:01".parse().unwrap();
        assert_eq!(m.0, [2, 0, 0xc6, 0x12, 0, 1]);
        assert_eq!(m.to_string(), "02:00:c6:12:00:01");
        assert_eq!(Mac::from_ipv4(Ipv4Addr::new(198, 18, 0, 1)), m);
        assert!(!"01:00:5e:00:00:01".parse::<Mac>().unwrap().is_unicast());
        for bad in ["02:00:c6:12:00", "02:00:c6:12:00:01:02", "02-00-c6-12-00-01", "zz:00:00:00:00:00"] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}
