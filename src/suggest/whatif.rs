//! Replaying recorded flows against a candidate configuration ([`replay`]):
//! the containers seen become endpoints again (their labels, names,
//! images, addresses and host veths as recorded), the candidate is
//! compiled for them by the daemon's own compiler ([`crate::policy::compile`]),
//! and every connection start is judged as the programs' slow path judges
//! it ([`Compiled::judge_entry`] over `porin_common::decide`'s lookups),
//! its verdict taken by `porin_common::decide::verdict` with the
//! endpoint's mode. A request on an HTTP-ruled connection is parsed and
//! judged by `porin_common::http` (`parse_for`, `judge`), the kernel
//! stage's code, against the compiled rule sets.
//!
//! Limits: the records keep method and path only, so rules with `host` or
//! `headers` conditions see requests without them; a path cut at 64
//! bytes is judged as cut.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use porin_common::{
    datapath::{action, tc_action, Direction, DropReason, PolicyKey},
    decide,
    http::{judge, parse_for},
    parse::Flow,
};

use super::observe::{Observed, Peer, Request, Seen};
use crate::{
    config::Config,
    discovery::{
        endpoint::{Endpoint, EndpointKey},
        netinfo::{HostPeer, Interface, IpPrefix},
        Runtime,
    },
    policy::{self, http::ANY_KEY, CompileError, Compiled, Judged},
};

/// Flows that one outcome covers: (from, to, protocol/port, reason).
pub type GroupKey = (String, String, String, &'static str);

/// What replaying gave.
#[derive(Debug, Default)]
pub struct Report {
    /// Connection starts and requests judged.
    pub judged: usize,
    pub passed: usize,
    /// Would be dropped, by (from, to, port, reason): count and the first
    /// flow as an example.
    pub dropped: BTreeMap<GroupKey, (usize, String)>,
    /// Denied but let through by an audit-mode endpoint.
    pub audited: BTreeMap<GroupKey, (usize, String)>,
    /// Allowed onto an HTTP-ruled port with no request recorded (the
    /// requests could not be judged).
    pub unjudged_http: usize,
}

impl Report {
    pub fn drops(&self) -> usize {
        self.dropped.values().map(|(n, _)| n).sum()
    }
}

/// The recorded containers as discovery would report them.
pub fn endpoints(obs: &Observed) -> Vec<Endpoint> {
    obs.containers
        .values()
        .map(|c| {
            let mut by_veth: BTreeMap<Option<u32>, Vec<IpAddr>> = BTreeMap::new();
            for (addr, veth) in &c.addrs {
                by_veth.entry(*veth).or_default().push(*addr);
            }
            let interfaces = by_veth
                .into_iter()
                .enumerate()
                .map(|(i, (veth, addrs))| Interface {
                    name: format!("eth{i}"),
                    ifindex: 2 + i as u32,
                    mac: None,
                    addrs: addrs
                        .into_iter()
                        .map(|addr| IpPrefix {
                            addr,
                            prefix_len: if addr.is_ipv4() { 32 } else { 128 },
                        })
                        .collect(),
                    unrouted: Vec::new(),
                    host_peer: veth.map(|ifindex| HostPeer {
                        ifindex,
                        name: format!("if{ifindex}"),
                        master: None,
                    }),
                })
                .collect();
            Endpoint {
                key: EndpointKey {
                    runtime: match c.runtime.as_str() {
                        "containerd" => Runtime::Containerd,
                        "docker" => Runtime::Docker,
                        _ => Runtime::Podman,
                    },
                    namespace: String::new(),
                    id: c.id.clone(),
                },
                name: c.name.clone(),
                image: c.image.clone(),
                labels: c.labels.clone(),
                annotations: BTreeMap::new(),
                cgroup: String::new(),
                pids: vec![1],
                netns_inode: 1,
                host_network: false,
                interfaces,
                labels_from: String::new(),
                netns_from: String::new(),
                foreign_netns: Vec::new(),
            }
        })
        .collect()
}

/// Compiles `cfg` for the recorded containers and judges every recorded
/// connection start and request.
pub fn replay(cfg: &Config, obs: &Observed) -> Result<Report, CompileError> {
    let eps = endpoints(obs);
    let host: Vec<IpAddr> = obs.host_addrs.iter().copied().collect();
    let c = policy::compile(cfg, &eps, &host, &ANY_KEY)?;
    let mut report = Report::default();
    // Connections (tuples) whose requests were recorded, at either end.
    let with_requests: BTreeSet<(IpAddr, u16, IpAddr, u16)> = obs
        .flows
        .iter()
        .filter(|s| s.http.is_some())
        .map(|s| (s.saddr, s.sport, s.daddr, s.dport))
        .collect();
    for s in &obs.flows {
        let flow = flow_of(s);
        let dir = if s.egress {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let (judged, key) = c.judge_entry(s.ifindex, &flow, dir);
        let result = match (judged, &s.http) {
            (Judged::NoEndpoint, _) => Err(DropReason::UnknownEndpoint),
            // A request on a connection the policy refuses: the
            // connection's own record reports the drop.
            (Judged::Denied, Some(_)) => continue,
            (Judged::Denied, None) => Err(DropReason::PolicyDenied),
            (Judged::Allowed(a), Some(req)) if a == action::ALLOW_HTTP => {
                http_verdict(&c, key, req)
            }
            (Judged::Allowed(a), None) => {
                if a == action::ALLOW_HTTP
                    && !with_requests.contains(&(s.saddr, s.sport, s.daddr, s.dport))
                {
                    report.unjudged_http += 1;
                }
                Ok(())
            }
            (Judged::Allowed(_), Some(_)) => Ok(()),
        };
        report.judged += 1;
        let mode = c.endpoints.get(&s.ifindex).map(|e| e.mode);
        let verdict = decide::verdict(result, mode);
        let Some(reason) = verdict.drop else {
            report.passed += 1;
            continue;
        };
        let key = (
            side(&c, &s.saddr),
            side(&c, &s.daddr),
            port_text(s),
            reason.name(),
        );
        let into = if verdict.action == tc_action::SHOT {
            &mut report.dropped
        } else {
            &mut report.audited
        };
        into.entry(key).or_insert_with(|| (0, example(obs, s))).0 += 1;
    }
    Ok(report)
}

fn flow_of(s: &Seen) -> Flow {
    let bytes = |a: IpAddr| match a {
        IpAddr::V4(v) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v.octets());
            b
        }
        IpAddr::V6(v) => v.octets(),
    };
    Flow {
        saddr: bytes(s.saddr),
        daddr: bytes(s.daddr),
        sport: s.sport,
        dport: s.dport,
        family: if s.saddr.is_ipv4() { 4 } else { 6 },
        protocol: s.protocol,
        may_be_reply: false,
        tcp_flags: s.tcp_flags,
    }
}

