//! The persistent mode of the datapath (`porin run`): maps pinned, TC
//! filters and XDP links that outlive the process, adoption of what a
//! previous daemon left, and removal (see [`super::pin`] for the layout and
//! the start-up decision).
//!
//! # Adoption without a window
//! On a same-layout start the new programs are loaded against the pinned
//! maps, the programs on the veths listed in `PORIN_ENDP_V1` are replaced
//! atomically (netlink, same priority and handle), the active generation is
//! read back from `PORIN_CFG_V1` (never reset), and what is applied is read
//! back from the maps, so the first apply is a normal diff: new entries
//! written, identity changes parked, one generation flip, stale entries
//! deleted last. The HTTP maps are the exception: not read back (the rule
//! map may hold rules no set lists, left by a failed apply), they are swept
//! instead: the first apply always flips the generation; before the flip
//! it deletes the rules neither the live sets nor the new policy use, after
//! it the old sets and every rule the new policy does not hold. The HTTP
//! hash key
//! (`PORIN_HTTPK_V1`) is kept (`http::ensure_key` only draws a new one into
//! an empty map), so the rule keys the new policy compiles to match what
//! the adopted connections were judged with. The enforcement loop
//! does not apply before discovery's first complete scan
//! ([`crate::enforce`]), so an adopted endpoint is never removed for not
//! having been seen yet. Conntrack maps are kept: established connections
//! survive. Endpoints whose veth is gone lose their entries and
//! connections at the first apply. Veths an earlier daemon held (programs
//! attached, no endpoint entry; see `Datapath::hold_live_veths`) are found
//! by their programs on the host's interfaces and adopted as well, so they
//! stay held (and are replaced or detached by this daemon, not orphaned).
//!
//! XDP links pinned under `links/` are taken over when their uplink is
//! applied (after its map entries are written): `bpf_link_update` swaps the
//! program atomically. Pinned links whose uplink is no longer configured are
//! unpinned (detached) after the first uplink apply.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, LpmTrie},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        xdp::XdpLink,
        Link, LinkOrder, SchedClassifier, TcAttachType,
    },
    Ebpf,
};
use log::{info, warn};
use porin_common::datapath::{Identity, CONFIG_READY};

use super::{
    map_err,
    pin::{self, tc_handle, Found, PinDir, TC_PRIORITY},
    purge, purge_lpm,
    uplink::{key4, key6, EndpointAddresses, UplinkPlan},
    Datapath, DatapathError, Veth, FROM_CONTAINER, TO_CONTAINER,
};
use crate::{
    config,
    ebpf::{self, LoadError},
    maps::{self, MapDef},
    policy::{Compiled, Prefix},
};

/// The persistent state of a [`Datapath`].
pub(super) struct Persist {
    pins: PinDir,
    found: Found,
    /// Pinned XDP links not taken over yet: interface name → (mode, path).
    xdp_pins: BTreeMap<String, (String, PathBuf)>,
    /// `PORIN_UPEP*` as found at adoption: the "old" side of the first
    /// apply's diff (None once applied).
    upep: Option<EndpointAddresses>,
    /// Whether an apply completed since start (retired maps are removed and
    /// stale uplink entries swept after the first).
    applied: bool,
    swept_uplinks: bool,
    /// Container veths get pinned TCX links (6.6+), else netlink filters.
    tcx: bool,
}

/// Decides, prepares the directory and loads the object with pinned maps.
pub(super) fn open(dir: &Path) -> Result<(Ebpf, Persist), DatapathError> {
    let pins = PinDir::new(dir);
    // Inflated once for both: reading its map list and loading it.
    let object = ebpf::object()?;
    let maps = pin::object_maps(&object)?;
    let found = pin::prepare(&pins, &maps)?;
    let bpf = pin::open_pinned(&pins, &maps, &object)?;
    Ok((
        bpf,
        Persist {
            pins,
            found,
            xdp_pins: BTreeMap::new(),
            upep: None,
            applied: false,
            swept_uplinks: false,
            tcx: false,
        },
    ))
}

