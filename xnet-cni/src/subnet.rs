//! The agent's subnet file (flannel's subnet.env): `XNET_NETWORK=10.244.0.0/16`,
//! `XNET_SUBNET=10.244.1.1/24` (the host's first address with the subnet's prefix), `XNET_MTU=1450`,
//! `XNET_IPMASQ=false`, and the same under `FLANNEL_*`. The `XNET_` name wins where both are set,
//! so a file written by flannel itself works too.

use std::{io, path::Path};

use ipnetwork::Ipv4Network;

use crate::error::{CniError, INVALID_CONFIG, IO_FAILURE, TRY_AGAIN_LATER};

/// What the plugin needs from the subnet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The whole overlay network, e.g. 10.244.0.0/16.
    pub network: Ipv4Network,
    /// This host's subnet as a network, e.g. 10.244.1.0/24.
    pub subnet: Ipv4Network,
    pub mtu: u32,
    /// Whether the agent masquerades traffic leaving the overlay itself.
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// The bridge's address: the subnet's first address (the agent's XNET_SUBNET address).
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }
}

/// Reads and parses the subnet file at `path`.
pub fn load(path: &Path) -> Result<SubnetEnv, CniError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(missing(path)),
        Err(e) => Err(CniError::new(IO_FAILURE, format!("cannot read subnet file {}: {e}", path.display()))),
    }
}

/// The error for a subnet file that does not exist (yet).
pub fn missing(path: &Path) -> CniError {
    CniError::new(
        TRY_AGAIN_LATER,
        format!("subnet file {} does not exist yet: is the xnet agent running?", path.display()),
    )
    .with_details(
        "the xnet agent writes it once it has this host's subnet; set \"subnetFile\" in the network \
         config if the agent writes it elsewhere (its subnet_file setting)",
    )
}