/// The kernel stage's verdict on `req` under the rule set of `key`.
fn http_verdict(c: &Compiled, key: Option<PolicyKey>, req: &Request) -> Result<(), DropReason> {
    let Some(set) = key.and_then(|k| c.http_maps.sets.get(&k)) else {
        return Err(DropReason::Internal);
    };
    if set.depths & porin_common::http::SET_MQTT != 0 {
        // An HTTP request on an MQTT-ruled port: not MQTT.
        return Err(DropReason::MqttMalformed);
    }
    let head = format!("{} {} HTTP/1.1\r\n\r\n", req.method, req.path);
    let r = parse_for(head.as_bytes(), head.len(), &ANY_KEY, set.depths, set.names)
        .map_err(|_| DropReason::HttpMalformed)?;
    if judge(&r, set, |k| c.http_maps.rules.get(k)) == 0 {
        Err(DropReason::HttpDenied)
    } else {
        Ok(())
    }
}

/// An address's identity under the candidate (`group web`, `world`, ...).
fn side(c: &Compiled, addr: &IpAddr) -> String {
    let (bytes, family) = match addr {
        IpAddr::V4(v) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v.octets());
            (b, 4)
        }
        IpAddr::V6(v) => (v.octets(), 6),
    };
    let id = c.identity_of(&bytes, family);
    c.names
        .get(&id)
        .cloned()
        .unwrap_or_else(|| format!("identity {id:#010x}"))
}

fn port_text(s: &Seen) -> String {
    let proto = match s.protocol {
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        1 => "icmp".to_string(),
        58 => "icmpv6".to_string(),
        p => format!("ip/{p}"),
    };
    match s.port() {
        0 => proto,
        p => format!("{proto}/{p}"),
    }
}

