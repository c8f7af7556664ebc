//! `Compiled::explain`: the compiled policy as people read it, one block per
//! endpoint (for a future `porin policy` command).
//!
//! Entries are folded back the way they were written: the ports of one
//! (direction, peer, protocol, rule) become ranges again, and the four
//! port-0 entries of "all traffic" become `any`.

use std::collections::BTreeMap;
use std::fmt::Write;

use porin_common::datapath::{identity as reserved, mode, proto, Direction, Identity};

use super::compiled::Compiled;
use super::rules::GROUND_RULE;

fn protocol_name(p: u8) -> String {
    match p {
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::ICMP => "icmp".into(),
        proto::ICMPV6 => "icmpv6".into(),
        other => format!("proto {other}"),
    }
}

/// `80,443,9000-9100`, or `all ports` for port 0.
fn port_list(ports: &[u16]) -> String {
    if ports.contains(&0) {
        return "all ports".into();
    }
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for &p in ports {
        match runs.last_mut() {
            Some((_, last)) if u32::from(*last) + 1 == u32::from(p) => *last = p,
            _ => runs.push((p, p)),
        }
    }
    let text: Vec<String> = runs
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    text.join(",")
}

/// Which ground rule produced a rule-0 entry: it follows from the peer.
fn ground_rule_name(subject: Identity, peer: Identity, dir: Direction) -> &'static str {
    match (peer, dir) {
        (reserved::ANY, _) => "unknown_workloads: allow",
        (reserved::WORLD, _) => "ground rule internet_egress",
        (reserved::HOST, Direction::Ingress) => "ground rule host_ingress",
        (reserved::HOST, Direction::Egress) => "ground rule host_egress",
        (p, _) if p == subject => "ground rule same_group",
        _ => "ground rule cross_group",
    }
}

impl Compiled {
    fn name(&self, identity: Identity) -> String {
        self.names
            .get(&identity)
            .cloned()
            .unwrap_or_else(|| format!("identity {identity:#010x}"))
    }

    fn rule_name(&self, subject: Identity, peer: Identity, dir: Direction, rule: u32) -> String {
        if rule == GROUND_RULE {
            return ground_rule_name(subject, peer, dir).into();
        }
        let name = self
            .rules
            .get(rule as usize - 1)
            .map_or("?", String::as_str);
        let set = self
            .http
            .iter()
            .filter(|t| t.rule == rule && t.key.subject == subject && t.key.peer == peer)
            .find_map(|t| self.http_maps.sets.get(&t.key));
        let note = match set {
            Some(s) if s.depths & porin_common::http::SET_MQTT != 0 => ", MQTT rules",
            Some(_) => ", HTTP rules",
            None => "",
        };
        format!("policy {name} (#{rule}{note})")
    }

    /// The rules of one identity, one line each, egress first.
    fn rule_lines(&self, subject: Identity) -> Vec<String> {
        // (direction, peer's name, peer, rule) -> protocol -> ports; by name
        // so the lines read in an order people can follow.
        type Folded = BTreeMap<(u8, String, Identity, u32), BTreeMap<u8, Vec<u16>>>;
        let mut folded: Folded = BTreeMap::new();
        for (k, v) in self.policy.iter().filter(|(k, _)| k.subject == subject) {
            folded
                .entry((k.direction, self.name(k.peer), k.peer, v.rule))
                .or_default()
                .entry(k.protocol)
                .or_default()
                .push(k.port);
        }
        let mut lines = Vec::new();
        for ((dir, peer_name, peer, rule), protocols) in folded {
            let direction = if dir == Direction::Egress as u8 {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            let (verb, arrow) = match direction {
                Direction::Egress => ("egress ", "to"),
                Direction::Ingress => ("ingress", "from"),
            };
            let all = [proto::TCP, proto::UDP, proto::ICMP, proto::ICMPV6]
                .iter()
                .all(|p| protocols.get(p).is_some_and(|ports| ports.contains(&0)));
            let what = if all {
                vec!["any".to_string()]
            } else {
                protocols
                    .iter()
                    .map(|(p, ports)| match *p {
                        proto::ICMP | proto::ICMPV6 => protocol_name(*p),
                        _ => format!("{} {}", protocol_name(*p), port_list(ports)),
                    })
                    .collect()
            };
            lines.push(format!(
                "{verb} {:<24} {:<26} {}",
                what.join(" + "),
                format!("{arrow} {peer_name}"),
                self.rule_name(subject, peer, direction, rule)
            ));
        }
        lines
    }

    /// Every endpoint with what it may send and receive, then what is not
    /// enforceable and the warnings. Everything not listed is denied.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let mode = if m.mode == mode::AUDIT {
                "audit"
            } else {
                "enforce"
            };
            let veths: Vec<String> = m
                .veths
                .iter()
                .map(|(i, n)| format!("{n} (ifindex {i})"))
                .collect();
            let addrs: Vec<String> = m.addrs.iter().map(|a| a.to_string()).collect();
            let _ = writeln!(
                out,
                "{}: {} [{:#010x}], {mode}, veth {}, addresses {}",
                m.endpoint,
                self.name(m.identity),
                m.identity,
                veths.join(", "),
                if addrs.is_empty() {
                    "none".into()
                } else {
                    addrs.join(", ")
                },
            );
            let lines = self.rule_lines(m.identity);
            if lines.is_empty() {
                let _ = writeln!(out, "  (no rules: all traffic denied)");
            }
            for line in lines {
                let _ = writeln!(out, "  {line}");
            }
        }
        if !self.unenforced.is_empty() {
            let _ = writeln!(out, "not enforceable:");
            for u in &self.unenforced {
                let _ = writeln!(
                    out,
                    "  {}: {} ({})",
                    u.endpoint,
                    u.reason,
                    self.name(u.identity)
                );
            }
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(out, "warnings:");
            for w in &self.warnings {
                let _ = writeln!(out, "  {w}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_fold_back_into_ranges() {
        assert_eq!(port_list(&[0]), "all ports");
        assert_eq!(port_list(&[443]), "443");
        assert_eq!(port_list(&[9100, 9187, 9188]), "9100,9187-9188");
        assert_eq!(port_list(&[65534, 65535]), "65534-65535");
    }
}
