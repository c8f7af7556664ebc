//! The uplinks: `from_uplink` attached with XDP to each interface the
//! config lists under `uplinks`, and the maps it reads that are its own
//! (layout in [`porin_common::uplink`]).
//!
//! * [`plan`] turns the config into what each uplink needs: its flood
//!   limits (as token-bucket costs) and its `deny_from` prefixes;
//! * [`Datapath::apply_uplinks`] makes the maps and attachments equal the
//!   plan: on start, on every reload and after every discovery event, so an
//!   interface that was missing is attached once it appears;
//! * [`endpoint_addresses`] gives the container address → host veth map
//!   the manager keeps in step with each policy apply.
//!
//! Order, so the program never runs on an interface without its entries:
//! config and deny entries are written before attaching, and removed after
//! detaching. New deny prefixes are inserted before stale ones are removed,
//! so a reload never opens a gap in a deny list that keeps a prefix.
//! A missing interface is logged (once until it comes back) and skipped.
//! Without pins (tests) links are owned by the loaded object and detached
//! when it is dropped; the daemon pins them (see [`super::persist`]): they
//! outlive it and the next start takes them over.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use aya::{
    maps::{lpm_trie::Key, HashMap as BpfHashMap, LpmTrie, MapData},
    programs::{xdp::XdpLinkId, Xdp, XdpMode},
};
use log::{error, info, warn};
use porin_common::{
    datapath::Identity,
    uplink::{deny4_key, deny6_key, UplinkConfig},
};

use super::{ifindex_of, map_err, Datapath, DatapathError};
use crate::{
    config::{self, Config},
    ebpf::LoadError,
    maps,
    policy::{identity::network_identity, Compiled, Prefix4, Prefix6},
};

/// Program name in the eBPF object.
pub const FROM_UPLINK: &str = "from_uplink";

/// What one uplink should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkPlan {
    pub interface: String,
    pub mode: config::XdpMode,
    pub limits: UplinkConfig,
    /// `deny_from` networks' prefixes with the network's identity (for
    /// flow events).
    pub deny4: BTreeMap<Prefix4, Identity>,
    pub deny6: BTreeMap<Prefix6, Identity>,
}

/// The uplinks the config asks for.
pub fn plan(cfg: &Config) -> Vec<UplinkPlan> {
    cfg.uplinks
        .iter()
        .map(|u| {
            let (syn_cost_ns, syn_burst_ns, udp_cost_ns, udp_burst_ns) = match &u.flood {
                Some(f) => {
                    let (sc, sb) = UplinkConfig::limit(f.syn_per_second, f.burst);
                    let (uc, ub) = UplinkConfig::limit(f.udp_per_second, f.burst);
                    (sc, sb, uc, ub)
                }
                None => (0, 0, 0, 0),
            };
            let mut deny4 = BTreeMap::new();
            let mut deny6 = BTreeMap::new();
            for peer in &u.deny_from {
                let id = network_identity(&peer.name);
                let Some(net) = cfg.networks.iter().find(|n| n.name == peer.name) else {
                    continue; // validation guarantees it exists
                };
                for cidr in &net.cidrs {
                    let len = cidr.prefix_len();
                    match cidr.addr() {
                        IpAddr::V4(a) => {
                            deny4
                                .entry(Prefix4 {
                                    addr: a.octets(),
                                    len,
                                })
                                .or_insert(id);
                        }
                        IpAddr::V6(a) => {
                            deny6
                                .entry(Prefix6 {
                                    addr: a.octets(),
                                    len,
                                })
                                .or_insert(id);
                        }
                    }
                }
            }
            UplinkPlan {
                interface: u.interface.clone(),
                mode: u.xdp_mode,
                limits: UplinkConfig {
                    syn_cost_ns,
                    syn_burst_ns,
                    udp_cost_ns,
                    udp_burst_ns,
                },
                deny4,
                deny6,
            }
        })
        .collect()
}

/// IPv4 and IPv6 container addresses → host veth ifindex.
pub type EndpointAddresses = (BTreeMap<[u8; 4], u32>, BTreeMap<[u8; 16], u32>);