fn example(obs: &Observed, s: &Seen) -> String {
    let who = |p: &Peer, a: &IpAddr, port: u16| {
        let name = match p {
            Peer::Container(id) => obs
                .containers
                .get(id)
                .map_or(String::new(), |c| format!("{} ", c.name)),
            Peer::Host => "host ".into(),
            Peer::Outside(_) => String::new(),
        };
        let addr = if a.is_ipv6() {
            format!("[{a}]")
        } else {
            a.to_string()
        };
        if port == 0 {
            format!("{name}{a}")
        } else {
            format!("{name}{addr}:{port}")
        }
    };
    let mut e = format!(
        "{} -> {}",
        who(&s.src, &s.saddr, s.sport),
        who(&s.dst, &s.daddr, s.dport)
    );
    if let Some(r) = &s.http {
        e.push_str(&format!(" {} {}", r.method, r.path));
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::parse,
        suggest::{
            emit::{suggest, Base},
            observe::{
                observe,
                tests::{audited, container, flow, http, outside, udp},
            },
        },
    };

    fn views() -> Vec<crate::flows::record::FlowView> {
        let cli = |port| container("cli", "10.88.0.2", port, &["app=cli"]);
        let web = |port| container("web", "10.88.0.3", port, &["app=web"]);
        let ext = |port| outside("world", "10.88.250.7", port);
        vec![
            flow(1, true, 11, cli(40000), web(5432)),
            flow(1, false, 12, cli(40000), web(5432)),
            udp(audited(flow(2, true, 11, cli(53001), ext(53)), &[])),
            flow(3, true, 11, cli(40003), web(8080)),
            flow(3, false, 12, cli(40003), web(8080)),
            http(
                flow(3, false, 12, cli(40003), web(8080)),
                "GET",
                "/api/v1/r/1",
            ),
            http(
                flow(4, false, 12, cli(40004), web(8080)),
                "GET",
                "/api/v1/r/2",
            ),
            flow(5, false, 12, outside("host", "10.88.0.1", 50000), web(8080)),
        ]
    }

    fn suggested(obs: &Observed) -> Config {
        let text = suggest(
            obs,
            &Base {
                file: None,
                source: "test",
                fold_min: 3,
            },
        );
        parse(&text, "s.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn the_suggestion_replays_without_drops() {
        let obs = observe(&views(), None);
        let r = replay(&suggested(&obs), &obs).unwrap();
        assert_eq!(r.drops(), 0, "{r:#?}");
        assert_eq!(r.judged, 8);
        assert_eq!(r.passed, 8);
        assert_eq!(r.unjudged_http, 0, "{r:#?}");
    }

    #[test]
    fn drops_are_grouped_by_peers_port_and_reason() {
        let obs = observe(&views(), None);
        let yaml = "version: 1
enforcement: {mode: enforce}
groups:
  - {name: cli, select: {labels: {app: cli}}}
  - {name: web, select: {labels: {app: web}}, mode: audit}
policies:
  - {name: p, from: [cli], to: [web], ports: [8080], http: [{method: GET, path: /api/v1/r/1}]}
";
        let cfg = parse(yaml, "c.yaml").unwrap();
        let r = replay(&cfg, &obs).unwrap();
        let dropped: Vec<(&GroupKey, usize)> = r.dropped.iter().map(|(k, v)| (k, v.0)).collect();
        assert_eq!(
            dropped,
            [
                (
                    &(
                        "group cli".to_string(),
                        "group web".to_string(),
                        "tcp/5432".to_string(),
                        "POLICY_DENIED"
                    ),
                    1
                ),
                (
                    &(
                        "group cli".to_string(),
                        "world".to_string(),
                        "udp/53".to_string(),
                        "POLICY_DENIED"
                    ),
                    1
                ),
            ],
            "{r:#?}"
        );
        // web is in audit mode: its side is audited, not dropped, and the
        // second request is denied there.
        let audited: Vec<(&str, &str, usize)> = r
            .audited
            .iter()
            .map(|(k, v)| (k.2.as_str(), k.3, v.0))
            .collect();
        assert_eq!(
            audited,
            [
                ("tcp/5432", "POLICY_DENIED", 1),
                ("tcp/8080", "HTTP_DENIED", 1),
            ],
            "{r:#?}"
        );
        let ex = &r.audited.values().nth(1).unwrap().1;
        assert_eq!(
            ex,
            "cli 10.88.0.2:40004 -> web 10.88.0.3:8080 GET /api/v1/r/2"
        );
        assert_eq!(r.drops(), 2);
    }
}
