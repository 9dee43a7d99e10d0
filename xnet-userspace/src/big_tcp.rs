//! BIG TCP on the links xnet's packets cross: IPv4 TCP packets above 64 KB, carried whole from
//! the sending socket to the receiving one (Linux 6.3 and later), so fewer packets carry the same
//! bytes. The datapath carries them through every tunnel; the kernel builds them only for a
//! socket whose route's device allows them (`gso_ipv4_max_size`), GRO builds them only on a link
//! that allows them (`gro_ipv4_max_size`), and a link that does not allow them cuts them in
//! software. So the agent raises both sizes on every link of its path: the underlay, the host
//! device pair, the container interfaces, their ports, and the containers' ends of those (in the
//! containers' network namespaces). It raises the underlay first and puts it back last, so a
//! container is never allowed a size that the underlay would cut. What it changed, and what each
//! link had before, it keeps in a file ([`Record`]), so that a stop (this agent's, or a later
//! one's after `--keep-datapath`) puts back exactly those links, to exactly their old sizes.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use crate::{
    config::{BigTcp, LEGACY_GSO_BYTES, MAX_GSO_BYTES},
    netlink::{LinkInfo, Netlink, NetlinkError},
    subnet_env::{WriteError, write_atomic},
};

/// What the agent does about BIG TCP, decided at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Raise the links to this many bytes.
    On(u32),
    /// Leave every link as it is, for this reason.
    Off(String),
}

/// Decides from the `big_tcp` setting and the underlay: a size the setting asks for that the host
/// cannot give is an error (the agent refuses to start, before anything is attached); `"auto"`
/// falls back to off. `"auto"` also stays off on a virtual underlay (a bond, a VLAN, a bridge...),
/// whose lower devices would cut the packets unless raised too: with an explicit size, raising
/// them is the operator's part.
pub fn decide(setting: BigTcp, underlay: &LinkInfo) -> Result<Decision, String> {
    let name = &underlay.name;
    let limit = match (underlay.gso_ipv4_max, underlay.tso_max.unwrap_or(LEGACY_GSO_BYTES)) {
        (None, _) => Err("this kernel has no IPv4 BIG TCP (Linux 6.3 and later have it)".to_string()),
        (Some(_), tso) if tso <= LEGACY_GSO_BYTES => {
            Err(format!("the driver of interface {name} (`iface`) takes TSO packets of at most {tso} bytes"))
        }
        (Some(_), tso) => Ok(tso),
    };
    let layered = underlay.kind.as_deref().filter(|k| *k != "veth");
    match (setting, limit) {
        (BigTcp::Off, _) => Ok(Decision::Off("`big_tcp = \"off\"` in the config".to_string())),
        (BigTcp::Auto, Ok(_)) if layered.is_some() => Ok(Decision::Off(format!(
            "interface {name} (`iface`) is a {} device, whose lower devices would cut BIG TCP packets unless raised too; raise them and set `big_tcp` to a size",
            layered.unwrap_or_default()
        ))),
        (BigTcp::Auto, Ok(tso)) => Ok(Decision::On(tso.min(MAX_GSO_BYTES))),
        (BigTcp::Auto, Err(why)) => Ok(Decision::Off(why)),
        (BigTcp::Bytes(bytes), Ok(tso)) if bytes <= tso => Ok(Decision::On(bytes)),
        (BigTcp::Bytes(bytes), Ok(tso)) => Err(format!(
            "`big_tcp` = {bytes} is more than the driver of interface {name} (`iface`) takes ({tso} bytes); lower it, or set big_tcp = \"auto\""
        )),
        (BigTcp::Bytes(bytes), Err(why)) => {
            Err(format!("`big_tcp` = {bytes} cannot be had: {why}; set big_tcp = \"auto\" or \"off\""))
        }
    }
}

/// Where a link lies on the path, for the order of the changes: lower first when raising.
pub type Rank = u8;

/// The rank of the containers' ports: the only links whose other end (in a container) is raised
/// too. Another link's other end is not the agent's (an underlay that is a veth has its other end
/// in whatever hosts this one).
pub const PORTS: Rank = 3;

/// A link whose sizes the agent changed: the link itself, or (`peer`) the other end of the veth
/// `index`, in a container's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raised {
    pub index: u32,
    pub name: String,
    pub peer: bool,
    /// (GSO, GRO) before the agent changed them.
    pub before: (u32, u32),
    /// (GSO, GRO) the agent wrote.
    pub written: (u32, u32),
}

