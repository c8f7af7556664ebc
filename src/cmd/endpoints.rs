//! `porin endpoints`: a one-shot scan of the node's containers, printed as a
//! table or as JSON. Works without the daemon.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::discovery::{
    endpoint::{short_id, Endpoint},
    scanner::{ScanOutcome, Scanner},
};

/// How long a one-shot scan waits for containers that are still starting.
const SETTLE: Duration = Duration::from_secs(2);

/// Scans once (waiting up to [`SETTLE`] for containers still starting).
pub fn scan_settled(
    scanner: &mut Scanner,
) -> Result<ScanOutcome, crate::discovery::scanner::ScanError> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let outcome = scanner.scan(false)?;
        if outcome.pending.is_empty() || Instant::now() >= deadline {
            return Ok(outcome);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One endpoint as `-o json` prints it.
#[derive(Serialize)]
pub struct EndpointView<'a> {
    pub id: &'a str,
    pub runtime: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub namespace: &'a str,
    pub name: &'a str,
    pub image: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    pub cgroup: &'a str,
    pub pids: &'a [u32],
    pub netns_inode: u64,
    pub host_network: bool,
    pub interfaces: Vec<InterfaceView<'a>>,
    /// The runtime's file the name and labels came from.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub labels_from: &'a str,
    /// Where the network namespace was read from.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub netns_from: &'a str,
    /// Threads in another network namespace: the container is held to the
    /// strictest verdict while there are any.
    #[serde(skip_serializing_if = "<[u32]>::is_empty")]
    pub foreign_netns: &'a [u32],
    /// `ready`, or `pending` while the container is still starting.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<&'a str>,
}

#[derive(Serialize)]
pub struct InterfaceView<'a> {
    pub name: &'a str,
    pub ifindex: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    pub addresses: Vec<String>,
    /// Addresses set in the container that the host does not route to it
    /// (they get no identity).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unrouted: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_veth: Option<HostVethView<'a>>,
}

#[derive(Serialize)]
pub struct HostVethView<'a> {
    pub ifindex: u32,
    pub name: &'a str,
}

impl<'a> EndpointView<'a> {
    pub fn new(ep: &'a Endpoint, pending_reason: Option<&'a str>) -> Self {
        EndpointView {
            id: &ep.key.id,
            runtime: ep.key.runtime.as_str(),
            namespace: &ep.key.namespace,
            name: &ep.name,
            image: &ep.image,
            labels: &ep.labels,
            annotations: &ep.annotations,
            cgroup: &ep.cgroup,
            pids: &ep.pids,
            netns_inode: ep.netns_inode,
            host_network: ep.host_network,
            interfaces: ep
                .interfaces
                .iter()
                .map(|i| InterfaceView {
                    name: &i.name,
                    ifindex: i.ifindex,
                    mac: i.mac.map(|m| {
                        m.iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":")
                    }),
                    addresses: i.addrs.iter().map(ToString::to_string).collect(),
                    unrouted: i.unrouted.iter().map(ToString::to_string).collect(),
                    host_veth: i.host_peer.as_ref().map(|p| HostVethView {
                        ifindex: p.ifindex,
                        name: &p.name,
                    }),
                })
                .collect(),
            labels_from: &ep.labels_from,
            netns_from: &ep.netns_from,
            foreign_netns: &ep.foreign_netns,
            state: if pending_reason.is_some() {
                "pending"
            } else {
                "ready"
            },
            pending_reason,
        }
    }
}

/// All endpoints of `outcome`, ready first, each group by name.
pub fn views(outcome: &ScanOutcome) -> Vec<EndpointView<'_>> {
    let mut v: Vec<EndpointView<'_>> = outcome
        .ready
        .iter()
        .map(|e| EndpointView::new(e, None))
        .chain(
            outcome
                .pending
                .iter()
                .map(|p| EndpointView::new(&p.endpoint, Some(p.reason.as_str()))),
        )
        .collect();
    v.sort_by(|a, b| (a.state != "ready", a.name).cmp(&(b.state != "ready", b.name)));
    v
}

/// The readable table.
pub fn table(views: &[EndpointView<'_>]) -> String {
    let header = [
        "ID",
        "RUNTIME",
        "NAME",
        "IMAGE",
        "ADDRESSES",
        "HOST VETH",
        "LABELS",
    ];
    let rows: Vec<[String; 7]> = views
        .iter()
        .map(|v| {
            let runtime = if v.namespace.is_empty() {
                v.runtime.to_string()
            } else {
                format!("{}/{}", v.runtime, v.namespace)
            };
            let addresses = if v.host_network {
                "(host network)".to_string()
            } else if let Some(reason) = v.pending_reason {
                format!("(pending: {reason})")
            } else {
                let a: Vec<&str> = v
                    .interfaces
                    .iter()
                    .flat_map(|i| i.addresses.iter().map(String::as_str))
                    .filter(|a| !a.starts_with("fe80:"))
                    .collect();
                if a.is_empty() {
                    "-".into()
                } else {
                    a.join(",")
                }
            };
            let veths: Vec<String> = v
                .interfaces
                .iter()
                .filter_map(|i| {
                    i.host_veth
                        .as_ref()
                        .map(|h| format!("{} ({})", h.name, h.ifindex))
                })
                .collect();
            let labels: Vec<String> = v
                .labels
                .iter()
                .map(|(k, val)| format!("{k}={val}"))
                .collect();
            [
                short_id(v.id).to_string(),
                runtime,
                v.name.to_string(),
                if v.image.is_empty() {
                    "-".into()
                } else {
                    v.image.to_string()
                },
                addresses,
                if veths.is_empty() {
                    "-".into()
                } else {
                    veths.join(",")
                },
                if labels.is_empty() {
                    "-".into()
                } else {
                    labels.join(",")
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}
