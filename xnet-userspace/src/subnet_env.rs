//! The files a container runtime reads to join the overlay: `subnet.env` (flannel's format, under
//! both the `XNET_` and the `FLANNEL_` names) and, when asked for, a Docker options file like the
//! one flannel's mk-docker-opts.sh writes.

use std::{
    io,
    path::{Path, PathBuf},
};

use crate::cidr::{self, Ipv4Network};

/// What the runtime needs to know.
pub struct SubnetEnv {
    pub network: Ipv4Network,
    pub subnet: Ipv4Network,
    pub mtu: u32,
    pub ipmasq: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {error}; set `subnet_file` (or --subnet-file) to a writable path")]
pub struct WriteError {
    pub path: PathBuf,
    pub error: io::Error,
}

impl SubnetEnv {
    /// `subnet.env`: XNET_SUBNET is the bridge address with the prefix (e.g. 10.244.1.1/24), exactly
    /// what `dockerd --bip` wants.
    pub fn render(&self) -> String {
        let bip = format!("{}/{}", cidr::first_host(&self.subnet), self.subnet.prefix());
        let mut out = String::new();
        for prefix in ["XNET", "FLANNEL"] {
            out += &format!(
                "{prefix}_NETWORK={}\n{prefix}_SUBNET={bip}\n{prefix}_MTU={}\n{prefix}_IPMASQ={}\n",
                self.network, self.mtu, self.ipmasq
            );
        }
        out
    }

    /// The Docker options file: `DOCKER_NETWORK_OPTIONS=" --bip=... --mtu=..."`.
    pub fn render_docker_opts(&self) -> String {
        format!(
            "DOCKER_NETWORK_OPTIONS=\" --bip={}/{} --mtu={}\"\n",
            cidr::first_host(&self.subnet),
            self.subnet.prefix(),
            self.mtu
        )
    }
}

/// Writes `text` to `path` atomically (a temporary file renamed over it), creating the directory.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), WriteError> {
    let err = |error| WriteError { path: path.into(), error };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_flannel_and_xnet_names() {
        let env = SubnetEnv {
            network: cidr::parse("10.244.0.0/16").unwrap(),
            subnet: cidr::parse("10.244.1.0/24").unwrap(),
            mtu: 1450,
            ipmasq: false,
        };
        assert_eq!(
            env.render(),
            "XNET_NETWORK=10.244.0.0/16\nXNET_SUBNET=10.244.1.1/24\nXNET_MTU=1450\nXNET_IPMASQ=false\n\
             FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        assert_eq!(env.render_docker_opts(), "DOCKER_NETWORK_OPTIONS=\" --bip=10.244.1.1/24 --mtu=1450\"\n");
    }
}