fn nl_options(handle: TcHandle) -> TcAttachOptions {
    TcAttachOptions::Netlink(NlOptions {
        priority: TC_PRIORITY,
        handle,
        classid: None,
    })
}

/// Removes Porin's two filters from `ifname` (missing ones are fine);
/// returns how many were removed.
pub(super) fn detach_filters(ifname: &str, handle: TcHandle) -> usize {
    let mut n = 0;
    for at in [TcAttachType::Ingress, TcAttachType::Egress] {
        if let Ok(link) = SchedClassifierLink::attached(ifname, at, TC_PRIORITY, handle, None) {
            if link.detach().is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// `if_indextoname`.
/// The host's interfaces (ifindex, name), from `/sys/class/net`.
fn host_interfaces() -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let index = fs::read_to_string(e.path().join("ifindex")).ok()?;
            Some((index.trim().parse().ok()?, name))
        })
        .collect()
}

pub(super) fn ifname_of(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as the call requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

fn read_hash<K: aya::Pod + Ord, V: aya::Pod>(
    bpf: &mut Ebpf,
    def: MapDef<K, V>,
) -> Result<BTreeMap<K, V>, DatapathError> {
    let m = map_mut!(bpf, def, BpfHashMap<_, _, _>);
    m.iter()
        .map(|r| r.map_err(map_err(def.name, "read")))
        .collect()
}

fn read_lpm<const N: usize>(
    bpf: &mut Ebpf,
    def: MapDef<[u8; N], Identity>,
) -> Result<BTreeMap<Prefix<N>, Identity>, DatapathError>
where
    [u8; N]: aya::Pod,
{
    let m = map_mut!(bpf, def, LpmTrie<_, _, _>);
    m.iter()
        .map(|r| {
            r.map(|(k, v)| {
                (
                    Prefix {
                        addr: k.data(),
                        len: k.prefix_len() as u8,
                    },
                    v,
                )
            })
            .map_err(map_err(def.name, "read"))
        })
        .collect()
}

impl Datapath {
    /// After the programs are loaded: adopts (same layout) or starts the
    /// new maps (fresh, replace), and records the layout.
    pub(super) fn start_persistent(&mut self, mut p: Persist) -> Result<(), DatapathError> {
        p.tcx = self.tc == crate::kernel::TcAttach::Tcx;
        // Pinned XDP links, taken over when their uplink is applied.
        if let Ok(entries) = fs::read_dir(p.pins.links()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some((mode, ifname)) = pin::parse_xdp_link(&name) {
                    p.xdp_pins
                        .insert(ifname.to_string(), (mode.to_string(), e.path()));
                }
            }
        }
        let found = p.found.clone();
        let dir = p.pins.dir.display().to_string();
        // Set first: adoption attaches through it.
        self.persist = Some(p);
        match found {
            Found::Adopt { writer } => {
                info!("bpffs {dir}: adopting the maps pinned by porin {writer} (same layout)");
                let upep = self.adopt()?;
                if let Some(p) = self.persist.as_mut() {
                    p.upep = Some(upep);
                }
            }
            Found::Fresh => {
                info!("bpffs {dir}: nothing pinned yet; pinning the maps");
                self.set_generation(0)?;
            }
            Found::Replace { retired, layout } => {
                warn!(
                    "bpffs {dir}: maps of {} moved to {}; they are replaced by new ones, each \
                     attachment switching to the new programs once its entries are written",
                    match layout {
                        Some(l) => format!("the older layout {l}"),
                        None => "an unknown layout".to_string(),
                    },
                    retired.display()
                );
                self.set_generation(0)?;
            }
        }
        pin::write_meta(&mut self.bpf, crate::VERSION)?;
        Ok(())
    }

    /// Reads back the generation and what is applied, and replaces the
    /// programs on the veths that have Porin's filters.
    fn adopt(&mut self) -> Result<EndpointAddresses, DatapathError> {
        let cfg = {
            let a = map_mut!(self.bpf, maps::CONFIG, Array<_, _>);
            a.get(&0, 0).map_err(map_err(maps::CONFIG.name, "read"))?
        };
        if cfg.ready == CONFIG_READY && cfg.generation <= 1 {
            self.generation = cfg.generation;
        } else {
            // Never written completely: the programs were dropping anyway.
            self.set_generation(0)?;
        }
        let generation = self.generation;
        let a = self.read_back()?;
        let upep = (
            read_hash(&mut self.bpf, maps::UPLINK_ENDPOINTS4)?,
            read_hash(&mut self.bpf, maps::UPLINK_ENDPOINTS6)?,
        );
        let mut took = Vec::new();
        let mut lost = Vec::new();
        for &ifindex in a.endpoints.keys() {
            let Some(name) = ifname_of(ifindex) else {
                lost.push(ifindex);
                continue;
            };
            match self.replace_programs(ifindex, &name) {
                (true, true) => {
                    took.push(name.clone());
                    self.attached.insert(
                        ifindex,
                        super::Attached {
                            name,
                            ifindex,
                            links: None,
                        },
                    );
                }
                // Neither filter: a veth that took a gone one's number.
                (false, false) => lost.push(ifindex),
                // One of two (a start that crashed midway): attached again
                // (create or replace) at the first apply.
                _ => {}
            }
        }
        // Veths an earlier daemon held (programs attached, no endpoint
        // entry: `Datapath::hold_live_veths`) are not in the endpoint map.
        // Found by their programs, they are adopted too, so they stay held
        // by this daemon instead of running an orphaned older program.
        let mut held = 0;
        for (ifindex, name) in host_interfaces() {
            if a.endpoints.contains_key(&ifindex) || self.attached.contains_key(&ifindex) {
                continue;
            }
            if self.replace_programs(ifindex, &name) == (true, true) {
                held += 1;
                self.attached.insert(
                    ifindex,
                    super::Attached {
                        name,
                        ifindex,
                        links: None,
                    },
                );
            }
        }
        if !lost.is_empty() {
            // Not attached anywhere: no program reads these connections.
            self.forget_connections(&lost)?;
            for &ifindex in &lost {
                self.unpin_tcx(ifindex);
            }
        }
        // The HTTP maps are not read back: the first successful apply
        // flips, rewrites the sets and sweeps the rules (`Datapath::sweep`
        // stays set until one succeeds).
        self.sweep = true;
        info!(
            "adopted policy generation {generation}: {} endpoints, {} policy entries; \
             programs replaced on {} veths{}{}",
            a.endpoints.len(),
            a.policy.len(),
            took.len(),
            if held == 0 {
                String::new()
            } else {
                format!(" and on {held} held veths without an endpoint")
            },
            if lost.is_empty() {
                String::new()
            } else {
                format!(", {} endpoint veths gone", lost.len())
            }
        );
        self.applied = a;
        Ok(upep)
    }

    /// What the maps hold: endpoints, addresses, networks and the policy
    /// entries of the live generation (not the HTTP maps: see `sweep`).
    pub(super) fn read_back(&mut self) -> Result<Compiled, DatapathError> {
        let generation = self.generation;
        let mut a = Compiled {
            endpoints: read_hash(&mut self.bpf, maps::ENDPOINTS)?,
            ip4: read_hash(&mut self.bpf, maps::IP4)?,
            ip6: read_hash(&mut self.bpf, maps::IP6)?,
            net4: read_lpm(&mut self.bpf, maps::NET4)?,
            net6: read_lpm(&mut self.bpf, maps::NET6)?,
            ..Default::default()
        };
        a.policy = read_hash(&mut self.bpf, maps::POLICY)?
            .into_iter()
            .filter(|(k, _)| u32::from(k.generation) == generation)
            .map(|(k, v)| (k.at(0), v))
            .collect();
        Ok(a)
    }

    fn classifier_mut(&mut self, name: &'static str) -> Result<&mut SchedClassifier, LoadError> {
        self.bpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(LoadError::MissingProgram { name })
    }

    /// Replaces the programs of Porin's existing attachments on a veth
    /// atomically; (ingress replaced, egress replaced).
    fn replace_programs(&mut self, ifindex: u32, ifname: &str) -> (bool, bool) {
        if self.persist.as_ref().is_some_and(|p| p.tcx) {
            let from = self.update_tcx(FROM_CONTAINER, true, ifindex).is_ok();
            let to = self.update_tcx(TO_CONTAINER, false, ifindex).is_ok();
            return (from, to);
        }
        let handle = self.tc_handle();
        let mut one = |program: &'static str, at: TcAttachType| -> bool {
            let Ok(prog) = self.classifier_mut(program) else {
                return false;
            };
            let Ok(link) = SchedClassifierLink::attached(ifname, at, TC_PRIORITY, handle, None)
            else {
                return false;
            };
            match prog.attach_to_link(link) {
                Ok(id) => {
                    // Not owned: the filter must outlive this process.
                    if let Ok(l) = prog.take_link(id) {
                        std::mem::forget(l);
                    }
                    true
                }
                Err(_) => false,
            }
        };
        let from = one(FROM_CONTAINER, TcAttachType::Ingress);
        let to = one(TO_CONTAINER, TcAttachType::Egress);
        (from, to)
    }

    /// Attaches both programs to `veth` as persistent filters: created, or
    /// (when a filter is there already, e.g. of an older layout) replaced.
    pub(super) fn attach_persistent(&mut self, veth: &Veth) -> Result<(), DatapathError> {
        if self.persist.as_ref().is_some_and(|p| p.tcx) {
            self.attach_tcx(FROM_CONTAINER, true, veth)?;
            if let Err(e) = self.attach_tcx(TO_CONTAINER, false, veth) {
                self.unpin_tcx(veth.ifindex);
                return Err(e);
            }
            return Ok(());
        }
        let handle = self.tc_handle();
        for (program, at) in [
            (FROM_CONTAINER, TcAttachType::Ingress),
            (TO_CONTAINER, TcAttachType::Egress),
        ] {
            let prog = self.classifier_mut(program)?;
            let id = match prog.attach_with_options(&veth.name, at, nl_options(handle)) {
                Ok(id) => id,
                Err(create) => {
                    let replaced =
                        SchedClassifierLink::attached(&veth.name, at, TC_PRIORITY, handle, None)
                            .ok()
                            .and_then(|link| prog.attach_to_link(link).ok());
                    match replaced {
                        Some(id) => id,
                        None => {
                            if program == TO_CONTAINER {
                                detach_filters(&veth.name, handle);
                            }
                            return Err(DatapathError::Attach {
                                program,
                                ifname: veth.name.clone(),
                                ifindex: veth.ifindex,
                                source: create,
                            });
                        }
                    }
                }
            };
            if let Ok(l) = prog.take_link(id) {
                std::mem::forget(l);
            }
        }
        Ok(())
    }

    /// Points the pinned TCX link of `ifindex` at `program` (atomic).
    fn update_tcx(
        &mut self,
        program: &'static str,
        ingress: bool,
        ifindex: u32,
    ) -> Result<(), String> {
        let path = self
            .persist
            .as_ref()
            .expect("persistent")
            .pins
            .tcx_link(ingress, ifindex);
        let link = PinnedLink::from_pin(&path).map_err(|e| e.to_string())?;
        let link = SchedClassifierLink::try_from(FdLink::from(link)).map_err(|e| e.to_string())?;
        let prog = self.classifier_mut(program).map_err(|e| e.to_string())?;
        let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
        // Closing our fd leaves the pinned link attached.
        drop(prog.take_link(id));
        Ok(())
    }

    /// Attaches `program` to `veth` with a TCX link first in the chain and
    /// pins it; a pinned link of the same veth is updated instead.
    fn attach_tcx(
        &mut self,
        program: &'static str,
        ingress: bool,
        veth: &Veth,
    ) -> Result<(), DatapathError> {
        let path = self
            .persist
            .as_ref()
            .expect("persistent")
            .pins
            .tcx_link(ingress, veth.ifindex);
        if path.exists() {
            if self.update_tcx(program, ingress, veth.ifindex).is_ok() {
                return Ok(());
            }
            // A dead link (its veth went away and the number was reused).
            let _ = fs::remove_file(&path);
        }
        let err = |source| DatapathError::Attach {
            program,
            ifname: veth.name.clone(),
            ifindex: veth.ifindex,
            source,
        };
        let at = if ingress {
            TcAttachType::Ingress
        } else {
            TcAttachType::Egress
        };
        let prog = self.classifier_mut(program)?;
        let id = prog
            .attach_with_options(
                &veth.name,
                at,
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .map_err(err)?;
        let link = prog.take_link(id).map_err(err)?;
        let pinned = FdLink::try_from(link)
            .map_err(|e| e.to_string())
            .and_then(|fd| fd.pin(&path).map_err(|e| e.to_string()));
        pinned.map(drop).map_err(|e| {
            err(aya::programs::ProgramError::SyscallError(
                aya::sys::SyscallError {
                    call: "bpf_obj_pin",
                    io_error: std::io::Error::other(format!(
                        "pinning the TCX link at {}: {e}",
                        path.display()
                    )),
                },
            ))
        })
    }

    /// Unpins (and so detaches) the TCX links of `ifindex`, if any.
    fn unpin_tcx(&mut self, ifindex: u32) {
        let Some(p) = &self.persist else { return };
        for ingress in [true, false] {
            let path = p.pins.tcx_link(ingress, ifindex);
            if let Ok(link) = PinnedLink::from_pin(&path) {
                drop(link.unpin());
            }
        }
    }

    /// Detaches a persistent attachment.
    pub(super) fn detach_persistent(&mut self, ifindex: u32, ifname: &str) {
        if self.persist.as_ref().is_some_and(|p| p.tcx) {
            self.unpin_tcx(ifindex);
        } else {
            detach_filters(ifname, self.tc_handle());
        }
    }

    /// The "old" side of the endpoint-address sync: what adoption found on
    /// the first apply, else what `old` implies.
    pub(super) fn upep_old(&self, old: &Compiled) -> EndpointAddresses {
        match self.persist.as_ref().and_then(|p| p.upep.clone()) {
            Some(found) => found,
            None => super::uplink::endpoint_addresses(old),
        }
    }

    /// After every successful apply: the first one ends adoption.
    pub(super) fn applied_once(&mut self) {
        let Some(p) = self.persist.as_mut() else {
            return;
        };
        p.upep = None;
        if !p.applied {
            p.applied = true;
            // Every attachment now runs the new programs: the retired maps
            // are read by nothing that stays.
            if let Ok(entries) = fs::read_dir(&p.pins.dir) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with("retired-") {
                        let removed = pin::remove_pins(&e.path());
                        info!(
                            "removed {} retired map pins in {}",
                            removed.len(),
                            e.path().display()
                        );
                    }
                }
            }
        }
    }

    /// Attaches `from_uplink` to `ifindex` through a pinned link, taking
    /// over the one pinned for this interface if there is one; returns the
    /// mode and whether it was taken over.
    pub(super) fn attach_uplink_persistent(
        &mut self,
        ifindex: u32,
        p: &UplinkPlan,
    ) -> Result<(&'static str, bool), DatapathError> {
        let pins = self.persist.as_ref().expect("persistent").pins.clone();
        let found = self
            .persist
            .as_mut()
            .and_then(|ps| ps.xdp_pins.remove(&p.interface));
        if let Some((mode, path)) = found {
            let fits = match p.mode {
                config::XdpMode::Native => mode == "native",
                config::XdpMode::Generic => mode == "generic",
                config::XdpMode::Auto => true,
            };
            let mode: &'static str = if mode == "native" {
                "native"
            } else {
                "generic"
            };
            if fits && self.take_over_xdp(&path).is_ok() {
                return Ok((mode, true));
            }
            // Another mode wanted, or a dead link (its interface went away
            // and came back): replaced by a new attachment.
            let _ = fs::remove_file(&path);
        }
        let attach_err = |source| DatapathError::Attach {
            program: super::uplink::FROM_UPLINK,
            ifname: p.interface.clone(),
            ifindex,
            source,
        };
        let prog = self.xdp()?;
        let (id, mode) = super::uplink::attach_xdp(prog, ifindex, p)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        let path = pins.xdp_link(mode, &p.interface);
        let pinned = FdLink::try_from(link)
            .map_err(|e| e.to_string())
            .and_then(|fd| fd.pin(&path).map_err(|e| e.to_string()));
        if let Err(e) = pinned {
            // Dropped here, the link is detached again: refuse rather than
            // run an uplink that vanishes with the process.
            return Err(attach_err(aya::programs::ProgramError::SyscallError(
                aya::sys::SyscallError {
                    call: "bpf_obj_pin",
                    io_error: std::io::Error::other(format!(
                        "pinning the XDP link at {}: {e}",
                        path.display()
                    )),
                },
            )));
        }
        Ok((mode, false))
    }

    fn take_over_xdp(&mut self, path: &Path) -> Result<(), String> {
        let link = PinnedLink::from_pin(path).map_err(|e| e.to_string())?;
        let link = XdpLink::try_from(FdLink::from(link)).map_err(|e| e.to_string())?;
        let prog = self.xdp().map_err(|e| e.to_string())?;
        let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
        // Closing our fd leaves the pinned link attached.
        drop(prog.take_link(id));
        Ok(())
    }

    pub(super) fn unpin_uplink(&mut self, name: &str, mode: &str) {
        let Some(p) = &self.persist else { return };
        let path = p.pins.xdp_link(mode, name);
        match PinnedLink::from_pin(&path) {
            // Unpinned and closed: the link goes, and the program with it.
            Ok(link) => drop(link.unpin()),
            Err(e) => warn!("unpinning {}: {e}", path.display()),
        }
    }

    /// Once, after the first uplink apply: detaches pinned XDP links whose
    /// uplink is no longer configured and deletes uplink map entries no
    /// attached uplink owns (configuration changed while the daemon was
    /// down).
    pub(super) fn sweep_uplinks(&mut self) -> Result<(), DatapathError> {
        let Some(p) = self.persist.as_mut() else {
            return Ok(());
        };
        if p.swept_uplinks {
            return Ok(());
        }
        p.swept_uplinks = true;
        for (ifname, (mode, path)) in std::mem::take(&mut p.xdp_pins) {
            info!(
                "uplink {ifname} ({mode}) is no longer configured: detaching its pinned XDP link"
            );
            if let Ok(link) = PinnedLink::from_pin(&path) {
                drop(link.unpin());
            }
        }
        let owned: BTreeMap<u32, UplinkPlan> = self
            .uplinks
            .values()
            .map(|a| (a.ifindex, a.plan.clone()))
            .collect();
        purge(&mut self.bpf, maps::UPLINK_CONFIG, |k| {
            !owned.contains_key(k)
        })?;
        let keep4: BTreeSet<Vec<u8>> = owned
            .iter()
            .flat_map(|(i, pl)| pl.deny4.keys().map(|pre| key_bytes(&key4(*i, pre))))
            .collect();
        purge_lpm(&mut self.bpf, maps::UPLINK_DENY4, |k| {
            !keep4.contains(&key_bytes(k))
        })?;
        let keep6: BTreeSet<Vec<u8>> = owned
            .iter()
            .flat_map(|(i, pl)| pl.deny6.keys().map(|pre| key_bytes(&key6(*i, pre))))
            .collect();
        purge_lpm(&mut self.bpf, maps::UPLINK_DENY6, |k| {
            !keep6.contains(&key_bytes(k))
        })?;
        Ok(())
    }

    /// The handle of this datapath's persistent TC filters.
    pub(super) fn tc_handle(&self) -> TcHandle {
        self.persist
            .as_ref()
            .map(|p| tc_handle(&p.pins.dir))
            .unwrap_or(TcHandle::new(0, 1))
    }

    /// Whether maps and attachments outlive this object.
    pub fn is_persistent(&self) -> bool {
        self.persist.is_some()
    }

    /// Whether this start adopted what a previous daemon left.
    pub fn adopted(&self) -> bool {
        matches!(
            self.persist.as_ref().map(|p| &p.found),
            Some(Found::Adopt { .. })
        )
    }

    /// Removes everything this datapath put in the kernel (`on_stop:
    /// detach`): filters, XDP links, then the pins. Returns what it did.
    pub fn remove_everything(&mut self) -> Vec<String> {
        let mut done = Vec::new();
        let attached: Vec<super::Attached> =
            std::mem::take(&mut self.attached).into_values().collect();
        for a in attached {
            done.push(format!("TC filters on {}", a.name));
            self.detach(a);
        }
        let uplinks = std::mem::take(&mut self.uplinks);
        for (name, a) in uplinks {
            done.push(format!("XDP on {name}"));
            if let Err(e) = self.detach_uplink(&name, a) {
                warn!("{e}");
            }
        }
        if let Some(p) = &self.persist {
            // The gate's links first, detached at once (removing their pins
            // alone detaches them only when the kernel frees them).
            match super::gate::uninstall(&p.pins.dir) {
                Ok(r) if r.links > 0 => done.push(format!("quarantine gate ({} links)", r.links)),
                Ok(_) => {}
                Err(e) => warn!("{e}"),
            }
            let n = pin::remove_pins(&p.pins.dir).len();
            done.push(format!("{n} pins in {}", p.pins.dir.display()));
        }
        done
    }
}

