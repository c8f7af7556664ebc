//! The Prometheus endpoint (`metrics.listen`): the datapath's per-CPU
//! counters summed at scrape time, and the daemon's own counters, in the
//! text exposition format (version 0.0.4).
//!
//! Cardinality is bounded: labels take values from fixed sets (directions,
//! drop reasons, verdicts, map names) except `identity`, which is capped at
//! `state::IDENTITY_SERIES` identities (the rest are counted under
//! identity `0`).

pub mod server;

use std::fmt::Write;

use porin_common::datapath::{Counter, DropReason, DIRECTIONS, DROP_REASONS};

use crate::{
    control::{proto::MapFill, server::Ctx},
    flows::maps::CounterMaps,
    state::{lock, Counters},
};

/// Everything one scrape reports.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    /// By `Direction` (egress, ingress).
    pub forwarded: Vec<Counter>,
    /// By `DropReason`.
    pub dropped: Vec<Counter>,
    /// Rate limited, ring full.
    pub lost: [u64; 2],
    /// (policy name, HTTP requests it allowed), policies with HTTP rules
    /// and a count only; `other` for policies past the counted ones.
    pub http_allowed: Vec<(String, u64)>,
    /// (identity, identity name, [forwarded, dropped, audit]).
    pub identities: Vec<(u32, String, [u64; 3])>,
    pub maps: Vec<MapFill>,
    pub flow_events: u64,
    pub flow_events_malformed: u64,
    pub discovery_events: u64,
    pub attach_failures: u64,
    pub apply_failures: u64,
    pub policy_generation: u64,
    pub endpoints: u64,
    pub control_requests: u64,
    pub control_refused: u64,
    pub start_time_s: f64,
}

impl Sample {
    pub fn take(ctx: &Ctx) -> Sample {
        let sh = &ctx.shared;
        let snap = sh.snapshot();
        let c = &sh.counters;
        let mut maps = snap.maps.clone();
        let http_allowed = http_allowed(ctx);
        let (forwarded, dropped) = match &ctx.counters {
            Some(m) => {
                maps.extend(m.ct_fill());
                (
                    (0..DIRECTIONS)
                        .map(|i| CounterMaps::sum(&m.fwd, i))
                        .collect(),
                    (0..DROP_REASONS)
                        .map(|i| CounterMaps::sum(&m.drops, i))
                        .collect(),
                )
            }
            None => (Vec::new(), Vec::new()),
        };
        let mut identities: Vec<_> = lock(&sh.identity_flows)
            .iter()
            .map(|(id, v)| {
                let name = if *id == 0 {
                    "other".to_string()
                } else {
                    snap.directory.identity_name(*id).to_string()
                };
                (*id, name, *v)
            })
            .collect();
        identities.sort();
        Sample {
            forwarded,
            dropped,
            lost: ctx.lost(),
            http_allowed,
            identities,
            maps,
            flow_events: Counters::get(&c.flow_events),
            flow_events_malformed: Counters::get(&c.flow_events_malformed),
            discovery_events: Counters::get(&c.discovery_events),
            attach_failures: Counters::get(&c.attach_failures),
            apply_failures: Counters::get(&c.applies_failed),
            policy_generation: snap.generation,
            endpoints: snap.endpoints.len() as u64,
            control_requests: Counters::get(&c.control_requests),
            control_refused: Counters::get(&c.control_refused),
            start_time_s: sh
                .started_wall
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        }
    }
}

/// (policy name, HTTP requests it allowed) for the policies that allowed
/// any, in policy order, `other` (the policies past the counted ones) last;
/// read from the kernel's per-CPU counts under the applied policy names.
pub fn http_allowed(ctx: &Ctx) -> Vec<(String, u64)> {
    let Some(m) = &ctx.counters else {
        return Vec::new();
    };
    let snap = ctx.shared.snapshot();
    let rules = &snap.directory.rules;
    let counts = m.http_allowed(rules.len());
    let mut out: Vec<(String, u64)> = counts
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, n)| **n > 0)
        .filter_map(|(i, n)| rules.get(i - 1).map(|r| (r.to_string(), *n)))
        .collect();
    if counts.first().is_some_and(|n| *n > 0) {
        out.push(("other".into(), counts[0]));
    }
    out
}