impl Raised {
    /// Whether the agent would have written the same with BIG TCP at `bytes`.
    pub fn fits(&self, bytes: u32) -> bool {
        self.written == (self.before.0.max(bytes), self.before.1.max(bytes))
    }
}

/// Where the agent keeps its [`Record`]: beside `subnet_file`, named after it
/// (`/run/xnet/subnet.env.big_tcp` by default), so that agents with their own files keep their own.
pub fn record_path(subnet_file: &Path) -> std::path::PathBuf {
    let mut name = subnet_file.as_os_str().to_owned();
    name.push(".big_tcp");
    name.into()
}

/// The links the agent raised, in the order it raised them, kept in a file beside `subnet.env`
/// (bpffs holds no plain files), one line each: `link|peer INDEX NAME GSO GRO GSO GRO`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub raised: Vec<Raised>,
}

impl Record {
    /// Reads `path`; a missing file is an empty record, and a line that does not read is left out.
    pub fn load(path: &Path) -> Record {
        let text = fs::read_to_string(path).unwrap_or_default();
        let raised = text
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let [kind, index, name, g0, r0, g1, r1] = f.as_slice() else { return None };
                let n = |s: &str| s.parse::<u32>().ok();
                Some(Raised {
                    index: n(index)?,
                    name: name.to_string(),
                    peer: match *kind {
                        "link" => false,
                        "peer" => true,
                        _ => return None,
                    },
                    before: (n(g0)?, n(r0)?),
                    written: (n(g1)?, n(r1)?),
                })
            })
            .collect();
        Record { raised }
    }

    /// Writes the record to `path` (as `subnet.env` is written), or removes the file when empty.
    pub fn save(&self, path: &Path) -> Result<(), WriteError> {
        if self.raised.is_empty() {
            return match fs::remove_file(path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    Err(WriteError { path: path.to_owned(), error })
                }
                _ => Ok(()),
            };
        }
        let mut text = String::new();
        for r in &self.raised {
            let kind = if r.peer { "peer" } else { "link" };
            text += &format!(
                "{kind} {} {} {} {} {} {}\n",
                r.index, r.name, r.before.0, r.before.1, r.written.0, r.written.1
            );
        }
        write_atomic(path, &text)
    }
}

/// What [`raise`] or [`restore`] changed (the links' names, a container's end as `port's peer`),
/// and the first error on the way: an error on one link does not stop the others. A link that
/// went away meanwhile is no error.
#[derive(Debug, Default)]
pub struct Changes {
    pub changed: Vec<String>,
    pub error: Option<String>,
}

/// A link's (GSO, GRO) sizes before and after a change.
type Change = ((u32, u32), (u32, u32));

/// What to write on a link, from what it has: raise each size to `bytes` (never lower one), or
/// put back what [`Raised::before`] says if the link still has what the agent wrote.
#[derive(Clone, Copy, Debug)]
enum Target {
    Raise(u32),
    Restore { written: (u32, u32), before: (u32, u32) },
}

impl Target {
    fn next(self, now: (u32, u32)) -> Option<(u32, u32)> {
        match self {
            Target::Raise(bytes) => {
                let new = (now.0.max(bytes), now.1.max(bytes));
                (new != now).then_some(new)
            }
            Target::Restore { written, before } => (now == written && now != before).then_some(before),
        }
    }
}

fn sizes(l: &LinkInfo) -> Option<(u32, u32)> {
    Some((l.gso_ipv4_max?, l.gro_ipv4_max?))
}

