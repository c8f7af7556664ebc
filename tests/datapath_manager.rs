//! The datapath manager against the kernel: what `Datapath::apply` leaves
//! in the maps across policy changes, identity changes and no-op applies.
//! Needs root.

use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use porin::{datapath::Datapath, kernel::TcAttach, policy::Compiled, testing::require_root};
use porin_common::datapath::{
    action, identity, mode, DatapathConfig, Direction, EndpointInfo, Identity, PolicyKey,
    PolicyValue,
};

const G1: Identity = identity::GROUP_BASE + 1;
const G2: Identity = identity::GROUP_BASE + 2;
const G3: Identity = identity::GROUP_BASE + 3;
const G9: Identity = identity::GROUP_BASE + 9;
const EP: u32 = 7_000_001; // an ifindex no interface has: no program is attached
const PEER: Ipv4Addr = Ipv4Addr::new(10, 231, 250, 9);

fn compiled(endpoint: Identity, peer: Identity, ports: &[u16]) -> Compiled {
    let mut c = Compiled::default();
    c.endpoints.insert(
        EP,
        EndpointInfo {
            identity: endpoint,
            mode: mode::ENFORCE,
            _pad: [0; 3],
        },
    );
    c.ip4.insert(PEER.octets(), peer);
    for &port in ports {
        c.policy.insert(
            PolicyKey {
                subject: endpoint,
                peer,
                port,
                protocol: 6,
                direction: Direction::Egress as u8,
                generation: 0,
                _pad: [0; 3],
            },
            PolicyValue {
                action: action::ALLOW,
                _pad: [0; 3],
                rule: 1,
            },
        );
    }
    c
}

struct View<'a>(&'a Datapath);

impl View<'_> {
    fn generation(&self) -> u32 {
        let cfg: Array<&MapData, DatapathConfig> =
            Array::try_from(self.0.ebpf().map("PORIN_CFG_V1").unwrap()).unwrap();
        cfg.get(&0, 0).unwrap().generation
    }

    fn peer_identity(&self) -> Identity {
        let m: BpfHashMap<&MapData, [u8; 4], Identity> =
            BpfHashMap::try_from(self.0.ebpf().map("PORIN_IP4_V1").unwrap()).unwrap();
        m.get(&PEER.octets(), 0).unwrap()
    }

    fn endpoint_identity(&self) -> Identity {
        let m: BpfHashMap<&MapData, u32, EndpointInfo> =
            BpfHashMap::try_from(self.0.ebpf().map("PORIN_ENDP_V1").unwrap()).unwrap();
        m.get(&EP, 0).unwrap().identity
    }

    /// Policy keys in the map, with their generation.
    fn policy(&self) -> Vec<PolicyKey> {
        let m: BpfHashMap<&MapData, PolicyKey, PolicyValue> =
            BpfHashMap::try_from(self.0.ebpf().map("PORIN_POL_V1").unwrap()).unwrap();
        let mut keys: Vec<PolicyKey> = m.keys().map(Result::unwrap).collect();
        keys.sort();
        keys
    }
}

#[test]
fn apply_switches_generations_and_moves_identities_completely() {
    require_root("datapath manager test");
    let mut dp = Datapath::load(TcAttach::Tcx, None).expect("load the datapath");

    let a = compiled(G1, G2, &[80, 443]);
    let report = dp.apply(&a, &[]).expect("apply A");
    assert_eq!(
        report.generation, 1,
        "the first policy goes to the inactive generation"
    );
    let v = View(&dp);
    assert_eq!(v.generation(), 1);
    assert_eq!((v.endpoint_identity(), v.peer_identity()), (G1, G2));
    let keys = v.policy();
    assert_eq!(keys.len(), 2);
    assert!(keys
        .iter()
        .all(|k| k.generation == 1 && k.subject == G1 && k.peer == G2));

    // What a failed apply may leave behind: an entry in the inactive
    // generation that no compiled policy lists. It must never become active.
    {
        let map = dp.ebpf_mut().map_mut("PORIN_POL_V1").unwrap();
        let mut m: BpfHashMap<&mut MapData, PolicyKey, PolicyValue> =
            BpfHashMap::try_from(map).unwrap();
        let stray = PolicyKey {
            subject: G9,
            peer: identity::ANY,
            port: 0,
            protocol: 6,
            direction: Direction::Egress as u8,
            generation: 0,
            _pad: [0; 3],
        };
        let allow = PolicyValue {
            action: action::ALLOW,
            _pad: [0; 3],
            rule: 9,
        };
        m.insert(stray, allow, 0).unwrap();
    }

    // The endpoint and the peer change identity, and the policy changes.
    let b = compiled(G3, G1, &[8080]);
    dp.apply(&b, &[]).expect("apply B");
    let v = View(&dp);
    assert_eq!(v.generation(), 0);
    assert_eq!(
        (v.endpoint_identity(), v.peer_identity()),
        (G3, G1),
        "nothing is left parked on UPDATING"
    );
    let keys = v.policy();
    assert_eq!(
        keys.len(),
        1,
        "the old generation's entries and the stray one are gone: {keys:?}"
    );
    assert_eq!(
        (keys[0].generation, keys[0].subject, keys[0].port),
        (0, G3, 8080)
    );

    // The same input again changes nothing, not even the generation.
    dp.apply(&b, &[]).expect("apply B again");
    assert_eq!(View(&dp).generation(), 0);
    assert_eq!(View(&dp).policy().len(), 1);

    // Removing the endpoint removes its entry.
    dp.apply(&Compiled::default(), &[]).expect("apply empty");
    let m: BpfHashMap<&MapData, u32, EndpointInfo> =
        BpfHashMap::try_from(dp.ebpf().map("PORIN_ENDP_V1").unwrap()).unwrap();
    assert!(m.get(&EP, 0).is_err(), "endpoint entry deleted");
    assert!(View(&dp).policy().is_empty());
}

