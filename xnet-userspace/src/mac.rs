//! MAC addresses as the config, the leases and the maps write them.
//!
//! Our own small type rather than the `macaddr` crate: that crate prints upper case
//! (`AB:0D:EF:12:34:56`), while flannel's leases, iproute2 and bpftool all print lower case, and
//! the leases xnet writes must read exactly like flanneld's.

use std::{fmt, net::Ipv4Addr, str::FromStr};

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