/// Raises to `bytes` the sizes of the links `rank` places, and of the other end of each veth pair
/// among them that lies in another network namespace (a container's), where they are lower and
/// the driver allows it; adds what it changed to `record`. A container's end is raised before its
/// port, and the port only once its end is done (so a failed end is tried again at the next call):
/// a socket sends what its own link allows, and a veth takes from its peer whatever comes.
pub async fn raise(
    netlink: &Netlink,
    bytes: u32,
    rank: impl Fn(&LinkInfo) -> Option<Rank>,
    record: &mut Record,
) -> Changes {
    let mut changes = Changes::default();
    let target = Target::Raise(bytes);
    // A bridge without ports takes no more than 64 KB: it is raised when its first port comes.
    let room = |l: &LinkInfo| l.tso_max.unwrap_or(LEGACY_GSO_BYTES) >= bytes;
    let mut links: Vec<(Rank, LinkInfo)> = match netlink.links().await {
        Ok(links) => links
            .into_iter()
            .filter(|l| room(l) && sizes(l).and_then(|s| target.next(s)).is_some())
            .filter_map(|l| Some((rank(&l)?, l)))
            .collect(),
        Err(e) => {
            changes.error = Some(e.to_string());
            return changes;
        }
    };
    links.sort_by_key(|(rank, l)| (*rank, l.index));
    let wanted: BTreeSet<i32> =
        links.iter().filter(|(r, _)| *r == PORTS).filter_map(|(_, l)| l.peer?.0).collect();
    let mut namespaces = network_namespaces(netlink, &wanted).await;
    for (rank, link) in links {
        if let (Some((Some(nsid), index)), PORTS) = (link.peer, rank) {
            match set_peer(&mut namespaces, nsid, index, &link, target).await {
                Ok(Some((before, written))) => {
                    record.raised.push(Raised {
                        index: link.index,
                        name: link.name.clone(),
                        peer: true,
                        before,
                        written,
                    });
                    changes.changed.push(format!("{}'s peer", link.name));
                }
                Ok(None) => {}
                Err(e) => {
                    changes.error.get_or_insert(e);
                    continue;
                }
            }
        }
        let Some(now) = sizes(&link) else { continue };
        let Some(written) = target.next(now) else { continue };
        match write(netlink, link.index, &link.name, written).await {
            Ok(true) => {
                record.raised.push(Raised {
                    index: link.index,
                    name: link.name.clone(),
                    peer: false,
                    before: now,
                    written,
                });
                changes.changed.push(link.name.clone());
            }
            Ok(false) => {}
            Err(e) => {
                changes.error.get_or_insert(e);
            }
        }
    }
    changes
}

/// Puts back, last raised first (so the underlay last), the links of `record` that still have
/// the sizes the agent wrote, to what they had before. The record keeps only the links that could
/// not be put back (an error), for a later try.
pub async fn restore(netlink: &Netlink, record: &mut Record) -> Changes {
    let mut changes = Changes::default();
    let links: BTreeMap<u32, LinkInfo> = match netlink.links().await {
        Ok(links) => links.into_iter().map(|l| (l.index, l)).collect(),
        Err(e) => {
            changes.error = Some(e.to_string());
            return changes;
        }
    };
    // The same link by index and name: an index a deleted link's successor took is left alone.
    let link_of = |r: &Raised| links.get(&r.index).filter(|l| l.name == r.name);
    let wanted: BTreeSet<i32> =
        record.raised.iter().filter(|r| r.peer).filter_map(|r| link_of(r)?.peer?.0).collect();
    let mut namespaces = network_namespaces(netlink, &wanted).await;
    let mut failed = Vec::new();
    for r in std::mem::take(&mut record.raised).into_iter().rev() {
        let Some(link) = link_of(&r) else { continue };
        let target = Target::Restore { written: r.written, before: r.before };
        let put_back = if r.peer {
            let Some((Some(nsid), index)) = link.peer else { continue };
            set_peer(&mut namespaces, nsid, index, link, target).await.map(|c| c.is_some())
        } else {
            let Some(new) = sizes(link).and_then(|now| target.next(now)) else { continue };
            write(netlink, link.index, &link.name, new).await
        };
        match put_back {
            Ok(true) if r.peer => changes.changed.push(format!("{}'s peer", link.name)),
            Ok(true) => changes.changed.push(link.name.clone()),
            Ok(false) => {}
            Err(e) => {
                changes.error.get_or_insert(e);
                failed.push(r);
            }
        }
    }
    // Back in the order they were raised.
    failed.reverse();
    record.raised = failed;
    changes
}

/// `xnet cleanup`: puts back what the record beside `subnet_file` holds (see [`restore`]) and
/// removes the record, or keeps in it the links that could not be put back.
pub async fn put_back_recorded(subnet_file: &Path) -> Result<Changes, String> {
    let path = record_path(subnet_file);
    let mut record = Record::load(&path);
    if record.raised.is_empty() {
        return Ok(Changes::default());
    }
    let netlink = Netlink::requests_only().map_err(|e| e.to_string())?;
    let changes = restore(&netlink, &mut record).await;
    record.save(&path).map_err(|e| e.to_string())?;
    Ok(changes)
}

