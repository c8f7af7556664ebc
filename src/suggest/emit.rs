//! The suggested configuration as YAML text, in the schema of
//! `configs/README.md`, with comments saying where each part comes from.
//!
//! * groups: [`groups::plan`] over the containers seen;
//! * networks: the base file's, then one `/32` (`/128`) network per
//!   outside address seen (`world` would allow every address);
//! * policies: one per (from, to, protocol) with the ports seen, and one
//!   per (from, to, port) with HTTP rules where requests were seen
//!   ([`paths::fold`]);
//! * `enforcement.mode: enforce` and every ground rule `deny`, so nothing
//!   but the policies is allowed; `unknown_workloads`, `on_stop` and
//!   `quarantine_cgroups` are the base file's;
//! * every other top-level section (`bpffs`, `control`, `flows`, ...) is
//!   copied from the base file as written ([`other_sections`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
};

use super::{
    groups::{self, unique_name, GroupPlan, Select},
    observe::{Observed, Peer},
    paths,
};
use crate::config::{Config, OnStop, UnknownWorkloads};

/// What the suggestion starts from besides the records.
pub struct Base<'a> {
    /// The base configuration file's name and text, and its parsed form.
    pub file: Option<(&'a str, &'a str, &'a Config)>,
    /// Where the records came from, for the header comment.
    pub source: &'a str,
    /// [`paths::fold`]'s `fold_min`.
    pub fold_min: usize,
}

/// Observed requests (method, path, truncated) by (from, to, port).
type Requests = BTreeMap<(String, String, u16), BTreeSet<(String, String, bool)>>;

/// Top-level sections the suggestion writes itself.
const OWN_SECTIONS: [&str; 6] = [
    "version",
    "enforcement",
    "ground_rules",
    "groups",
    "networks",
    "policies",
];

/// The suggested configuration.
pub fn suggest(obs: &Observed, base: &Base) -> String {
    let containers: Vec<(&str, &str, &BTreeMap<String, String>)> = obs
        .containers
        .values()
        .map(|c| (c.id.as_str(), c.name.as_str(), &c.labels))
        .collect();
    let (groups, keys) = groups::plan(&containers);
    let mut taken: BTreeSet<String> = groups.iter().map(|g| g.name.clone()).collect();
    let base_nets = base
        .file
        .map(|(_, _, c)| c.networks.as_slice())
        .unwrap_or(&[]);
    taken.extend(base_nets.iter().map(|n| n.name.clone()));
    let group_of: BTreeMap<&str, &GroupPlan> = groups
        .iter()
        .flat_map(|g| g.ids.iter().map(move |id| (id.as_str(), g)))
        .collect();

    // Outside addresses, each its own network.
    let mut nets: BTreeMap<IpAddr, String> = BTreeMap::new();
    for s in &obs.flows {
        for p in [&s.src, &s.dst] {
            if let Peer::Outside(ip) = p {
                if !nets.contains_key(ip) {
                    let text = format!("ext-{ip}").replace([':', '.'], "-");
                    nets.insert(*ip, unique_name(&text, "ext", &mut taken));
                }
            }
        }
    }
    let name = |p: &Peer| -> String {
        match p {
            Peer::Container(id) => group_of[id.as_str()].name.clone(),
            Peer::Host => "host".into(),
            Peer::Outside(ip) => nets[ip].clone(),
        }
    };
    let is_group = |p: &Peer| matches!(p, Peer::Container(_));

    // (from, to, protocol) → port → connections; HTTP requests by
    // (from, to, port).
    let mut conns: BTreeMap<(String, String, u8), BTreeMap<u16, usize>> = BTreeMap::new();
    let mut http: Requests = BTreeMap::new();
    let mut notes: BTreeMap<String, usize> = BTreeMap::new();
    for s in &obs.flows {
        if !is_group(&s.src) && !is_group(&s.dst) {
            *notes
                .entry("flows between two non-containers (no group to hold a policy)".into())
                .or_default() += 1;
            continue;
        }
        let (from, to) = (name(&s.src), name(&s.dst));
        if let Some(r) = &s.http {
            http.entry((from, to, s.port())).or_default().insert((
                r.method.clone(),
                r.path.clone(),
                r.truncated,
            ));
            continue;
        }
        if !matches!(s.protocol, 1 | 6 | 17 | 58) {
            *notes
                .entry(format!(
                    "flows of IP protocol {} (Porin allows only TCP, UDP and ICMP)",
                    s.protocol
                ))
                .or_default() += 1;
            continue;
        }
        let proto = if s.protocol == 58 { 1 } else { s.protocol };
        *conns
            .entry((from, to, proto))
            .or_default()
            .entry(s.port())
            .or_default() += 1;
    }

    let mut y = String::new();
    header(&mut y, obs, base, &keys, &notes);
    enforcement(&mut y, base.file.map(|(_, _, c)| c));
    y.push_str(
        "\n# Nothing is allowed but the policies below: every ground rule is deny.\n\
         ground_rules:\n  internet_egress: deny\n  same_group: deny\n  cross_group: deny\n  \
         host_ingress: deny\n  host_egress: deny\n",
    );
    y.push_str("\nnetworks:");
    if base_nets.is_empty() && nets.is_empty() {
        y.push_str(" []");
    }
    y.push('\n');
    for n in base_nets {
        let cidrs: Vec<String> = n
            .cidrs
            .iter()
            .map(|c| format!("{:?}", c.to_string()))
            .collect();
        let _ = writeln!(
            y,
            "  - name: {}   # from the base file\n    cidrs: [{}]",
            n.name,
            cidrs.join(", ")
        );
    }
    for (ip, n) in &nets {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        let _ = writeln!(
            y,
            "  - name: {n}   # an address outside seen in flows (world or a network)\n    \
             cidrs: [\"{ip}/{len}\"]"
        );
    }
    y.push_str("\ngroups:");
    if groups.is_empty() {
        y.push_str(" []");
    }
    y.push('\n');
    for g in &groups {
        let _ = writeln!(y, "  - name: {}   # {}", g.name, members(&g.members));
        match &g.select {
            Select::Labels(l) => {
                let pairs: Vec<String> = l.iter().map(|(k, v)| format!("{k:?}: {v:?}")).collect();
                let _ = writeln!(y, "    select:\n      labels: {{{}}}", pairs.join(", "));
            }
            Select::Name(n) => {
                let _ = writeln!(
                    y,
                    "    select:   # no labels: selected by its name\n      name: {n:?}"
                );
            }
        }
    }
    policies(&mut y, &conns, &http, base.fold_min);
    if let Some((file, text, _)) = base.file {
        let rest = other_sections(text);
        if !rest.trim().is_empty() {
            let _ = writeln!(y, "\n# The sections below are copied from {file}.");
            y.push_str(&rest);
            if !y.ends_with('\n') {
                y.push('\n');
            }
        }
    }
    y
}