/// Label values are fixed strings or names validated by the config
/// (`[a-z0-9-_.]`); escaping is still done as the format requires.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

const DIRECTION_NAMES: [&str; 2] = ["egress", "ingress"];
const VERDICTS: [&str; 3] = ["FORWARDED", "DROPPED", "AUDIT"];

/// The exposition text of `s`.
pub fn render(s: &Sample) -> String {
    let mut o = String::with_capacity(4096);
    family(
        &mut o,
        "porin_forwarded_packets_total",
        "counter",
        "Packets passed by the container programs, by direction (audited would-be drops included).",
    );
    for (i, c) in s.forwarded.iter().enumerate() {
        let _ = writeln!(
            o,
            "porin_forwarded_packets_total{{direction=\"{}\"}} {}",
            DIRECTION_NAMES[i % 2],
            c.packets
        );
    }
    family(
        &mut o,
        "porin_forwarded_bytes_total",
        "counter",
        "Bytes passed by the container programs, by direction.",
    );
    for (i, c) in s.forwarded.iter().enumerate() {
        let _ = writeln!(
            o,
            "porin_forwarded_bytes_total{{direction=\"{}\"}} {}",
            DIRECTION_NAMES[i % 2],
            c.bytes
        );
    }
    family(
        &mut o,
        "porin_dropped_packets_total",
        "counter",
        "Packets dropped (or, in audit mode, that would have been), by reason.",
    );
    for (i, c) in s.dropped.iter().enumerate() {
        let _ = writeln!(
            o,
            "porin_dropped_packets_total{{reason=\"{}\"}} {}",
            DropReason::name_of(i as u8),
            c.packets
        );
    }
    family(
        &mut o,
        "porin_dropped_bytes_total",
        "counter",
        "Bytes dropped (or that would have been), by reason.",
    );
    for (i, c) in s.dropped.iter().enumerate() {
        let _ = writeln!(
            o,
            "porin_dropped_bytes_total{{reason=\"{}\"}} {}",
            DropReason::name_of(i as u8),
            c.bytes
        );
    }
    family(
        &mut o,
        "porin_http_requests_allowed_total",
        "counter",
        "HTTP requests judged allowed, by the policy whose rule allowed them (counted in the kernel, every request; starts again at 0 when a reload changes the list of policies, and at daemon start).",
    );
    for (policy, n) in &s.http_allowed {
        let _ = writeln!(
            o,
            "porin_http_requests_allowed_total{{policy=\"{}\"}} {n}",
            esc(policy)
        );
    }
    family(
        &mut o,
        "porin_flow_events_total",
        "counter",
        "Flow events read from the datapath, by the endpoint's identity (at most 256, the rest as identity 0) and verdict.",
    );
    for (id, name, counts) in &s.identities {
        for (v, n) in VERDICTS.iter().zip(counts) {
            if *n > 0 {
                let _ = writeln!(
                    o,
                    "porin_flow_events_total{{identity=\"{id}\",identity_name=\"{}\",verdict=\"{v}\"}} {n}",
                    esc(name)
                );
            }
        }
    }
    family(
        &mut o,
        "porin_flow_events_lost_total",
        "counter",
        "Flow records the datapath did not emit, by cause.",
    );
    for (cause, n) in ["rate_limit", "ring_full"].iter().zip(s.lost) {
        let _ = writeln!(o, "porin_flow_events_lost_total{{cause=\"{cause}\"}} {n}");
    }
    family(
        &mut o,
        "porin_map_entries",
        "gauge",
        "Entries in each datapath map.",
    );
    for m in &s.maps {
        let _ = writeln!(
            o,
            "porin_map_entries{{map=\"{}\"}} {}",
            esc(&m.name),
            m.entries
        );
    }
    family(
        &mut o,
        "porin_map_capacity_entries",
        "gauge",
        "max_entries of each datapath map.",
    );
    for m in &s.maps {
        let _ = writeln!(
            o,
            "porin_map_capacity_entries{{map=\"{}\"}} {}",
            esc(&m.name),
            m.capacity
        );
    }
    for (name, kind, help, v) in [
        (
            "porin_flow_events_read_total",
            "counter",
            "Flow events read from the ring buffer.",
            s.flow_events,
        ),
        (
            "porin_flow_events_malformed_total",
            "counter",
            "Ring-buffer records of an unexpected size (ignored).",
            s.flow_events_malformed,
        ),
        (
            "porin_discovery_events_total",
            "counter",
            "Endpoint additions, updates and removals reported by discovery.",
            s.discovery_events,
        ),
        (
            "porin_attach_failures_total",
            "counter",
            "Veths the programs could not be attached to.",
            s.attach_failures,
        ),
        (
            "porin_policy_apply_failures_total",
            "counter",
            "Policy compiles or applies that failed (the previous policy stayed).",
            s.apply_failures,
        ),
        (
            "porin_policy_generation",
            "gauge",
            "Policy applies since the daemon started.",
            s.policy_generation,
        ),
        (
            "porin_endpoints",
            "gauge",
            "Containers discovery knows.",
            s.endpoints,
        ),
        (
            "porin_control_requests_total",
            "counter",
            "Requests served on the control socket.",
            s.control_requests,
        ),
        (
            "porin_control_refused_total",
            "counter",
            "Control socket clients refused for their uid.",
            s.control_refused,
        ),
    ] {
        family(&mut o, name, kind, help);
        let _ = writeln!(o, "{name} {v}");
    }
    family(
        &mut o,
        "porin_start_time_seconds",
        "gauge",
        "Start time of the daemon since the Unix epoch.",
    );
    let _ = writeln!(o, "porin_start_time_seconds {:.3}", s.start_time_s);
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps;

    #[test]
    fn the_exposition_names_every_series_with_its_labels() {
        let s = Sample {
            forwarded: vec![
                Counter {
                    packets: 3,
                    bytes: 300,
                },
                Counter {
                    packets: 4,
                    bytes: 400,
                },
            ],
            dropped: (0..DROP_REASONS)
                .map(|i| Counter {
                    packets: u64::from(i),
                    bytes: u64::from(i) * 60,
                })
                .collect(),
            lost: [7, 1],
            http_allowed: vec![("scrape".into(), 42), ("other".into(), 1)],
            identities: vec![(0x0100_0001, "web".into(), [2, 1, 0])],
            maps: vec![MapFill {
                name: maps::ENDPOINTS.name.into(),
                entries: 3,
                capacity: 4096,
            }],
            policy_generation: 2,
            ..Default::default()
        };
        let text = render(&s);
        let entries = format!("porin_map_entries{{map=\"{}\"}} 3", maps::ENDPOINTS.name);
        let capacity = format!(
            "porin_map_capacity_entries{{map=\"{}\"}} 4096",
            maps::ENDPOINTS.name
        );
        for line in [
            "porin_forwarded_packets_total{direction=\"egress\"} 3",
            "porin_forwarded_bytes_total{direction=\"ingress\"} 400",
            "porin_dropped_packets_total{reason=\"POLICY_DENIED\"} 0",
            "porin_dropped_packets_total{reason=\"INTERNAL\"} 7",
            "porin_dropped_bytes_total{reason=\"MALFORMED\"} 60",
            "porin_flow_events_total{identity=\"16777217\",identity_name=\"web\",verdict=\"FORWARDED\"} 2",
            "porin_flow_events_lost_total{cause=\"rate_limit\"} 7",
            "porin_flow_events_lost_total{cause=\"ring_full\"} 1",
            "porin_http_requests_allowed_total{policy=\"scrape\"} 42",
            "porin_http_requests_allowed_total{policy=\"other\"} 1",
            &entries,
            &capacity,
            "porin_policy_generation 2",
            "# TYPE porin_dropped_packets_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
        }
        assert!(
            !text.contains("verdict=\"AUDIT\""),
            "zero series are left out"
        );
        // Every sample line belongs to a family declared before it.
        let mut declared = Vec::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(declared.iter().any(|d| d == name), "undeclared {name}");
                assert!(name.starts_with("porin_"));
            }
        }
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