/// Writes `new` (GSO, GRO) on the link `index` (`name`) of `netlink`'s namespace: `false` when the
/// link went away between the dump and the request (a container stopped), which is no error.
async fn write(netlink: &Netlink, index: u32, name: &str, new: (u32, u32)) -> Result<bool, String> {
    match netlink.set_ipv4_gso_gro(index, name, new).await {
        Ok(()) => Ok(true),
        Err(NetlinkError::Request { error: rtnetlink::Error::NetlinkError(m), .. })
            if m.raw_code() == -libc::ENODEV =>
        {
            Ok(false)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Sets the sizes of the other end of the veth `port`: the link `index` of the network namespace
/// this one numbers `nsid`, to what `target` makes of its sizes. Returns the sizes before and after
/// when it changed them; `None` when there was nothing to change or the link is gone. The kernel
/// has no request for a link of another namespace that leaves it there (the namespace id of a set
/// request moves the link), so the namespace is entered, by a thread of its own; the link there
/// must be a veth whose peer is `port`.
async fn set_peer(
    namespaces: &mut BTreeMap<i32, fs::File>,
    nsid: i32,
    index: u32,
    port: &LinkInfo,
    target: Target,
) -> Result<Option<Change>, String> {
    let Some(file) = namespaces.get(&nsid) else {
        return Err(format!(
            "cannot find the network namespace of {}'s peer (id {nsid}) under /run/netns, /run/docker/netns or /proc (a containerised agent needs the host's PID namespace or those directories)",
            port.name
        ));
    };
    let file = file.try_clone().map_err(|e| format!("{}'s peer: {e}", port.name))?;
    let (port_name, port_index) = (port.name.clone(), port.index);
    let (send, receive) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = (|| -> Result<Option<Change>, String> {
            // SAFETY: setns on this thread alone, which ends with this closure; the fd is open.
            if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) } != 0 {
                return Err(format!(
                    "entering the namespace of {port_name}'s peer: {}",
                    std::io::Error::last_os_error()
                ));
            }
            drop(file);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let there = Netlink::requests_only().map_err(|e| e.to_string())?;
                let name = format!("{port_name}'s peer");
                let link = match there.link_by_index(index).await {
                    Ok(Some(l))
                        if l.kind.as_deref() == Some("veth")
                            && l.peer.is_some_and(|(_, i)| i == port_index) =>
                    {
                        l
                    }
                    Ok(_) => return Ok(None),
                    Err(e) => return Err(e.to_string()),
                };
                let Some(now) = sizes(&link) else { return Ok(None) };
                let Some(new) = target.next(now) else { return Ok(None) };
                Ok(write(&there, index, &name, new).await?.then_some((now, new)))
            })
        })();
        let _ = send.send(result);
    });
    receive.await.unwrap_or_else(|_| Err(format!("setting {}'s peer: the thread panicked", port.name)))
}

