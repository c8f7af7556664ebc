//! Identity policy: from the configuration and the discovered endpoints to
//! the entries of the datapath maps (layout in
//! [`porin_common::datapath`]). Pure: no I/O, no kernel; the manager writes
//! the result.
//!
//! * [`identity`]: group and network identities, derived from names;
//! * [`select`]: which group an endpoint belongs to;
//! * [`compile()`]: the map entries ([`Compiled`]), with
//!   [`Compiled::summary`], [`Compiled::explain`] and [`diff`];
//! * [`Compiled::judge`]: the slow path's verdict for a connection, in
//!   userspace (for revocation).
//!
//! # Semantics
//!
//! `A`, `B` are the `from` and `to` lists of a policy; `g`, `h` groups;
//! `P` the policy's protocols; every entry is an allow entry (absence is
//! deny) with `rule` = the policy's 1-based index, or 0 for ground rules.
//!
//! | configuration | entries (subject, direction, peer, protocol, port) |
//! | --- | --- |
//! | policy `from: A to: B` | for each group `b` in `B`, each `a` in `A`: (`b`, ingress, `a`, P, port); for each group `a` in `A`, each `b` in `B`: (`a`, egress, `b`, P, port). Traffic between two groups needs both. Peers that are networks, `world` or `host` only ever appear as the peer. |
//! | `protocol: tcp` / `udp` | TCP / UDP |
//! | `protocol: icmp` | ICMP and ICMPv6, port 0 |
//! | `protocol: any` | TCP, UDP, ICMP, ICMPv6, port 0. Other IP protocols (SCTP, GRE, ...) are never allowed. |
//! | no `ports` | port 0 (any port) |
//! | `ports: [p, "x-y"]` | one entry per port; ranges that together cover 1-65535 become port 0 |
//! | `same_group: allow` | (`g`, egress, `g`) and (`g`, ingress, `g`), all four protocols, port 0 |
//! | `cross_group: allow` | (`g`, egress, `h`) and (`g`, ingress, `h`) for every other group `h`, all protocols: 8·N·(N−1) entries for N groups that all allow it. `unmanaged` is not a group here. |
//! | `internet_egress: allow` | (`g`, egress, `WORLD`), all protocols. Named networks are not `WORLD`: reaching them needs a policy. |
//! | `host_ingress: allow` | (`g`, ingress, `HOST`), all protocols |
//! | `host_egress: allow` | (`g`, egress, `HOST`), all protocols |
//! | any ground rule `deny` | nothing |
//! | `unknown_workloads: allow` | (`UNMANAGED`, egress, `ANY`) and (`UNMANAGED`, ingress, `ANY`), all protocols. Groups still need their own rules to talk to unmanaged containers, and none can name them. |
//! | `unknown_workloads: quarantine` | nothing: unmanaged endpoints are denied everything |
//! | endpoint's mode | its group's effective mode; unmanaged: `enforcement.mode` |
//! | policy `http` rules | the L3/L4 entries above, each TCP one also listed in [`Compiled::http`]; those no plain rule covers become `ALLOW_HTTP` with a rule set in [`Compiled::http_maps`] ([`http`]) |
//!
//! When two rules produce one key the first keeps it (ground rules, then
//! policies in file order), so `rule` names the earliest reason.
//!
//! Capacity: `PORIN_POL_V1` holds [`POLICY_MAP_ENTRIES`] entries and keeps
//! both generations during an update, so one policy may use
//! [`POLICY_ENTRIES_PER_GENERATION`] (32768); beyond that compilation fails.
//!
//! Policy entries depend on the configuration alone; endpoints only change
//! the endpoint and address maps, which the manager updates in place from
//! [`diff`].

mod addrs;
pub mod compile;
pub mod compiled;
mod explain;
pub mod http;
pub mod identity;
mod judge;
pub mod mqtt;
mod rules;
pub mod select;

#[cfg(test)]
pub(crate) mod tests;

pub use addrs::has_identity;
pub use compile::{compile, CompileError};
pub use compiled::{
    diff, Changes, Compiled, Diff, HttpTarget, Member, Prefix, Prefix4, Prefix6, Reason, Summary,
    Unenforced, Warning,
};
pub use identity::{CollisionError, Identities};
pub use judge::Judged;
pub use rules::{Culprit, Overflow, POLICY_ENTRIES_PER_GENERATION, POLICY_MAP_ENTRIES};
