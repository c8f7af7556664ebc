//! Recorded flows ([`FlowView`]s from the daemon's history or the flow
//! log) → what was seen: the containers, the host's addresses and the
//! connections' first packets and HTTP requests ([`Observed`]).
//!
//! Which records count as a connection's start:
//! * `NEW_FLOW` (allowed; a conntrack entry was made): always;
//! * `DROP` with `POLICY_DENIED`, audited or dropped: audit mode makes no
//!   conntrack entry for what it lets pass, so every packet of such a flow
//!   is a record, replies included. A packet whose reversed tuple started
//!   a flow earlier is a reply; a TCP packet with flags other than a SYN
//!   without ACK continues a connection; a packet whose tuple was counted
//!   at the same veth before is a later packet of that flow (records
//!   written before TCP flags were recorded have none: the tuple rules
//!   alone tell them apart);
//! * `L7_HTTP` with a method and path: an HTTP request.
//!
//! Anything else (other drop reasons: malformed, spoofed, ...) is counted
//! in [`Observed::skipped`] and left out: no policy decides it.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
};

use crate::flows::record::{FlowView, PeerView};

/// One side of a connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// A container, by its id ([`Observed::containers`]).
    Container(String),
    /// The node itself.
    Host,
    /// An address that is no container's and not the host's (`world` or a
    /// named network).
    Outside(IpAddr),
}

/// A container as the records describe it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub runtime: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Its addresses, each with the host veth it was seen on when the
    /// container was the record's subject (None: only seen as a peer).
    pub addrs: BTreeMap<IpAddr, Option<u32>>,
}

/// An HTTP request of an `L7_HTTP` record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Request {
    pub method: String,
    /// Without its query string.
    pub path: String,
    /// The record kept only the path's first 64 bytes.
    pub truncated: bool,
}

/// A connection's first packet (or an HTTP request on it), as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub time: String,
    /// Recorded at the container's `from_container` (it sends) rather than
    /// `to_container`.
    pub egress: bool,
    /// Host veth of the record's subject.
    pub ifindex: u32,
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// IP protocol number.
    pub protocol: u8,
    pub tcp_flags: u8,
    pub src: Peer,
    pub dst: Peer,
    /// Set for an HTTP request record.
    pub http: Option<Request>,
}

impl Seen {
    /// The port a policy names: the destination port for TCP and UDP, 0
    /// otherwise (`porin_common::decide::policy_port`).
    pub fn port(&self) -> u16 {
        match self.protocol {
            6 | 17 => self.dport,
            _ => 0,
        }
    }
}

/// Everything [`observe`] took from the records.
#[derive(Debug, Default)]
pub struct Observed {
    /// By container id.
    pub containers: BTreeMap<String, Container>,
    pub host_addrs: BTreeSet<IpAddr>,
    /// Connection starts and HTTP requests, oldest first.
    pub flows: Vec<Seen>,
    /// Records inside the time window.
    pub records: usize,
    /// Records left out, by why.
    pub skipped: BTreeMap<String, usize>,
    /// Time of the first and last record used.
    pub first: Option<String>,
    pub last: Option<String>,
}

/// (saddr, sport, daddr, dport, protocol).
type Tuple = (IpAddr, u16, IpAddr, u16, u8);

