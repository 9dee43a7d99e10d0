//! An independent decoder for what the lab captures: frames go into a pcap file and Debian's scapy
//! (python3-scapy, for /usr/bin/python3) reads them back, field by field, as JSON.

use std::{io::Write as _, path::Path, process::Command};

use serde_json::Value;

/// Writes `frames` as a pcap file (Ethernet link type).
pub fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    // Global header: magic, version 2.4, zone 0, sigfigs 0, snaplen 262144, DLT_EN10MB.
    out.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&262_144u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        out.extend_from_slice(&(i as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    std::fs::File::create(path).and_then(|mut file| file.write_all(&out)).expect("write pcap");
}

const SCAPY: &str = r#"
import json, sys
from scapy.all import rdpcap, IP, UDP, GRE
out = []
for p in rdpcap(sys.argv[1]):
    if IP not in p:
        continue
    ip = p[IP]
    hdr = bytes(ip)[:20]
    redo = IP(hdr[:10] + b"\0\0" + hdr[12:20])
    redo.chksum = None
    d = {"src": ip.src, "dst": ip.dst, "proto": ip.proto, "df": bool(ip.flags & 2),
         "outer_chksum_ok": bytes(redo)[10:12] == hdr[10:12]}
    inner = None
    if ip.proto == 47 and GRE in p:
        g = p[GRE]
        d.update(kind="gre", gre_proto=g.proto, key_present=bool(g.key_present), key=g.key,
                 chksum_present=bool(g.chksum_present), seq_present=bool(g.seqnum_present), version=g.version)
        inner = g.payload
    elif ip.proto == 17 and UDP in p:
        u = p[UDP]
        d.update(kind="udp", sport=u.sport, dport=u.dport, udp_chksum=u.chksum)
        if u.dport == int(sys.argv[2]):
            inner = IP(bytes(u.payload))
    if inner is not None and isinstance(inner, IP):
        raw = bytes(inner)
        fixed = IP(raw)
        fixed.chksum = None
        d.update(inner_src=inner.src, inner_dst=inner.dst, inner_len=inner.len, inner_bytes=len(raw),
                 inner_chksum_ok=bytes(IP(bytes(fixed)))[10:12] == raw[10:12], inner_ttl=inner.ttl)
    out.append(d)
print(json.dumps(out))
"#;

/// Decodes `frames` with scapy; `udp_port` is flannel udp's port (scapy does not know it).
pub fn scapy_decode(dir: &Path, frames: &[Vec<u8>], udp_port: u16) -> Vec<Value> {
    let pcap = dir.join("capture.pcap");
    write_pcap(&pcap, frames);
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(SCAPY)
        .arg(&pcap)
        .arg(udp_port.to_string())
        .output()
        .expect("run /usr/bin/python3 (cargo xtask test installs python3-scapy)");
    assert!(out.status.success(), "scapy decode failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).expect("scapy JSON").as_array().expect("array").clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcap_files_have_the_global_header_and_one_record_per_frame() {
        let path = std::env::temp_dir().join(format!("xnet-pcap-test-{}.pcap", std::process::id()));
        write_pcap(&path, &[vec![1, 2, 3], vec![4; 60]]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!((u32_at(0), u32_at(20)), (0xa1b2_c3d4, 1), "magic and Ethernet link type");
        assert_eq!(bytes.len(), 24 + (16 + 3) + (16 + 60), "a 24-byte header, 16 bytes per record");
        assert_eq!((u32_at(24 + 8), u32_at(24 + 12)), (3, 3), "captured and original length");
        assert_eq!(&bytes[40..43], &[1, 2, 3]);
        assert_eq!((u32_at(43), u32_at(43 + 8)), (1, 60), "the second record");
    }
}