fn members(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
    let more = names.len().saturating_sub(shown.len());
    let plural = if names.len() == 1 { "" } else { "s" };
    let mut s = format!("{} container{plural}: {}", names.len(), shown.join(", "));
    if more > 0 {
        let _ = write!(s, " and {more} more");
    }
    s
}

fn header(
    y: &mut String,
    obs: &Observed,
    base: &Base,
    keys: &[String],
    notes: &BTreeMap<String, usize>,
) {
    let _ = writeln!(
        y,
        "# Suggested by `porin policy suggest` from {} flow records ({}), {} to {}.",
        obs.records,
        base.source,
        obs.first.as_deref().unwrap_or("-"),
        obs.last.as_deref().unwrap_or("-")
    );
    y.push_str(
        "# It allows exactly the connections seen, and nothing else: review it, check it\n\
         # with `porin policy whatif FILE`, then run it.\n",
    );
    if !keys.is_empty() {
        let _ = writeln!(
            y,
            "# Groups are selected by the label keys {} (the fewest keys that tell the\n\
             # containers seen apart).",
            keys.join(", ")
        );
    }
    y.push_str(
        "# HTTP rules come from L7_HTTP records: the datapath reports a connection's first\n\
         # request on ports that already have HTTP rules. Ports without records are open\n\
         # to any request.\n",
    );
    let mut left: Vec<String> = obs
        .skipped
        .iter()
        .map(|(why, n)| format!("{n} {why}"))
        .collect();
    left.extend(notes.iter().map(|(why, n)| format!("{n} {why}")));
    if !left.is_empty() {
        y.push_str("# Records not turned into rules:\n");
        for l in left {
            let _ = writeln!(y, "#   {l}");
        }
    }
    let _ = writeln!(y, "version: {}", crate::config::SCHEMA_VERSION);
}

