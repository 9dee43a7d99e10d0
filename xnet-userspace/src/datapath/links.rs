//! Program attachments, each a bpf_link pinned as `links/<program>@<interface>` under the pin
//! directory: attach anew, or take over an earlier agent's attachment by swapping this run's
//! program into its link (no moment without a program), and detach by unpinning.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};

use super::{DatapathError, Program};

pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

pub fn link_pin(pin_dir: &Path, program: Program, iface: &str) -> PathBuf {
    links_dir(pin_dir).join(format!("{}@{iface}", program.name()))
}

/// Attaches `program` on `iface`, or atomically swaps it into an attachment an earlier agent
/// left pinned. The link is pinned. A pinned link that can no longer be updated (its interface
/// was deleted and perhaps re-created) is replaced by a fresh attachment. Returns the pin.
pub fn attach(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    program: Program,
    iface: &str,
) -> Result<PathBuf, DatapathError> {
    let name = program.name();
    let pin = link_pin(pin_dir, program, iface);
    let fail = |detail: String| DatapathError::Attach { program: name, iface: iface.into(), detail };
    // The kernel refuses to update a link whose interface is gone (ENOLINK).
    let took_over = match PinnedLink::from_pin(&pin) {
        Ok(old) => match replace_program(ebpf, program, FdLink::from(old)) {
            Ok(_still_pinned) => true,
            Err(e) => {
                tracing::warn!(link = %pin.display(), error = %e, "pinned attachment is stale; attaching anew");
                unpin(&pin)?;
                false
            }
        },
        Err(_) => false,
    };
    if !took_over {
        let link = attach_new(ebpf, program, iface).map_err(fail)?;
        link.pin(&pin).map_err(|e| fail(format!("pinning {}: {e}", pin.display())))?;
    }
    tracing::info!(program = name, iface, took_over, "attached");
    Ok(pin)
}

/// Swaps this run's program into an existing link (bpf_link_update).
fn replace_program(ebpf: &mut Ebpf, program: Program, old: FdLink) -> Result<FdLink, String> {
    let name = program.name();
    match program {
        Program::TcEgress | Program::TcIngress => {
            let p: &mut SchedClassifier =
                ebpf.program_mut(name).expect("program").try_into().expect("classifier");
            let link = SchedClassifierLink::try_from(old).map_err(|e| e.to_string())?;
            let id = p.attach_to_link(link).map_err(|e| e.to_string())?;
            p.take_link(id).map_err(|e| e.to_string())?.try_into().map_err(|e: LinkError| e.to_string())
        }
        Program::XdpIngress => {
            let p: &mut Xdp = ebpf.program_mut(name).expect("program").try_into().expect("xdp");
            let link = XdpLink::try_from(old).map_err(|e| e.to_string())?;
            let id = p.attach_to_link(link).map_err(|e| e.to_string())?;
            p.take_link(id).map_err(|e| e.to_string())?.try_into().map_err(|e: LinkError| e.to_string())
        }
    }
}

/// A new attachment (TCX first in line on tc hooks, so a program of another tool behind us still
/// sees what we pass).
fn attach_new(ebpf: &mut Ebpf, program: Program, iface: &str) -> Result<FdLink, String> {
    let name = program.name();
    match program {
        Program::TcEgress | Program::TcIngress => {
            let p: &mut SchedClassifier =
                ebpf.program_mut(name).expect("program").try_into().expect("classifier");
            let id = p
                .attach_with_options(
                    iface,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                )
                .map_err(|e| e.to_string())?;
            p.take_link(id).map_err(|e| e.to_string())?.try_into().map_err(|e: LinkError| e.to_string())
        }
        Program::XdpIngress => {
            let p: &mut Xdp = ebpf.program_mut(name).expect("program").try_into().expect("xdp");
            let id = p.attach(iface, XdpMode::default()).map_err(|e| e.to_string())?;
            p.take_link(id).map_err(|e| e.to_string())?.try_into().map_err(|e: LinkError| e.to_string())
        }
    }
}

/// Every link pinned under `pin_dir`, sorted.
pub fn pinned(pin_dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(links_dir(pin_dir))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Unpins a link; with its last reference gone the kernel detaches it.
pub fn unpin(pin: &Path) -> Result<(), DatapathError> {
    match PinnedLink::from_pin(pin) {
        Ok(link) => {
            link.unpin().map_err(|error| DatapathError::Unpin { path: pin.into(), error })?;
            Ok(())
        }
        // Not a link (or already gone): remove the file so the directory can go.
        Err(_) => match fs::remove_file(pin) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(DatapathError::Unpin { path: pin.into(), error }),
        },
    }
}