/// Reads `views` (any order) from `since_ns` on (nanoseconds since the
/// epoch; None: all).
pub fn observe(views: &[FlowView], since_ns: Option<u64>) -> Observed {
    let mut sorted: Vec<(u64, &FlowView)> = Vec::with_capacity(views.len());
    let mut out = Observed::default();
    for v in views {
        match parse_rfc3339(&v.time) {
            Some(t) if since_ns.is_none_or(|s| t >= s) => sorted.push((t, v)),
            Some(_) => {}
            None => skip(&mut out, "records with an unreadable time"),
        }
    }
    sorted.sort_by_key(|(t, _)| *t);
    // Tuples (saddr, sport, daddr, dport, protocol) that started a flow.
    let mut starts: HashSet<Tuple> = HashSet::new();
    // The same, with the host veth they were recorded at.
    let mut counted: HashSet<(u32, Tuple)> = HashSet::new();
    for (_, v) in sorted {
        out.records += 1;
        let Some(s) = seen(v) else {
            skip(&mut out, "records without addresses or protocol");
            continue;
        };
        let reason = v.drop_reason_desc.as_deref().unwrap_or("");
        let use_it = match (v.event_type.as_str(), v.verdict.as_str()) {
            ("L7_HTTP", _) => {
                if s.http.is_none() {
                    skip(&mut out, "HTTP records without a known method");
                }
                s.http.is_some()
            }
            ("NEW_FLOW", "FORWARDED") => true,
            ("DROP", "AUDIT" | "DROPPED") if reason == "POLICY_DENIED" => {
                let tuple = (s.saddr, s.sport, s.daddr, s.dport, s.protocol);
                if starts.contains(&(s.daddr, s.dport, s.saddr, s.sport, s.protocol)) {
                    skip(&mut out, "replies");
                    false
                } else if s.protocol == 6 && s.tcp_flags != 0 && s.tcp_flags & 0x12 != 0x02 {
                    skip(&mut out, "TCP packets after the SYN");
                    false
                } else if counted.contains(&(s.ifindex, tuple)) {
                    // Records without TCP flags (before they were
                    // recorded), retransmissions, repeated datagrams.
                    skip(&mut out, "later packets of a flow already counted");
                    false
                } else {
                    true
                }
            }
            (kind, verdict) => {
                skip(
                    &mut out,
                    &format!("{kind} {verdict} {reason} (not a policy decision)"),
                );
                false
            }
        };
        if !use_it {
            continue;
        }
        if s.http.is_none() {
            let tuple = (s.saddr, s.sport, s.daddr, s.dport, s.protocol);
            starts.insert(tuple);
            counted.insert((s.ifindex, tuple));
        }
        note_side(
            &mut out,
            &v.source,
            &s.src,
            s.saddr,
            s.egress.then_some(s.ifindex),
        );
        note_side(
            &mut out,
            &v.destination,
            &s.dst,
            s.daddr,
            (!s.egress).then_some(s.ifindex),
        );
        if out.first.is_none() {
            out.first = Some(v.time.clone());
        }
        out.last = Some(v.time.clone());
        out.flows.push(s);
    }
    out
}

fn skip(out: &mut Observed, why: &str) {
    *out.skipped.entry(why.to_string()).or_default() += 1;
}

fn note_side(out: &mut Observed, p: &PeerView, peer: &Peer, addr: IpAddr, veth: Option<u32>) {
    match peer {
        Peer::Host => {
            out.host_addrs.insert(addr);
        }
        Peer::Outside(_) => {}
        Peer::Container(id) => {
            let c = out
                .containers
                .entry(id.clone())
                .or_insert_with(|| Container {
                    id: id.clone(),
                    ..Container::default()
                });
            // The latest record's view of the container wins.
            c.name.clone_from(&p.container_name);
            c.runtime.clone_from(&p.runtime);
            c.image.clone_from(&p.image);
            c.labels = p
                .labels
                .iter()
                .map(|l| match l.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (l.clone(), String::new()),
                })
                .collect();
            let slot = c.addrs.entry(addr).or_insert(None);
            if veth.is_some() {
                *slot = veth;
            }
        }
    }
}

fn peer(p: &PeerView, addr: IpAddr) -> Peer {
    if !p.container_id.is_empty() {
        Peer::Container(p.container_id.clone())
    } else if p.identity_name == "host" {
        Peer::Host
    } else {
        Peer::Outside(addr)
    }
}