/// Container addresses → their host veth, for `PORIN_UPEP4_V1` and
/// `PORIN_UPEP6_V1`: every address of an enforced endpoint under the host
/// veth of the interface that carries it (`Member::addr_veths`), so an
/// endpoint with several veths has each address under its own veth. The
/// TC programs check addresses against it (`porin_common::spoof`: a
/// missing entry makes the address nobody's), the uplink finds a
/// container's conntrack through it. An address two endpoints list (stale
/// discovery) stays with the first in member order.
pub fn endpoint_addresses(c: &Compiled) -> EndpointAddresses {
    let mut v4 = BTreeMap::new();
    let mut v6 = BTreeMap::new();
    for m in &c.members {
        for (a, ifindex) in &m.addr_veths {
            match a {
                IpAddr::V4(a) => {
                    v4.entry(a.octets()).or_insert(*ifindex);
                }
                IpAddr::V6(a) => {
                    v6.entry(a.octets()).or_insert(*ifindex);
                }
            }
        }
    }
    (v4, v6)
}

/// Host veth → the bridge it is enslaved to, for `PORIN_VBR_V1`: where
/// TC accepts a container's address as a source besides its veth (packets
/// the host routed, `porin_common::spoof`). Written and removed with the
/// address owners.
pub fn veth_bridges(c: &Compiled) -> BTreeMap<u32, u32> {
    c.members
        .iter()
        .flat_map(|m| m.bridges.iter().copied())
        .collect()
}

/// One attached uplink.
pub(super) struct AttachedUplink {
    pub(super) ifindex: u32,
    /// aya's link, or None for a pinned one (see [`super::pin`]).
    link: Option<XdpLinkId>,
    /// "native" or "generic".
    pub(super) mode: &'static str,
    pub(super) plan: UplinkPlan,
}

/// What [`Datapath::apply_uplinks`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UplinkReport {
    /// `name (mode)` of the uplinks attached by this call.
    pub attached: Vec<String>,
    pub detached: Vec<String>,
    /// Configured uplinks whose interface does not exist or refused XDP.
    pub failed: Vec<String>,
}