/// Parses the text of a subnet file (read from `path`, named in errors).
pub fn parse(text: &str, path: &Path) -> Result<SubnetEnv, CniError> {
    let invalid =
        |what: String| CniError::new(INVALID_CONFIG, format!("subnet file {}: {what}", path.display()));
    // Per key: (XNET_ value, FLANNEL_ value).
    let mut values: [(Option<&str>, Option<&str>); 4] = Default::default();
    const KEYS: [&str; 4] = ["NETWORK", "SUBNET", "MTU", "IPMASQ"];
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let (key, value) = (key.trim(), value.trim().trim_matches('"'));
        for (i, name) in KEYS.iter().enumerate() {
            if key.strip_prefix("XNET_") == Some(name) {
                values[i].0 = Some(value);
            } else if key.strip_prefix("FLANNEL_") == Some(name) {
                values[i].1 = Some(value);
            }
        }
    }
    let missing: Vec<String> = KEYS
        .iter()
        .zip(&values)
        .filter(|(_, v)| v.0.is_none() && v.1.is_none())
        .map(|(k, _)| format!("XNET_{k}"))
        .collect();
    if !missing.is_empty() {
        return Err(invalid(format!("{} missing", missing.join(", "))));
    }
    let get = |i: usize| values[i].0.or(values[i].1).unwrap_or_default();

    let cidr = |key: &str, value: &str| -> Result<Ipv4Network, CniError> {
        let net: Ipv4Network =
            value.parse().map_err(|e| invalid(format!("{key}={value} is not an IPv4 network ({e})")))?;
        // The network the address lies in: 10.244.1.1/24 -> 10.244.1.0/24.
        Ipv4Network::new(net.network(), net.prefix()).map_err(|e| invalid(format!("{key}={value}: {e}")))
    };
    let network = cidr("XNET_NETWORK", get(0))?;
    let subnet = cidr("XNET_SUBNET", get(1))?;
    if !(network.contains(subnet.network()) && subnet.prefix() >= network.prefix()) {
        return Err(invalid(format!("XNET_SUBNET {subnet} lies outside XNET_NETWORK {network}")));
    }
    if subnet.prefix() > 30 {
        return Err(invalid(format!(
            "XNET_SUBNET {subnet} has no room for pods (a /30 or larger is needed)"
        )));
    }
    let mtu: u32 = get(2).parse().map_err(|_| invalid(format!("XNET_MTU={} is not a number", get(2))))?;
    if !(68..=65535).contains(&mtu) {
        return Err(invalid(format!("XNET_MTU={mtu} is out of range (68 to 65535)")));
    }
    let ipmasq = match get(3) {
        "true" => true,
        "false" => false,
        other => return Err(invalid(format!("XNET_IPMASQ={other} is neither true nor false"))),
    };
    Ok(SubnetEnv { network, subnet, mtu, ipmasq })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::*;

    const AGENT_FILE: &str = "XNET_NETWORK=10.244.0.0/16\nXNET_SUBNET=10.244.1.1/24\nXNET_MTU=1450\n\
        XNET_IPMASQ=false\nFLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
        FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

    fn p(text: &str) -> Result<SubnetEnv, CniError> {
        parse(text, Path::new("/run/xnet/subnet.env"))
    }

    #[test]
    fn parses_the_agents_file() {
        let env = p(AGENT_FILE).unwrap();
        assert_eq!(env.network, "10.244.0.0/16".parse().unwrap());
        assert_eq!(env.subnet, "10.244.1.0/24".parse().unwrap());
        assert_eq!(env.subnet.to_string(), "10.244.1.0/24");
        assert_eq!(env.mtu, 1450);
        assert!(!env.ipmasq);
        assert_eq!(env.gateway().to_string(), "10.244.1.1");
    }

    #[test]
    fn flannel_names_alone_work_and_xnet_names_win() {
        let env = p("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.7.1/24\nFLANNEL_MTU=1400\n\
                     FLANNEL_IPMASQ=true\n")
        .unwrap();
        assert_eq!(env.subnet.to_string(), "10.1.7.0/24");
        assert_eq!(env.mtu, 1400);
        assert!(env.ipmasq);
        let env = p(&format!("{AGENT_FILE}FLANNEL_MTU=9000\n")).unwrap();
        assert_eq!(env.mtu, 1450);
    }

    #[test]
    fn tolerates_comments_blanks_quotes_and_other_keys() {
        let env = p("# written by xnet\n\nXNET_NETWORK=\"10.244.0.0/16\"\nXNET_SUBNET=10.244.3.1/24\n\
                     XNET_MTU=1450\nXNET_IPMASQ=false\nFLANNEL_IPV6_NETWORK=fd00::/56\n")
        .unwrap();
        assert_eq!(env.subnet.to_string(), "10.244.3.0/24");
    }

    #[test]
    fn names_missing_keys() {
        let e = p("XNET_NETWORK=10.244.0.0/16\nXNET_MTU=1450\n").unwrap_err();
        assert_eq!(e.code, INVALID_CONFIG);
        assert_eq!(e.msg, "subnet file /run/xnet/subnet.env: XNET_SUBNET, XNET_IPMASQ missing");
    }

    #[test]
    fn rejects_bad_values() {
        let file = |subnet: &str, mtu: &str, masq: &str| {
            format!("XNET_NETWORK=10.244.0.0/16\nXNET_SUBNET={subnet}\nXNET_MTU={mtu}\nXNET_IPMASQ={masq}\n")
        };
        let msg = |t: String| p(&t).unwrap_err().msg;
        assert!(msg(file("10.245.1.1/24", "1450", "false")).contains("lies outside XNET_NETWORK"));
        assert!(msg(file("10.0.0.1/8", "1450", "false")).contains("lies outside XNET_NETWORK"));
        assert!(msg(file("10.244.1.1/32", "1450", "false")).contains("no room for pods"));
        assert!(msg(file("10.244.1.x/24", "1450", "false")).contains("not an IPv4 network"));
        assert!(msg(file("10.244.1.1/24", "big", "false")).contains("XNET_MTU=big is not a number"));
        assert!(msg(file("10.244.1.1/24", "20", "false")).contains("out of range"));
        assert!(msg(file("10.244.1.1/24", "1450", "yes")).contains("neither true nor false"));
    }

    #[test]
    fn a_missing_file_says_to_start_the_agent() {
        let dir = std::env::temp_dir().join(format!("xnet-cni-test-{}", std::process::id()));
        let e = load(&dir.join("subnet.env")).unwrap_err();
        assert_eq!(e.code, TRY_AGAIN_LATER);
        assert_eq!(
            e.msg,
            format!(
                "subnet file {} does not exist yet: is the xnet agent running?",
                dir.join("subnet.env").display()
            )
        );
    }
}