fn seen(v: &FlowView) -> Option<Seen> {
    let saddr: IpAddr = v.source.ip.parse().ok()?;
    let daddr: IpAddr = v.destination.ip.parse().ok()?;
    let protocol = match v.protocol.as_str() {
        "TCP" => 6,
        "UDP" => 17,
        "ICMPv4" => 1,
        "ICMPv6" => 58,
        other => other.strip_prefix("IP/")?.parse().ok()?,
    };
    let tcp_flags = v
        .tcp_flags
        .iter()
        .map(|f| match f.as_str() {
            "FIN" => 0x01,
            "SYN" => 0x02,
            "RST" => 0x04,
            "PSH" => 0x08,
            "ACK" => 0x10,
            _ => 0,
        })
        .fold(0, |a, b| a | b);
    let http = v.l7_http.as_ref().and_then(|h| {
        if h.method.is_empty() || h.method == "?" || !h.url.starts_with('/') {
            return None;
        }
        let path = h.url.split('?').next().unwrap_or_default().to_string();
        Some(Request {
            method: h.method.clone(),
            truncated: h.url.len() >= porin_common::flow::HTTP_PATH_BYTES && !h.url.contains('?'),
            path,
        })
    });
    Some(Seen {
        time: v.time.clone(),
        egress: v.traffic_direction == "EGRESS",
        ifindex: v.interface.index,
        saddr,
        daddr,
        sport: v.source.port,
        dport: v.destination.port,
        protocol,
        tcp_flags,
        src: peer(&v.source, saddr),
        dst: peer(&v.destination, daddr),
        http,
    })
}