/// An ifindex that now belongs to another veth (a container went and a new
/// one got its number between two applies) is re-attached, not kept.
#[test]
fn a_reused_ifindex_is_detached_and_attached_again() {
    use porin::{datapath::Veth, testing::netns::ip_ok};
    require_root("datapath manager test");
    // A veth pair in the root namespace, no addresses: only attach targets.
    let (a, b) = ("pt-dm-reuse-a", "pt-dm-reuse-b");
    let _ = std::process::Command::new("ip")
        .args(["link", "del", a])
        .output();
    ip_ok(&["link", "add", a, "type", "veth", "peer", "name", b]);
    struct Gone(&'static str);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", self.0])
                .output();
        }
    }
    let _gone = Gone(a);
    let ifindex = porin::datapath::ifindex_of(a).expect("ifindex of the test veth");

    let mut dp = Datapath::load(TcAttach::Tcx, None).expect("load the datapath");
    let mut c = compiled(G1, G2, &[80]);
    c.endpoints.clear();
    c.endpoints.insert(
        ifindex,
        EndpointInfo {
            identity: G1,
            mode: mode::ENFORCE,
            _pad: [0; 3],
        },
    );
    let first = Veth {
        ifindex,
        name: a.to_string(),
    };
    let report = dp.apply(&c, std::slice::from_ref(&first)).expect("apply");
    assert_eq!(report.attached, vec![a.to_string()]);

    // Same ifindex, another name: the old attachment goes, the new name is
    // attached (here it fails: no such interface, and says so).
    let second = Veth {
        ifindex,
        name: "pt-dm-reuse-x".to_string(),
    };
    let report = dp.apply(&c, std::slice::from_ref(&second)).expect("apply");
    assert_eq!(report.detached, vec![a.to_string()], "{report:?}");
    assert_eq!(
        report.attach_failures,
        vec!["pt-dm-reuse-x".to_string()],
        "{report:?}"
    );
    assert!(dp.attached().is_empty());
}