fn enforcement(y: &mut String, base: Option<&Config>) {
    let (unknown, on_stop, cgroups) = match base {
        Some(c) => (
            c.enforcement.unknown_workloads,
            c.enforcement.on_stop,
            c.enforcement.quarantine_cgroups.clone(),
        ),
        None => (UnknownWorkloads::Allow, OnStop::Keep, None),
    };
    y.push_str("\nenforcement:\n  mode: enforce\n");
    let _ = writeln!(
        y,
        "  unknown_workloads: {}   # containers no group selects; quarantine holds them back",
        match unknown {
            UnknownWorkloads::Allow => "allow",
            UnknownWorkloads::Quarantine => "quarantine",
        }
    );
    if let Some(c) = cgroups {
        let list: Vec<String> = c.iter().map(|p| p.display().to_string()).collect();
        let _ = writeln!(y, "  quarantine_cgroups: [{}]", list.join(", "));
    }
    let _ = writeln!(
        y,
        "  on_stop: {}",
        match on_stop {
            OnStop::Keep => "keep",
            OnStop::Detach => "detach",
        }
    );
}

fn policies(
    y: &mut String,
    conns: &BTreeMap<(String, String, u8), BTreeMap<u16, usize>>,
    http: &Requests,
    fold_min: usize,
) {
    y.push_str("\npolicies:");
    if conns.is_empty() && http.is_empty() {
        y.push_str(" []");
    }
    y.push('\n');
    let mut taken_policies = BTreeSet::new();
    for ((from, to, proto), ports) in conns {
        // Ports with HTTP requests get a policy of their own below.
        let plain: Vec<(&u16, &usize)> = ports
            .iter()
            .filter(|(p, _)| *proto != 6 || !http.contains_key(&(from.clone(), to.clone(), **p)))
            .collect();
        if plain.is_empty() {
            continue;
        }
        let pname = match proto {
            6 => "tcp",
            17 => "udp",
            _ => "icmp",
        };
        let name = unique_name(
            &format!("{from}-to-{to}-{pname}"),
            "policy",
            &mut taken_policies,
        );
        let _ = writeln!(
            y,
            "  - name: {name}\n    from: [{from}]\n    to: [{to}]\n    protocol: {pname}"
        );
        let total: usize = plain.iter().map(|(_, n)| **n).sum();
        if *proto == 1 || plain.iter().any(|(p, _)| **p == 0) {
            let _ = writeln!(y, "    # {total} flows seen");
        } else {
            let list: Vec<String> = plain.iter().map(|(p, _)| p.to_string()).collect();
            let counts: Vec<String> = plain.iter().map(|(p, n)| format!("{p}: {n}")).collect();
            let _ = writeln!(
                y,
                "    ports: [{}]   # flows seen per port: {}",
                list.join(", "),
                counts.join(", ")
            );
        }
    }
    for ((from, to, port), requests) in http {
        let name = unique_name(
            &format!("{from}-to-{to}-http-{port}"),
            "policy",
            &mut taken_policies,
        );
        let (rules, refused) = paths::fold(requests, fold_min);
        let _ = writeln!(
            y,
            "  - name: {name}   # {} requests seen\n    from: [{from}]\n    to: [{to}]\n    \
             protocol: tcp\n    ports: [{port}]",
            requests.len()
        );
        for r in &refused {
            let _ = writeln!(y, "    # not expressible as a rule: {r}");
        }
        if rules.is_empty() {
            y.push_str("    # no request could be written as a rule: any request is allowed\n");
            continue;
        }
        y.push_str("    http:\n");
        for r in rules {
            let _ = write!(
                y,
                "      - method: {:?}\n        path: {:?}",
                r.method, r.path
            );
            if !r.folded.is_empty() {
                let shown: Vec<&str> = r.folded.iter().take(5).map(String::as_str).collect();
                let more = r.folded.len() - shown.len();
                let _ = write!(y, "   # folded: {}", shown.join(", "));
                if more > 0 {
                    let _ = write!(y, " and {more} more");
                }
            }
            y.push('\n');
        }
    }
}