impl Datapath {
    /// Makes the uplink attachments and maps equal `plans` (see the module
    /// notes for the order).
    pub fn apply_uplinks(&mut self, plans: &[UplinkPlan]) -> Result<UplinkReport, DatapathError> {
        let mut report = UplinkReport::default();
        let wanted: BTreeMap<&str, &UplinkPlan> =
            plans.iter().map(|p| (p.interface.as_str(), p)).collect();
        // Detach what is gone, moved to another ifindex, or changed mode.
        let stale: Vec<String> = self
            .uplinks
            .iter()
            .filter(|(name, a)| match wanted.get(name.as_str()) {
                None => true,
                Some(p) => p.mode != a.plan.mode || ifindex_of(name) != Some(a.ifindex),
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(a) = self.uplinks.remove(&name) {
                self.detach_uplink(&name, a)?;
                report.detached.push(name);
            }
        }
        for p in plans {
            let Some(ifindex) = ifindex_of(&p.interface) else {
                if self.missing_uplinks.insert(p.interface.clone()) {
                    error!(
                        "uplink {}: no such interface; not filtered until it exists \
                         (retried on every reload and discovery event)",
                        p.interface
                    );
                }
                report.failed.push(p.interface.clone());
                continue;
            };
            self.missing_uplinks.remove(&p.interface);
            let old = self.uplinks.get(&p.interface).map(|a| a.plan.clone());
            self.write_uplink_maps(ifindex, p, old.as_ref())?;
            if let Some(a) = self.uplinks.get_mut(&p.interface) {
                a.plan = p.clone();
                continue;
            }
            let attached = if self.persist.is_some() {
                self.attach_uplink_persistent(ifindex, p)
                    .map(|(mode, adopted)| {
                        if adopted {
                            info!("uplink {}: took over its pinned XDP link", p.interface);
                        }
                        AttachedUplink {
                            ifindex,
                            link: None,
                            mode,
                            plan: p.clone(),
                        }
                    })
            } else {
                self.attach_uplink(ifindex, p)
            };
            match attached {
                Ok(a) => {
                    info!(
                        "attached from_uplink to {} (ifindex {ifindex}) in {} XDP mode; \
                         {} deny-listed prefixes",
                        p.interface,
                        a.mode,
                        p.deny4.len() + p.deny6.len()
                    );
                    report
                        .attached
                        .push(format!("{} ({})", p.interface, a.mode));
                    self.uplinks.insert(p.interface.clone(), a);
                }
                Err(e) => {
                    error!("uplink {}: {e}; not filtered", p.interface);
                    self.clear_uplink_maps(ifindex, p)?;
                    report.failed.push(p.interface.clone());
                }
            }
        }
        self.sweep_uplinks()?;
        Ok(report)
    }

    /// Names and XDP modes of the attached uplinks, for status and logs.
    pub fn uplinks(&self) -> Vec<(String, &'static str)> {
        self.uplinks
            .iter()
            .map(|(n, a)| (n.clone(), a.mode))
            .collect()
    }

    pub(super) fn xdp(&mut self) -> Result<&mut Xdp, DatapathError> {
        Ok(self
            .bpf
            .program_mut(FROM_UPLINK)
            .and_then(|p| p.try_into().ok())
            .ok_or(LoadError::MissingProgram { name: FROM_UPLINK })?)
    }

    fn attach_uplink(
        &mut self,
        ifindex: u32,
        p: &UplinkPlan,
    ) -> Result<AttachedUplink, DatapathError> {
        let (link, mode) = attach_xdp(self.xdp()?, ifindex, p)?;
        Ok(AttachedUplink {
            ifindex,
            link: Some(link),
            mode,
            plan: p.clone(),
        })
    }

    pub(super) fn detach_uplink(
        &mut self,
        name: &str,
        a: AttachedUplink,
    ) -> Result<(), DatapathError> {
        // An interface that went away took the attachment with it.
        match a.link {
            Some(link) => {
                if let Err(e) = self.xdp()?.detach(link) {
                    warn!("detaching from_uplink from {name}: {e}");
                }
            }
            None => self.unpin_uplink(name, a.mode),
        }
        info!("detached from_uplink from {name}");
        self.clear_uplink_maps(a.ifindex, &a.plan)
    }

    /// Writes `p`'s config and deny prefixes under `ifindex`, removing the
    /// prefixes of `old` that `p` no longer has.
    pub(super) fn write_uplink_maps(
        &mut self,
        ifindex: u32,
        p: &UplinkPlan,
        old: Option<&UplinkPlan>,
    ) -> Result<(), DatapathError> {
        {
            let mut m = map_mut!(self.bpf, maps::UPLINK_CONFIG, BpfHashMap<_, _, _>);
            m.insert(ifindex, p.limits, 0)
                .map_err(map_err(maps::UPLINK_CONFIG.name, "insert"))?;
        }
        {
            let mut t = map_mut!(self.bpf, maps::UPLINK_DENY4, LpmTrie<_, _, _>);
            for (pre, id) in &p.deny4 {
                t.insert(&key4(ifindex, pre), id, 0)
                    .map_err(map_err(maps::UPLINK_DENY4.name, "insert"))?;
            }
            for pre in old.iter().flat_map(|o| o.deny4.keys()) {
                if !p.deny4.contains_key(pre) {
                    let _ = t.remove(&key4(ifindex, pre));
                }
            }
        }
        let mut t = map_mut!(self.bpf, maps::UPLINK_DENY6, LpmTrie<_, _, _>);
        for (pre, id) in &p.deny6 {
            t.insert(&key6(ifindex, pre), id, 0)
                .map_err(map_err(maps::UPLINK_DENY6.name, "insert"))?;
        }
        for pre in old.iter().flat_map(|o| o.deny6.keys()) {
            if !p.deny6.contains_key(pre) {
                let _ = t.remove(&key6(ifindex, pre));
            }
        }
        Ok(())
    }

    fn clear_uplink_maps(&mut self, ifindex: u32, p: &UplinkPlan) -> Result<(), DatapathError> {
        {
            let mut m = map_mut!(self.bpf, maps::UPLINK_CONFIG, BpfHashMap<_, _, _>);
            let _ = m.remove(&ifindex);
        }
        {
            let mut t = map_mut!(self.bpf, maps::UPLINK_DENY4, LpmTrie<_, _, _>);
            for pre in p.deny4.keys() {
                let _ = t.remove(&key4(ifindex, pre));
            }
        }
        let mut t = map_mut!(self.bpf, maps::UPLINK_DENY6, LpmTrie<_, _, _>);
        for pre in p.deny6.keys() {
            let _ = t.remove(&key6(ifindex, pre));
        }
        Ok(())
    }

    /// Brings `PORIN_UPEP4_V1` / `PORIN_UPEP6_V1` from `old`'s endpoint
    /// addresses to `new`'s, and `PORIN_VBR_V1` to `new`'s bridges: `add`
    /// writes new and changed entries, `!add` removes the ones that are
    /// gone (the manager calls both, around its endpoint-entry updates). A
    /// missing address entry makes the uplink pass and TC refuse the
    /// address (nobody's); a missing bridge entry refuses the container's
    /// routed packets.
    pub(super) fn sync_endpoint_addresses(
        &mut self,
        old: &EndpointAddresses,
        new: &Compiled,
        add: bool,
    ) -> Result<(), DatapathError> {
        let (o4, o6) = old;
        let (n4, n6) = endpoint_addresses(new);
        {
            let mut m = map_mut!(self.bpf, maps::UPLINK_ENDPOINTS4, BpfHashMap<_, _, _>);
            sync(&mut m, o4, &n4, add).map_err(map_err(maps::UPLINK_ENDPOINTS4.name, "update"))?;
        }
        {
            let mut m = map_mut!(self.bpf, maps::UPLINK_ENDPOINTS6, BpfHashMap<_, _, _>);
            sync(&mut m, o6, &n6, add).map_err(map_err(maps::UPLINK_ENDPOINTS6.name, "update"))?;
        }
        // Veth → bridge, diffed against what the map holds (it is small).
        let want = veth_bridges(new);
        let mut m = map_mut!(self.bpf, maps::VETH_BRIDGES, BpfHashMap<_, _, _>);
        let held = m
            .iter()
            .collect::<Result<BTreeMap<u32, u32>, _>>()
            .map_err(map_err(maps::VETH_BRIDGES.name, "read"))?;
        sync(&mut m, &held, &want, add).map_err(map_err(maps::VETH_BRIDGES.name, "update"))
    }
}

fn sync<K: aya::Pod + Ord>(
    m: &mut BpfHashMap<&mut MapData, K, u32>,
    old: &BTreeMap<K, u32>,
    new: &BTreeMap<K, u32>,
    add: bool,
) -> Result<(), aya::maps::MapError> {
    if add {
        for (k, v) in new {
            if old.get(k) != Some(v) {
                m.insert(k, v, 0)?;
            }
        }
    } else {
        let gone: BTreeSet<&K> = old.keys().filter(|k| !new.contains_key(k)).collect();
        for k in gone {
            let _ = m.remove(k);
        }
    }
    Ok(())
}

/// Attaches `prog` to `ifindex` in the mode the plan asks for (`auto`:
/// native, else generic, with a warning); returns the link and the mode's
/// name. Shared by the plain and the persistent (pinned link) attachment.
pub(super) fn attach_xdp(
    prog: &mut Xdp,
    ifindex: u32,
    p: &UplinkPlan,
) -> Result<(XdpLinkId, &'static str), DatapathError> {
    let attach_err = |source| DatapathError::Attach {
        program: FROM_UPLINK,
        ifname: p.interface.clone(),
        ifindex,
        source,
    };
    Ok(match p.mode {
        config::XdpMode::Native => (
            prog.attach_to_if_index(ifindex, XdpMode::Driver)
                .map_err(attach_err)?,
            "native",
        ),
        config::XdpMode::Generic => (
            prog.attach_to_if_index(ifindex, XdpMode::Skb)
                .map_err(attach_err)?,
            "generic",
        ),
        config::XdpMode::Auto => match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(link) => (link, "native"),
            Err(e) => {
                warn!(
                    "uplink {}: native XDP refused ({e}); using generic XDP",
                    p.interface
                );
                (
                    prog.attach_to_if_index(ifindex, XdpMode::Skb)
                        .map_err(attach_err)?,
                    "generic",
                )
            }
        },
    })
}

pub(super) fn key4(ifindex: u32, p: &Prefix4) -> Key<[u8; 8]> {
    Key::new(32 + u32::from(p.len), deny4_key(ifindex, p.addr))
}

pub(super) fn key6(ifindex: u32, p: &Prefix6) -> Key<[u8; 20]> {
    Key::new(32 + u32::from(p.len), deny6_key(ifindex, &p.addr))
}