/// The network namespaces this one numbers with the ids `wanted`, opened: looked for among the
/// ones named under `/run/netns` (ip netns, CNI) and `/run/docker/netns`, then those of the host's
/// processes, until all are found. Only the wanted ones stay open.
async fn network_namespaces(netlink: &Netlink, wanted: &BTreeSet<i32>) -> BTreeMap<i32, fs::File> {
    use std::os::unix::fs::MetadataExt;
    let mut found = BTreeMap::new();
    if wanted.is_empty() {
        return found;
    }
    let key = |m: &fs::Metadata| (m.dev(), m.ino());
    let mut seen: BTreeSet<(u64, u64)> =
        fs::metadata("/proc/self/ns/net").map(|m| key(&m)).into_iter().collect();
    let named = ["/run/netns", "/var/run/netns", "/run/docker/netns", "/var/run/docker/netns"]
        .into_iter()
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()));
    let processes = fs::read_dir("/proc").into_iter().flat_map(|entries| {
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
            .map(|e| e.path().join("ns/net"))
    });
    for path in named.chain(processes) {
        if found.len() == wanted.len() {
            break;
        }
        let Ok(meta) = fs::metadata(&path) else { continue };
        if !seen.insert(key(&meta)) {
            continue;
        }
        let Ok(file) = fs::File::open(&path) else { continue };
        if let Ok(Some(id)) = netlink.nsid_of(&file).await
            && wanted.contains(&id)
        {
            found.insert(id, file);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(gso: Option<u32>, tso: Option<u32>) -> LinkInfo {
        LinkInfo {
            index: 2,
            name: "eth0".to_string(),
            mac: None,
            mtu: 1500,
            master: None,
            up: true,
            running: true,
            kind: None,
            gso_ipv4_max: gso,
            gro_ipv4_max: gso,
            tso_max: tso,
            peer: None,
        }
    }

    #[test]
    fn auto_takes_what_the_kernel_and_the_underlay_driver_allow() {
        // A veth (and mlx5) takes the kernel's largest GSO packet: auto asks for that.
        let veth = link(Some(65536), Some(524_280));
        assert_eq!(decide(BigTcp::Auto, &veth), Ok(Decision::On(MAX_GSO_BYTES)));
        // A driver with a lower ceiling (but above 64 KB) gets its ceiling.
        assert_eq!(decide(BigTcp::Auto, &link(Some(65536), Some(262_144))), Ok(Decision::On(262_144)));
        // A device whose ceiling is above what the kernel builds gets what the kernel builds.
        assert_eq!(decide(BigTcp::Auto, &link(Some(65536), Some(u32::MAX))), Ok(Decision::On(MAX_GSO_BYTES)));
        // A driver without BIG TCP, a kernel without it: off, with the reason.
        let Ok(Decision::Off(why)) = decide(BigTcp::Auto, &link(Some(65536), Some(65536))) else {
            panic!("a 64 KB driver must leave BIG TCP off")
        };
        assert!(why.contains("eth0") && why.contains("65536"), "{why}");
        let Ok(Decision::Off(why)) = decide(BigTcp::Auto, &link(None, None)) else {
            panic!("a kernel without gso_ipv4_max_size must leave BIG TCP off")
        };
        assert!(why.contains("6.3"), "{why}");
        assert!(matches!(decide(BigTcp::Off, &veth), Ok(Decision::Off(_))));
    }

    #[test]
    fn auto_stays_off_on_a_virtual_underlay_and_a_size_is_taken_there() {
        let mut bond = link(Some(65536), Some(524_280));
        bond.kind = Some("bond".to_string());
        let Ok(Decision::Off(why)) = decide(BigTcp::Auto, &bond) else {
            panic!("auto on a bond must stay off")
        };
        assert!(why.contains("bond device") && why.contains("lower devices"), "{why}");
        assert_eq!(decide(BigTcp::Bytes(196_608), &bond), Ok(Decision::On(196_608)));
    }

    #[test]
    fn a_raise_never_lowers_and_a_restore_touches_only_what_it_wrote() {
        let raise = Target::Raise(185_000);
        assert_eq!(raise.next((65_536, 65_536)), Some((185_000, 185_000)));
        // An operator's larger GSO size stays; only the GRO size is raised.
        assert_eq!(raise.next((262_144, 65_536)), Some((262_144, 185_000)));
        assert_eq!(raise.next((185_000, 200_000)), None);
        let restore = Target::Restore { written: (262_144, 185_000), before: (262_144, 65_536) };
        assert_eq!(restore.next((262_144, 185_000)), Some((262_144, 65_536)));
        // Changed since by someone else: left as it is.
        assert_eq!(restore.next((262_144, 131_072)), None);
        let r = Raised {
            index: 3,
            name: "eth0".into(),
            peer: false,
            before: (262_144, 65_536),
            written: (262_144, 185_000),
        };
        assert!(r.fits(185_000) && !r.fits(131_072));
    }

    #[test]
    fn the_record_reads_back_what_it_wrote() {
        let dir = std::env::temp_dir().join(format!("xnet-big-tcp-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = record_path(&dir.join("subnet.env"));
        let record = Record {
            raised: vec![
                Raised {
                    index: 2,
                    name: "eth0".into(),
                    peer: false,
                    before: (65_536, 65_536),
                    written: (185_000, 185_000),
                },
                Raised {
                    index: 9,
                    name: "veth1a2b".into(),
                    peer: true,
                    before: (65_536, 65_536),
                    written: (185_000, 185_000),
                },
            ],
        };
        record.save(&path).unwrap();
        assert_eq!(Record::load(&path), record);
        fs::write(&path, "link 2 eth0 65536 65536 185000 185000\nbogus line\npeer x y 1 2 3 4\n").unwrap();
        assert_eq!(Record::load(&path).raised, record.raised[..1]);
        Record::default().save(&path).unwrap();
        assert!(!path.exists(), "an empty record removes the file");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_size_the_host_cannot_give_is_refused() {
        let veth = link(Some(65536), Some(524_280));
        assert_eq!(decide(BigTcp::Bytes(196_608), &veth), Ok(Decision::On(196_608)));
        let err = decide(BigTcp::Bytes(196_608), &link(Some(65536), Some(131_072))).unwrap_err();
        assert!(err.contains("`big_tcp` = 196608") && err.contains("131072"), "{err}");
        let err = decide(BigTcp::Bytes(196_608), &link(Some(65536), None)).unwrap_err();
        assert!(err.contains("eth0") && err.contains("\"off\""), "{err}");
        let err = decide(BigTcp::Bytes(196_608), &link(None, None)).unwrap_err();
        assert!(err.contains("6.3"), "{err}");
    }
}