#[test]
fn every_apply_bumps_the_deny_cache_epoch_after_its_changes() {
    require_root("datapath manager test");
    let mut dp = Datapath::load(TcAttach::Tcx, None).expect("load the datapath");
    let cfg = |dp: &Datapath| -> DatapathConfig {
        let m: Array<&MapData, DatapathConfig> =
            Array::try_from(dp.ebpf().map("PORIN_CFG_V1").unwrap()).unwrap();
        m.get(&0, 0).unwrap()
    };
    let loaded = cfg(&dp);
    assert_ne!(loaded.epoch, 0, "the cache is on from the load");
    assert_eq!(dp.epoch().unwrap(), loaded.epoch);

    let a = compiled(G1, G2, &[80]);
    dp.apply(&a, &[]).expect("apply A");
    let after_a = cfg(&dp);
    assert_eq!(after_a.epoch, loaded.epoch + 1, "a policy change bumps");
    assert_eq!(after_a.generation, 1, "the generation flip kept the epoch");

    // The peer's address moves to G3 (and the policy with it).
    dp.apply(&compiled(G1, G3, &[80]), &[]).expect("apply B");
    assert_eq!(cfg(&dp).epoch, loaded.epoch + 2, "an identity change bumps");
    // A no-op apply bumps too (cheap: the cache refills from the next
    // denied packet), so no change can be missed.
    dp.apply(&compiled(G1, G3, &[80]), &[])
        .expect("apply B again");
    let last = cfg(&dp);
    assert_eq!(last.epoch, loaded.epoch + 3);
    assert_eq!(last.generation, 0, "B flipped the generation once");

    // The epoch lives in the map, not in the manager: a bump continues from
    // whatever is there (maps that outlive a process), and skips 0.
    {
        let mut m: Array<&mut MapData, DatapathConfig> =
            Array::try_from(dp.ebpf_mut().map_mut("PORIN_CFG_V1").unwrap()).unwrap();
        m.set(
            0,
            DatapathConfig {
                epoch: u32::MAX,
                ..last
            },
            0,
        )
        .unwrap();
    }
    assert_eq!(dp.bump_epoch().unwrap(), 1, "wraps past 0");
    assert_eq!(cfg(&dp).generation, last.generation);
}

/// The L7 maps follow the policy generations: sets under the active
/// generation only, rules of the current sets only, across a change of
/// HTTP rules alone (no L3/L4 change) and their removal.
#[test]
fn http_rule_sets_follow_the_policy_generation() {
    use porin::config::{HttpPath, HttpRule, Loc, Method};
    use porin::policy::http::compile_rules;
    use porin_common::http::{HttpKey, HttpSet, HttpValue};

    require_root("http_rule_sets_follow_the_policy_generation");
    let mut dp = Datapath::load(TcAttach::Tcx, None).expect("load the datapath");
    let key = dp.http_key();
    assert!(!key.is_zero(), "a new datapath has a hash key");
    let with_rules = |path: &str| {
        let mut c = compiled(G1, G2, &[8080]);
        let rule = HttpRule {
            method: Method::Get,
            path: HttpPath::parse(path).unwrap(),
            host: None,
            headers: vec![],
            loc: Loc { line: 1, column: 1 },
        };
        let set = compile_rules(
            &key,
            path.as_bytes(),
            &[(1, "p", std::slice::from_ref(&rule))],
            &mut c.http_maps.rules,
        )
        .unwrap();
        for (k, v) in c.policy.iter_mut() {
            v.action = action::ALLOW_HTTP;
            c.http_maps.sets.insert(*k, set);
        }
        c
    };
    let sets = |dp: &Datapath| -> Vec<(u8, HttpSet)> {
        let m: BpfHashMap<&MapData, PolicyKey, HttpSet> =
            BpfHashMap::try_from(dp.ebpf().map("PORIN_HTTPS_V1").unwrap()).unwrap();
        m.iter()
            .map(|r| r.unwrap())
            .map(|(k, v)| (k.generation, v))
            .collect()
    };
    let rules = |dp: &Datapath| -> Vec<HttpKey> {
        let m: BpfHashMap<&MapData, HttpKey, HttpValue> =
            BpfHashMap::try_from(dp.ebpf().map("PORIN_HTTPR_V1").unwrap()).unwrap();
        m.keys().map(|k| k.unwrap()).collect()
    };

    let a = with_rules("/metrics");
    dp.apply(&a, &[]).expect("apply A");
    let g = dp.generation() as u8;
    let set_a = *a.http_maps.sets.values().next().unwrap();
    assert_eq!(sets(&dp), vec![(g, set_a)]);
    assert_eq!(
        rules(&dp),
        a.http_maps.rules.keys().copied().collect::<Vec<_>>()
    );

    // Only the HTTP rules change: still a new generation.
    let b = with_rules("/health");
    assert_eq!(a.policy, b.policy, "same L3/L4 entries");
    dp.apply(&b, &[]).expect("apply B");
    assert_ne!(dp.generation() as u8, g, "the generation flipped");
    let set_b = *b.http_maps.sets.values().next().unwrap();
    assert_ne!(set_a.id, set_b.id);
    assert_eq!(sets(&dp), vec![(dp.generation() as u8, set_b)]);
    assert_eq!(
        rules(&dp),
        b.http_maps.rules.keys().copied().collect::<Vec<_>>()
    );

    // No HTTP rules any more.
    dp.apply(&compiled(G1, G2, &[8080]), &[])
        .expect("apply plain");
    assert!(sets(&dp).is_empty());
    assert!(rules(&dp).is_empty());
}