/// The top-level sections of `text` other than [`OWN_SECTIONS`], as
/// written (comments above a section go with it).
pub fn other_sections(text: &str) -> String {
    let mut out = String::new();
    let mut pending = String::new();
    let mut keep = false;
    for line in text.lines() {
        let first = line.chars().next();
        let top_key =
            first.is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && line.contains(':');
        if top_key {
            let key = line.split(':').next().unwrap_or_default().trim();
            keep = !OWN_SECTIONS.contains(&key);
            if keep {
                out.push_str(&pending);
                out.push_str(line);
                out.push('\n');
            }
            pending.clear();
        } else if first.is_none() || first == Some('#') {
            pending.push_str(line);
            pending.push('\n');
        } else {
            if keep {
                out.push_str(&pending);
                out.push_str(line);
                out.push('\n');
            }
            pending.clear();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{parse, HttpPath},
        suggest::observe::{
            observe,
            tests::{audited, container, flow, http, outside, udp},
        },
    };

    const BASE: &str = "# my gateway\nversion: 1\nlog:\n  level: debug\n\
        enforcement:\n  mode: audit\n  unknown_workloads: allow\n\
        # the maps\nbpffs: /sys/fs/bpf/porin-x\nnetworks:\n- name: lan\n  cidrs: [192.168.1.0/24]\n\
        groups: []\npolicies: []\ncontrol:\n  socket: /run/x.sock\n";

    #[test]
    fn other_sections_keep_what_the_suggestion_does_not_write() {
        assert_eq!(
            other_sections(BASE),
            "log:\n  level: debug\n# the maps\nbpffs: /sys/fs/bpf/porin-x\ncontrol:\n  socket: /run/x.sock\n"
        );
    }

    #[test]
    fn the_suggestion_is_a_valid_config_that_allows_what_was_seen() {
        let cli = |port| container("cli-1", "10.88.0.2", port, &["app=cli", "env=prod"]);
        let cli2 = |port| container("cli-2", "10.88.0.4", port, &["app=cli", "env=prod"]);
        let web = |port| container("web", "10.88.0.3", port, &["app=web", "env=prod"]);
        let ext = |port| outside("world", "10.88.250.7", port);
        let views = vec![
            flow(1, true, 11, cli(40000), web(5432)),
            flow(1, false, 12, cli(40000), web(5432)),
            flow(2, true, 13, cli2(40001), web(5432)),
            audited(flow(3, true, 12, web(40002), ext(443)), &["SYN"]),
            udp(audited(flow(4, true, 11, cli(53001), ext(53)), &[])),
            flow(5, false, 12, cli(40003), web(8080)),
            http(
                flow(5, false, 12, cli(40003), web(8080)),
                "GET",
                "/api/v1/readings/123",
            ),
            http(
                flow(6, false, 12, cli(40004), web(8080)),
                "GET",
                "/api/v1/readings/456",
            ),
            http(
                flow(7, false, 12, cli(40005), web(8080)),
                "POST",
                "/api/v1/readings",
            ),
            flow(8, false, 12, outside("host", "10.88.0.1", 50000), web(8080)),
        ];
        let obs = observe(&views, None);
        let base_cfg = parse(BASE, "base.yaml").unwrap();
        let text = suggest(
            &obs,
            &Base {
                file: Some(("base.yaml", BASE, &base_cfg)),
                source: "test",
                fold_min: 3,
            },
        );
        let cfg = match parse(&text, "suggested.yaml") {
            Ok(c) => c,
            Err(e) => panic!("{e}\n{text}"),
        };
        crate::policy::compile(&cfg, &[], &[], &crate::policy::http::ANY_KEY)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            cfg.bpffs,
            std::path::Path::new("/sys/fs/bpf/porin-x"),
            "{text}"
        );
        let groups: Vec<&str> = cfg.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(groups, ["cli", "web"], "{text}");
        let nets: Vec<&str> = cfg.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(nets, ["lan", "ext-10-88-250-7"], "{text}");
        let pols: Vec<String> = cfg
            .policies
            .iter()
            .map(|p| {
                let ports: Vec<String> = p.ports.iter().map(|r| format!("{r:?}")).collect();
                format!(
                    "{} {:?}->{:?} {:?} [{}] http:{}",
                    p.name,
                    p.from.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(),
                    p.to.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(),
                    p.protocol,
                    ports.join(","),
                    p.http.len()
                )
            })
            .collect();
        assert_eq!(pols.len(), 5, "{pols:#?}\n{text}");
        assert!(
            pols[0].starts_with("cli-to-ext-10-88-250-7-udp"),
            "{pols:#?}"
        );
        assert!(pols[1].starts_with("cli-to-web-tcp"), "{pols:#?}");
        assert!(pols[2].starts_with("host-to-web-tcp"), "{pols:#?}");
        assert!(
            pols[3].starts_with("web-to-ext-10-88-250-7-tcp"),
            "{pols:#?}"
        );
        assert!(
            pols[4].starts_with("cli-to-web-http-8080") && pols[4].ends_with("http:2"),
            "{pols:#?}"
        );
        let rules = &cfg.policies[4].http;
        assert_eq!(rules[0].path, HttpPath::Prefix("/api/v1/readings".into()));
        assert!(
            text.contains("# folded: /api/v1/readings/123, /api/v1/readings/456"),
            "{text}"
        );
        assert!(text.contains("mode: enforce"));
    }
}