fn key_bytes<K: aya::Pod>(k: &aya::maps::lpm_trie::Key<K>) -> Vec<u8> {
    let mut v = k.prefix_len().to_ne_bytes().to_vec();
    // SAFETY: K is Pod (plain bytes).
    let data = k.data();
    let bytes = unsafe {
        std::slice::from_raw_parts((&data as *const K).cast::<u8>(), std::mem::size_of::<K>())
    };
    v.extend_from_slice(bytes);
    v
}

/// `porin uninstall`: removes everything Porin put in the kernel under
/// bpffs directory `dir`, with or without a daemon: its TC filters (on
/// any interface), every pinned link (XDP and any other), and the pins.
/// Returns one line per thing removed.
pub fn uninstall(dir: &Path) -> Result<Vec<String>, String> {
    let pins = PinDir::new(dir);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut done = Vec::new();
    let gate = super::gate::uninstall(dir).map_err(|e| e.to_string())?;
    if gate.links > 0 {
        done.push(format!(
            "detached the quarantine gate ({} links)",
            gate.links
        ));
    }
    // Every interface, not only those `PORIN_ENDP_V1` lists: a filter whose
    // endpoint entry is gone (a start that crashed midway) must go too. The
    // handle is this directory's own, so other installations' filters stay.
    let handle = tc_handle(dir);
    if let Ok(entries) = fs::read_dir("/sys/class/net") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = detach_filters(&name, handle);
            if n > 0 {
                done.push(format!("removed {n} TC filters from {name}"));
            }
        }
    }
    fn links(d: &Path, done: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(d) else { return };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                links(&path, done);
            } else if let Ok(link) = PinnedLink::from_pin(&path) {
                if link.unpin().is_ok() {
                    done.push(format!("detached and unpinned link {}", path.display()));
                }
            }
        }
    }
    links(&pins.links(), &mut done);
    let removed = pin::remove_pins(dir);
    if !removed.is_empty() {
        done.push(format!(
            "removed {} map pins and {}",
            removed.len(),
            dir.display()
        ));
    }
    Ok(done)
}
