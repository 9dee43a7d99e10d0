//! The object's programs as this run holds them: each loaded into the kernel when it is first
//! needed (the verifier takes milliseconds a program, and a host runs one of the two ingress
//! programs only), and the attachments this run made or took over.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{SchedClassifier, Xdp},
};

use super::{DatapathError, Program, links};

pub struct Programs {
    ebpf: Ebpf,
    /// `None`: loaded without pins, for tests and benchmarks (nothing can be attached).
    pin_dir: Option<PathBuf>,
    loaded: BTreeSet<Program>,
    /// Link pins that this run attached or took over.
    attached: BTreeSet<PathBuf>,
    /// Bridge ports the egress program is attached to, name -> ifindex at the time.
    ports: BTreeMap<String, u32>,
    /// Whether an attachment was tried: from then on programs may read the maps.
    tried: bool,
}

impl Programs {
    /// `ebpf`: the object with its maps already taken out.
    pub(super) fn new(ebpf: Ebpf, pin_dir: Option<PathBuf>) -> Self {
        Self {
            ebpf,
            pin_dir,
            loaded: BTreeSet::new(),
            attached: BTreeSet::new(),
            ports: BTreeMap::new(),
            tried: false,
        }
    }

    /// Loads `programs` into the kernel, those not loaded yet, in order; stops at the first the
    /// kernel refuses.
    pub fn load(&mut self, programs: &[Program]) -> Result<(), DatapathError> {
        for &program in programs {
            if self.loaded.contains(&program) {
                continue;
            }
            let name = program.name();
            let fail = |e| DatapathError::Program { program: name, error: Box::new(e) };
            let p = self.ebpf.program_mut(name).expect("program is in the object");
            match program {
                Program::TcEgress | Program::TcIngress => {
                    let p: &mut SchedClassifier = p.try_into().expect("program is a classifier");
                    p.load().map_err(fail)?;
                }
                Program::XdpIngress => {
                    let p: &mut Xdp = p.try_into().expect("program is XDP");
                    p.load().map_err(fail)?;
                }
            }
            self.loaded.insert(program);
        }
        Ok(())
    }

    /// A program, loaded, to run or attach by hand.
    pub fn program_mut(&mut self, program: Program) -> Result<&mut aya::programs::Program, DatapathError> {
        self.load(&[program])?;
        Ok(self.ebpf.program_mut(program.name()).expect("program is in the object"))
    }

    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    fn pins(&self, program: Program, iface: &str) -> Result<&Path, DatapathError> {
        self.pin_dir.as_deref().ok_or_else(|| DatapathError::Attach {
            program: program.name(),
            iface: iface.into(),
            detail: "this datapath was loaded without a pin directory".into(),
        })
    }

    /// Whether an attachment was tried (even one that failed part way).
    pub(super) fn tried(&self) -> bool {
        self.tried
    }

    /// Attaches `program` on `iface` (or takes over an earlier agent's attachment there), loading
    /// it first if this run has not.
    pub fn attach(&mut self, program: Program, iface: &str) -> Result<(), DatapathError> {
        let pin_dir = self.pins(program, iface)?.to_path_buf();
        self.load(&[program])?;
        self.tried = true;
        let pin = links::attach(&mut self.ebpf, &pin_dir, program, iface)?;
        self.attached.insert(pin);
        Ok(())
    }

    /// Whether this run attached `program` to `iface` (or took it over).
    pub fn is_attached(&self, program: Program, iface: &str) -> bool {
        self.pin_dir
            .as_deref()
            .is_some_and(|dir| self.attached.contains(&links::link_pin(dir, program, iface)))
    }

    /// Detaches `program` from `iface`, if this run attached it.
    pub fn detach(&mut self, program: Program, iface: &str) -> Result<(), DatapathError> {
        let pin = links::link_pin(self.pins(program, iface)?, program, iface);
        if self.attached.remove(&pin) {
            links::unpin(&pin)?;
            tracing::info!(program = program.name(), iface, "detached");
        }
        Ok(())
    }

    /// Makes the egress program run on exactly `ports` (bridge ports, name -> ifindex) besides the
    /// configured interfaces, so container traffic is encapsulated before the bridge sees it. Ports
    /// new since the last call, or re-created under the same name, are attached; ports gone are
    /// unpinned (the kernel detached them with their interface). A port that fails is retried on the
    /// next call; the first error is returned after the others are done.
    pub fn sync_port_attachments(&mut self, ports: &BTreeMap<String, u32>) -> Result<(), DatapathError> {
        let mut first_error = None;
        for (name, ifindex) in ports {
            if self.ports.get(name) == Some(ifindex) {
                continue;
            }
            match self.attach(Program::TcEgress, name) {
                Ok(()) => {
                    self.ports.insert(name.clone(), *ifindex);
                }
                Err(e) => {
                    self.ports.remove(name);
                    first_error.get_or_insert(e);
                }
            }
        }
        let gone: Vec<String> = self.ports.keys().filter(|n| !ports.contains_key(*n)).cloned().collect();
        for name in gone {
            let pin = match self.pins(Program::TcEgress, &name) {
                Ok(dir) => links::link_pin(dir, Program::TcEgress, &name),
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            match links::unpin(&pin) {
                Ok(()) => {
                    tracing::info!(port = %name, "port gone; its attachment removed");
                    self.attached.remove(&pin);
                    self.ports.remove(&name);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The bridge ports the egress program is attached to, name -> ifindex.
    pub fn ports(&self) -> &BTreeMap<String, u32> {
        &self.ports
    }

    /// Detaches attachments pinned by an earlier agent that this run did not re-attach (an
    /// interface dropped from the config, or ingress switched between XDP and tc).
    pub fn detach_stale(&mut self) -> Result<(), DatapathError> {
        let Some(pin_dir) = &self.pin_dir else { return Ok(()) };
        for pin in links::pinned(pin_dir) {
            if !self.attached.contains(&pin) {
                links::unpin(&pin)?;
                tracing::info!(link = %pin.display(), "detached stale attachment");
            }
        }
        Ok(())
    }
}
