//! `Compiled::judge`: what the programs' slow path would decide for a
//! connection's first packet under a compiled policy, in userspace. The
//! manager asks it of every tracked connection after an apply, and
//! revokes those the new policy no longer allows (`porin_common::ct`).
//!
//! The same steps as the TC programs (`tc.rs`'s `try_handle`), on the
//! same pure pieces (`porin_common::decide`): the endpoint of the veth,
//! the source check for traffic a container sends, the peer's identity
//! (exact address, then the longest named network, else `WORLD`) and the
//! policy lookups in their documented order.

use std::collections::BTreeMap;

use porin_common::{
    datapath::{action, identity, Direction, Identity, PolicyKey, PolicyValue},
    decide::{peer_addr, policy_key, policy_lookups},
    parse::Flow,
};

use super::compiled::{Compiled, Prefix};

/// [`Compiled::judge`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// No endpoint at that veth: its connections are the manager's to
    /// forget, not to judge.
    NoEndpoint,
    /// The policy allows it, with this action (`action::ALLOW` or
    /// `action::ALLOW_HTTP`).
    Allowed(u8),
    /// The policy denies it.
    Denied,
}

impl Compiled {
    /// How this policy judges `flow`, first seen at host veth `ifindex`
    /// going `dir`.
    pub fn judge(&self, ifindex: u32, flow: &Flow, dir: Direction) -> Judged {
        self.judge_entry(ifindex, flow, dir).0
    }

    /// [`Compiled::judge`] and the policy key whose entry allowed the flow
    /// (generation 0, as in [`Compiled::policy`]; `None` unless allowed):
    /// the key of an `ALLOW_HTTP` entry names its rule set in
    /// [`Compiled::http_maps`].
    pub fn judge_entry(
        &self,
        ifindex: u32,
        flow: &Flow,
        dir: Direction,
    ) -> (Judged, Option<PolicyKey>) {
        let Some(ep) = self.endpoints.get(&ifindex) else {
            return (Judged::NoEndpoint, None);
        };
        if dir == Direction::Egress && self.identity_of(&flow.saddr, flow.family) != ep.identity {
            return (Judged::Denied, None);
        }
        let peer = self.identity_of(peer_addr(flow, dir), flow.family);
        let mut key = policy_key(ep.identity, flow, dir, 0);
        let (lookups, n) = policy_lookups(peer, flow);
        for &(peer, port) in &lookups[..n] {
            key.peer = peer;
            key.port = port;
            if let Some(PolicyValue { action: a, .. }) = self.policy.get(&key) {
                return if *a == action::ALLOW || *a == action::ALLOW_HTTP {
                    (Judged::Allowed(*a), Some(key))
                } else {
                    (Judged::Denied, None)
                };
            }
        }
        (Judged::Denied, None)
    }

    /// The identity the programs give `addr` (IPv4 in its first 4 bytes
    /// when `family` is 4): the exact maps, then the longest network
    /// prefix, else `WORLD`.
    pub fn identity_of(&self, addr: &[u8; 16], family: u8) -> Identity {
        if family == 4 {
            let a = [addr[0], addr[1], addr[2], addr[3]];
            self.ip4
                .get(&a)
                .copied()
                .or_else(|| longest(&self.net4, &a))
                .unwrap_or(identity::WORLD)
        } else {
            self.ip6
                .get(addr)
                .copied()
                .or_else(|| longest(&self.net6, addr))
                .unwrap_or(identity::WORLD)
        }
    }
}

/// The identity of the longest prefix in `nets` that holds `addr`.
fn longest<const N: usize>(
    nets: &BTreeMap<Prefix<N>, Identity>,
    addr: &[u8; N],
) -> Option<Identity> {
    nets.iter()
        .filter(|(p, _)| holds(p, addr))
        .max_by_key(|(p, _)| p.len)
        .map(|(_, id)| *id)
}

fn holds<const N: usize>(p: &Prefix<N>, addr: &[u8; N]) -> bool {
    let bits = usize::from(p.len).min(N * 8);
    let (whole, rest) = (bits / 8, bits % 8);
    if p.addr[..whole] != addr[..whole] {
        return false;
    }
    rest == 0 || (p.addr[whole] ^ addr[whole]) >> (8 - rest) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::policy::compile;
    use crate::policy::tests::{endpoint, EndpointSpec};
    use porin_common::datapath::proto;
    use porin_common::sip::SipKey;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut x = [0; 16];
        x[..4].copy_from_slice(&a);
        x
    }

    fn tcp(s: [u8; 4], d: [u8; 4], dport: u16) -> Flow {
        Flow {
            saddr: v4(s),
            daddr: v4(d),
            sport: 40000,
            dport,
            family: 4,
            protocol: proto::TCP,
            may_be_reply: false,
            tcp_flags: 0x02,
        }
    }

    #[test]
    fn prefixes_hold_their_addresses_only() {
        let p = Prefix {
            addr: [10, 1, 0, 0],
            len: 16,
        };
        assert!(holds(&p, &[10, 1, 200, 3]));
        assert!(!holds(&p, &[10, 2, 0, 0]));
        let odd = Prefix {
            addr: [10, 0, 0, 128],
            len: 25,
        };
        assert!(holds(&odd, &[10, 0, 0, 200]));
        assert!(!holds(&odd, &[10, 0, 0, 127]));
        assert!(holds(
            &Prefix {
                addr: [0; 4],
                len: 0
            },
            &[1, 2, 3, 4]
        ));
    }

    #[test]
    fn a_removed_rule_denies_what_it_allowed() {
        let yaml = |ports: &str| {
            format!(
                "version: 1
groups:
  - name: cam
    select: {{ labels: {{ app: cam }} }}
  - name: hub
    select: {{ labels: {{ app: hub }} }}
policies:
  - name: cam-to-hub
    from: [cam]
    to: [hub]
    ports: [{ports}]
"
            )
        };
        let eps = [
            endpoint(
                EndpointSpec::new("cam")
                    .label("app", "cam")
                    .veth(11, &["10.88.0.2"]),
            ),
            endpoint(
                EndpointSpec::new("hub")
                    .label("app", "hub")
                    .veth(12, &["10.88.0.3"]),
            ),
        ];
        let compile_for = |yaml: &str, eps: &[_]| {
            let cfg = parse(yaml, "test.yaml").expect("test configuration");
            compile(&cfg, eps, &[], &SipKey::from_bytes([1; 16])).expect("compiles")
        };
        let f = tcp([10, 88, 0, 2], [10, 88, 0, 3], 9000);
        let before = compile_for(&yaml("9000"), &eps);
        assert_eq!(
            before.judge(11, &f, Direction::Egress),
            Judged::Allowed(action::ALLOW)
        );
        assert_eq!(
            before.judge(12, &f, Direction::Ingress),
            Judged::Allowed(action::ALLOW)
        );
        let after = compile_for(&yaml("9001"), &eps);
        assert_eq!(after.judge(11, &f, Direction::Egress), Judged::Denied);
        assert_eq!(after.judge(12, &f, Direction::Ingress), Judged::Denied);
        assert_eq!(after.judge(99, &f, Direction::Ingress), Judged::NoEndpoint);
        // A source that is not the endpoint's own is never allowed.
        let spoofed = tcp([10, 88, 0, 3], [10, 88, 0, 3], 9000);
        assert_eq!(
            before.judge(11, &spoofed, Direction::Egress),
            Judged::Denied
        );
    }
}