/// Nanoseconds since the epoch of `2024-05-01T12:00:00.123456789Z` (the
/// form [`crate::flows::record::rfc3339`] writes; fewer fraction digits
/// and none are accepted too).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let frac = &s[19..s.len() - 1];
    let nanos = match frac.strip_prefix('.') {
        None if frac.is_empty() => 0,
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|c| c.is_ascii_digit()) => {
            f.parse::<u64>().ok()? * 10u64.pow(9 - f.len() as u32)
        }
        _ => return None,
    };
    let days = days_from_civil(y as i64, mo as i64, d as i64);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + mi * 60 + sec;
    Some(secs * 1_000_000_000 + nanos)
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm, the inverse of
/// `record::civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::flows::record::{rfc3339, HttpView, InterfaceView};

    pub fn container(name: &str, ip: &str, port: u16, labels: &[&str]) -> PeerView {
        PeerView {
            identity: 7,
            identity_name: "unmanaged".into(),
            ip: ip.into(),
            port,
            container_name: name.into(),
            container_id: format!("id-{name}"),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            runtime: "podman".into(),
            image: "localhost/app:1".into(),
        }
    }

    pub fn outside(name: &str, ip: &str, port: u16) -> PeerView {
        PeerView {
            identity: 2,
            identity_name: name.into(),
            ip: ip.into(),
            port,
            ..PeerView::default()
        }
    }

    /// A TCP SYN `src` → `dst` at `ifindex`, allowed (a new flow).
    pub fn flow(t: u64, egress: bool, ifindex: u32, src: PeerView, dst: PeerView) -> FlowView {
        FlowView {
            time: rfc3339(t * 1_000_000_000),
            verdict: "FORWARDED".into(),
            drop_reason_desc: None,
            event_type: "NEW_FLOW".into(),
            traffic_direction: if egress { "EGRESS" } else { "INGRESS" }.into(),
            ip_version: 4,
            protocol: "TCP".into(),
            source: src,
            destination: dst,
            tcp_flags: vec!["SYN".into()],
            interface: InterfaceView {
                index: ifindex,
                name: format!("veth{ifindex}"),
            },
            bytes: 74,
            policy: String::new(),
            l7_http: None,
            l7_mqtt: None,
        }
    }

    pub fn audited(mut v: FlowView, flags: &[&str]) -> FlowView {
        v.verdict = "AUDIT".into();
        v.event_type = "DROP".into();
        v.drop_reason_desc = Some("POLICY_DENIED".into());
        v.tcp_flags = flags.iter().map(|s| s.to_string()).collect();
        v
    }

    pub fn http(mut v: FlowView, method: &str, url: &str) -> FlowView {
        v.event_type = "L7_HTTP".into();
        v.tcp_flags = vec!["ACK".into(), "PSH".into()];
        v.l7_http = Some(HttpView {
            method: method.into(),
            url: url.into(),
        });
        v
    }

    pub fn udp(mut v: FlowView) -> FlowView {
        v.protocol = "UDP".into();
        v.tcp_flags.clear();
        v
    }

    #[test]
    fn times_read_back_what_records_write() {
        for ns in [0, 1_700_000_000_123_456_789, 951_782_400_000_000_000] {
            assert_eq!(parse_rfc3339(&rfc3339(ns)), Some(ns));
        }
        assert_eq!(
            parse_rfc3339("2026-12-03T20:00:00Z"),
            Some(1_796_328_000_000_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-12-03T20:00:00.5Z"),
            Some(1_796_328_000_500_000_000)
        );
        for bad in [
            "",
            "2026-12-03 20:00:00Z",
            "2026-13-03T20:00:00Z",
            "2026-12-03T20:00:00.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn starts_replies_and_requests_are_told_apart() {
        let cli = |port| container("cli", "10.88.0.2", port, &["app=cli", "tier=front"]);
        let db = |port| container("db", "10.88.0.3", port, &["app=db"]);
        let dns = |port| outside("world", "10.88.250.9", port);
        let views = vec![
            // Allowed at the client's egress and at the server's ingress.
            flow(10, true, 11, cli(40000), db(5432)),
            flow(10, false, 12, cli(40000), db(5432)),
            // Audited: the SYN counts, the SYN-ACK and data do not.
            audited(flow(11, true, 11, cli(40001), db(6000)), &["SYN"]),
            audited(flow(11, true, 12, db(6000), cli(40001)), &["SYN", "ACK"]),
            audited(flow(11, true, 11, cli(40001), db(6000)), &["ACK", "PSH"]),
            // Without flags: the first packet counts, not the reply or the
            // next packet.
            audited(flow(11, true, 11, cli(40009), db(6001)), &[]),
            audited(flow(11, true, 12, db(6001), cli(40009)), &[]),
            audited(flow(11, true, 11, cli(40009), db(6001)), &[]),
            // Audited UDP: the query counts, the answer is a reply.
            udp(audited(flow(12, true, 11, cli(53000), dns(53)), &[])),
            udp(audited(flow(12, false, 11, dns(53), cli(53000)), &[])),
            // An HTTP request; a spoofed packet that no policy decides.
            http(flow(13, false, 12, cli(40002), db(8080)), "GET", "/a?x=1"),
            {
                let mut v = audited(flow(14, true, 11, cli(1), db(2)), &["SYN"]);
                v.drop_reason_desc = Some("SPOOFED_SOURCE".into());
                v
            },
            // Before the window.
            flow(1, true, 11, cli(39999), db(22)),
        ];
        let o = observe(&views, Some(5_000_000_000));
        assert_eq!(o.records, 12);
        let got: Vec<(bool, u16, u8, bool)> = o
            .flows
            .iter()
            .map(|s| (s.egress, s.port(), s.protocol, s.http.is_some()))
            .collect();
        assert_eq!(
            got,
            [
                (true, 5432, 6, false),
                (false, 5432, 6, false),
                (true, 6000, 6, false),
                (true, 6001, 6, false),
                (true, 53, 17, false),
                (false, 8080, 6, true),
            ]
        );
        assert_eq!(
            o.flows[5].http,
            Some(Request {
                method: "GET".into(),
                path: "/a".into(),
                truncated: false
            })
        );
        assert_eq!(
            o.flows[4].dst,
            Peer::Outside("10.88.250.9".parse().unwrap())
        );
        assert_eq!(o.skipped["TCP packets after the SYN"], 1);
        assert_eq!(o.skipped["replies"], 3);
        assert_eq!(o.skipped["later packets of a flow already counted"], 1);
        assert_eq!(o.skipped.len(), 4, "{:?}", o.skipped);
        let c = &o.containers["id-cli"];
        assert_eq!(c.labels["tier"], "front");
        assert_eq!(c.addrs[&"10.88.0.2".parse().unwrap()], Some(11));
        assert_eq!(
            o.containers["id-db"].addrs[&"10.88.0.3".parse().unwrap()],
            Some(12)
        );
        assert_eq!(o.first.as_deref(), Some("1970-01-01T00:00:10.000000000Z"));
    }
}
