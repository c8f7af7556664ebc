//! The datapath manager against the kernel: what `Datapath::apply` leaves
//! in the maps across policy changes, identity changes and no-op applies.
//! Needs root.

use porin::maps;
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use porin::{
    datapath::Datapath,
    kernel::TcAttach,
    policy::Compiled,
    testing::{
        daemon::{test_bpffs, BpffsGuard},
        require_root,
    },
};
use porin_common::{
    datapath::{
        action, identity, mode, DatapathConfig, Direction, EndpointInfo, Identity, PolicyKey,
        PolicyValue,
    },
    http::{HttpKey, HttpSet, HttpValue},
    sip::SipKey,
};

const G1: Identity = identity::GROUP_BASE + 1;
const G2: Identity = identity::GROUP_BASE + 2;
const G3: Identity = identity::GROUP_BASE + 3;
const G9: Identity = identity::GROUP_BASE + 9;
const EP: u32 = 7_000_001; // an ifindex no interface has: no program is attached
const PEER: Ipv4Addr = Ipv4Addr::new(10, 231, 250, 9);

fn compiled(endpoint: Identity, peer: Identity, ports: &[u16]) -> Compiled {
    let mut c = Compiled::default();
    c.endpoints
        .insert(EP, EndpointInfo::new(endpoint, mode::ENFORCE));
    c.ip4.insert(PEER.octets(), peer);
    for &port in ports {
        c.policy.insert(
            PolicyKey::new(endpoint, peer, Direction::Egress, 6, port),
            PolicyValue::allow(1),
        );
    }
    c
}

struct View<'a>(&'a Datapath);

impl View<'_> {
    fn generation(&self) -> u32 {
        let cfg: Array<&MapData, DatapathConfig> = maps::open(self.0.ebpf(), maps::CONFIG).unwrap();
        cfg.get(&0, 0).unwrap().generation
    }

    fn peer_identity(&self) -> Identity {
        let m: BpfHashMap<&MapData, [u8; 4], Identity> =
            maps::open(self.0.ebpf(), maps::IP4).unwrap();
        m.get(&PEER.octets(), 0).unwrap()
    }

    fn endpoint_identity(&self) -> Identity {
        let m: BpfHashMap<&MapData, u32, EndpointInfo> =
            maps::open(self.0.ebpf(), maps::ENDPOINTS).unwrap();
        m.get(&EP, 0).unwrap().identity
    }

    /// Policy keys in the map, with their generation.
    fn policy(&self) -> Vec<PolicyKey> {
        let m: BpfHashMap<&MapData, PolicyKey, PolicyValue> =
            maps::open(self.0.ebpf(), maps::POLICY).unwrap();
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
        let map = dp.ebpf_mut().map_mut(maps::POLICY.name).unwrap();
        let mut m: BpfHashMap<&mut MapData, PolicyKey, PolicyValue> =
            BpfHashMap::try_from(map).unwrap();
        let stray = PolicyKey::new(G9, identity::ANY, Direction::Egress, 6, 0);
        let allow = PolicyValue::allow(9);
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
        maps::open(dp.ebpf(), maps::ENDPOINTS).unwrap();
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
    c.endpoints
        .insert(ifindex, EndpointInfo::new(G1, mode::ENFORCE));
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

/// With `hold_live_veths` (the daemon's setting), a veth no endpoint lists
/// any more is not detached while it exists: it keeps its programs with no
/// endpoint entry (all its traffic dropped), and is detached once gone.
#[test]
fn a_live_unlisted_veth_is_held_not_detached() {
    use porin::{datapath::Veth, testing::netns::ip_ok};
    require_root("datapath manager test");
    let (a, b) = ("pt-dm-hold-a", "pt-dm-hold-b");
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
    let gone = Gone(a);
    let ifindex = porin::datapath::ifindex_of(a).expect("ifindex of the test veth");

    let mut dp = Datapath::load(TcAttach::Tcx, None).expect("load the datapath");
    dp.hold_live_veths(true);
    let mut c = compiled(G1, G2, &[80]);
    c.endpoints.clear();
    c.endpoints
        .insert(ifindex, EndpointInfo::new(G1, mode::ENFORCE));
    let veth = Veth {
        ifindex,
        name: a.to_string(),
    };
    let report = dp.apply(&c, std::slice::from_ref(&veth)).expect("apply");
    assert_eq!(report.attached, vec![a.to_string()]);

    // Its container is no longer listed (discovery could not read it).
    c.endpoints.clear();
    let report = dp.apply(&c, &[]).expect("apply without it");
    assert!(report.detached.is_empty(), "{report:?}");
    assert_eq!(report.held, vec![a.to_string()], "{report:?}");
    assert!(dp.is_attached(ifindex, a), "still attached");
    let m: BpfHashMap<&MapData, u32, EndpointInfo> =
        maps::open(dp.ebpf(), maps::ENDPOINTS).unwrap();
    assert!(
        m.get(&ifindex, 0).is_err(),
        "with no endpoint entry: drops all"
    );

    // Listed again: enforced by its policy, without a new attachment.
    c.endpoints
        .insert(ifindex, EndpointInfo::new(G1, mode::ENFORCE));
    let report = dp.apply(&c, std::slice::from_ref(&veth)).expect("apply");
    assert!(
        report.attached.is_empty() && report.held.is_empty(),
        "{report:?}"
    );

    // Gone: detached.
    c.endpoints.clear();
    drop(gone);
    let report = dp.apply(&c, &[]).expect("apply after it went");
    assert_eq!(report.detached, vec![a.to_string()], "{report:?}");
    assert!(dp.attached().is_empty());
}

#[test]
fn every_apply_bumps_the_deny_cache_epoch_after_its_changes() {
    require_root("datapath manager test");
    let mut dp = Datapath::load(TcAttach::Tcx, None).expect("load the datapath");
    let cfg = |dp: &Datapath| -> DatapathConfig {
        let m: Array<&MapData, DatapathConfig> = maps::open(dp.ebpf(), maps::CONFIG).unwrap();
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
            maps::open_mut(dp.ebpf_mut(), maps::CONFIG).unwrap();
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

/// `compiled(G1, G2, ports)` where each `(port, path)` of `http` makes that
/// port's entry `ALLOW_HTTP` with a rule set of one rule, `GET path`,
/// hashed under `key`.
fn with_http(key: &SipKey, ports: &[u16], http: &[(u16, &str)]) -> Compiled {
    use porin::config::{HttpPath, HttpRule, Loc, Method};
    use porin::policy::http::compile_rules;

    let mut c = compiled(G1, G2, ports);
    for &(port, path) in http {
        let rule = HttpRule {
            method: Method::Get,
            path: HttpPath::parse(path).unwrap(),
            host: None,
            headers: vec![],
            loc: Loc { line: 1, column: 1 },
        };
        let set = compile_rules(
            key,
            path.as_bytes(),
            &[(1, "p", std::slice::from_ref(&rule))],
            &mut c.http_maps.rules,
        )
        .unwrap();
        let (k, v) = c
            .policy
            .iter_mut()
            .find(|(k, _)| k.port == port)
            .expect("an entry for the HTTP port");
        v.action = action::ALLOW_HTTP;
        c.http_maps.sets.insert(*k, set);
    }
    c
}

/// `PORIN_HTTPS_V1` as it is (keys with their generation).
fn http_sets(dp: &Datapath) -> BTreeMap<PolicyKey, HttpSet> {
    let m: BpfHashMap<&MapData, PolicyKey, HttpSet> =
        maps::open(dp.ebpf(), maps::HTTP_SETS).unwrap();
    m.iter().map(|r| r.unwrap()).collect()
}

/// The keys of `PORIN_HTTPR_V1`.
fn http_rules(dp: &Datapath) -> BTreeSet<HttpKey> {
    let m: BpfHashMap<&MapData, HttpKey, HttpValue> =
        maps::open(dp.ebpf(), maps::HTTP_RULES).unwrap();
    m.keys().map(|k| k.unwrap()).collect()
}

/// Asserts that the L7 maps hold exactly `c`'s rules and `c`'s sets under
/// the live generation.
fn assert_http_maps_are(dp: &Datapath, c: &Compiled, what: &str) {
    let g = dp.generation() as u8;
    let sets: BTreeMap<PolicyKey, HttpSet> = c
        .http_maps
        .sets
        .iter()
        .map(|(k, v)| {
            (
                PolicyKey {
                    generation: g,
                    ..*k
                },
                *v,
            )
        })
        .collect();
    assert_eq!(
        http_sets(dp),
        sets,
        "{what}: the sets of the live generation"
    );
    let rules: BTreeSet<HttpKey> = c.http_maps.rules.keys().copied().collect();
    assert_eq!(http_rules(dp), rules, "{what}: the rules");
}

/// The L7 maps follow the policy generations: sets under the active
/// generation only, rules of the current sets only, across a change of
/// HTTP rules alone (no L3/L4 change) and their removal.
#[test]
fn http_rule_sets_follow_the_policy_generation() {
    require_root("http_rule_sets_follow_the_policy_generation");
    let mut dp = Datapath::load(TcAttach::Tcx, None).expect("load the datapath");

    assert!(!dp.http_key().is_zero(), "a new datapath has a hash key");
    let a = with_http(&dp.http_key(), &[8080], &[(8080, "/metrics")]);
    dp.apply(&a, &[]).expect("apply A");
    let g = dp.generation() as u8;
    let set_a = *a.http_maps.sets.values().next().unwrap();
    assert_http_maps_are(&dp, &a, "A");

    // Only the HTTP rules change: still a new generation.
    let b = with_http(&dp.http_key(), &[8080], &[(8080, "/health")]);
    assert_eq!(a.policy, b.policy, "same L3/L4 entries");
    dp.apply(&b, &[]).expect("apply B");
    assert_ne!(dp.generation() as u8, g, "the generation flipped");
    let set_b = *b.http_maps.sets.values().next().unwrap();
    assert_ne!(set_a.id, set_b.id);
    assert_http_maps_are(&dp, &b, "B");

    // No HTTP rules any more.
    dp.apply(&compiled(G1, G2, &[8080]), &[])
        .expect("apply plain");
    assert!(http_sets(&dp).is_empty());
    assert!(http_rules(&dp).is_empty());
}

/// HTTP requests are counted by policy number: an apply that changes the
/// list of policies zeroes the counts, so none is credited to another
/// policy under the same number; an apply that keeps the list keeps them.
#[test]
fn http_request_counts_start_again_when_policies_are_renumbered() {
    require_root("http_request_counts_start_again_when_policies_are_renumbered");
    let mut dp = Datapath::load(TcAttach::Tcx, None).expect("load the datapath");
    let mut a = with_http(&dp.http_key(), &[8080], &[(8080, "/metrics")]);
    a.rules = vec!["scrape".into()];
    dp.apply(&a, &[]).expect("apply A");
    // What the HTTP stage adds per allowed request, written by hand.
    let set = |dp: &mut Datapath, slot: u32, n: u64| {
        let map = dp.ebpf_mut().map_mut(maps::HTTP_ALLOWED.name).unwrap();
        let mut arr: aya::maps::PerCpuArray<&mut aya::maps::MapData, u64> =
            aya::maps::PerCpuArray::try_from(map).unwrap();
        let cpus = arr.get(&0, 0).unwrap().len();
        let mut v = vec![0u64; cpus];
        v[0] = n;
        arr.set(slot, aya::maps::PerCpuValues::try_from(v).unwrap(), 0)
            .unwrap();
    };
    let counts = |dp: &Datapath| {
        porin::flows::maps::CounterMaps::open(dp.ebpf())
            .unwrap()
            .http_allowed(2)
    };
    set(&mut dp, 1, 7);
    assert_eq!(counts(&dp), [0, 7, 0]);

    // The same policies, another rule: the counts stay.
    let mut b = with_http(&dp.http_key(), &[8080], &[(8080, "/health")]);
    b.rules = a.rules.clone();
    dp.apply(&b, &[]).expect("apply B");
    assert_eq!(counts(&dp), [0, 7, 0]);

    // A policy inserted before it: numbers move, counts start at 0.
    let mut c = b.clone();
    c.rules = vec!["health".into(), "scrape".into()];
    dp.apply(&c, &[]).expect("apply C");
    assert_eq!(counts(&dp), [0, 0, 0]);
}

/// Rule entry `i` of a set no policy entry uses, as an apply that failed
/// after writing its rules, or a daemon that forgot to delete them, leaves
/// behind.
fn orphan_rule(i: u64) -> (HttpKey, HttpValue) {
    (
        HttpKey {
            set: 0x0bad_05e7,
            method: 1,
            _pad: [0; 3],
            path: i,
        },
        HttpValue::default(),
    )
}

/// After a restart the previous `Compiled` is not known: a daemon that
/// adopts the pinned maps must still leave exactly its own policy's HTTP
/// rule sets and rules (the earlier daemon's deleted after the flip, and
/// the leftovers that filled the rule map before the new rules are
/// written, or those writes would fail), and its next applies diff as
/// usual.
#[test]
fn after_adoption_the_http_maps_hold_only_the_new_policy() {
    require_root("after_adoption_the_http_maps_hold_only_the_new_policy");
    let bpffs = BpffsGuard::new(test_bpffs("dm-adopt-http"));
    let dir = bpffs.dir.clone();
    let mut a = Datapath::load(TcAttach::Tcx, Some(&dir)).expect("load daemon A");
    let key = a.http_key();
    // X: two HTTP ports; Y: one of them, with another rule set.
    let x = with_http(
        &key,
        &[8080, 9090],
        &[(8080, "/metrics"), (9090, "/admin/*")],
    );
    let y = with_http(&key, &[8080], &[(8080, "/health")]);
    assert!(x
        .http_maps
        .rules
        .keys()
        .all(|k| !y.http_maps.rules.contains_key(k)));
    let room = porin_common::http::max_entries::RULES as usize - x.http_maps.rules.len();
    {
        a.apply(&x, &[]).expect("A applies X");
        assert_http_maps_are(&a, &x, "A after X");
        let mut m: BpfHashMap<&mut MapData, HttpKey, HttpValue> =
            maps::open_mut(a.ebpf_mut(), maps::HTTP_RULES).unwrap();
        for i in 0..room as u64 {
            let (k, v) = orphan_rule(i);
            m.insert(k, v, 0).unwrap();
        }
        let (k, v) = orphan_rule(room as u64);
        assert!(m.insert(k, v, 0).is_err(), "the rule map is full");
    }
    drop(a); // A stops; its maps stay pinned

    let mut b = Datapath::load(TcAttach::Tcx, Some(&dir)).expect("load daemon B");
    assert!(b.adopted(), "B adopts A's maps");
    assert_eq!(
        b.http_key(),
        key,
        "B keeps A's hash key: X's and Y's keys stay valid"
    );
    let (sets0, rules0) = (http_sets(&b).len(), http_rules(&b).len());
    assert_eq!(
        (sets0, rules0),
        (x.http_maps.sets.len(), x.http_maps.rules.len() + room),
        "B starts with X's entries and the leftovers"
    );
    let g = b.generation();
    // Up to the flip (the apply's first half, called alone): the live
    // generation's sets and rules are all there, next to Y's; the
    // leftovers are gone already, making room for Y's rules.
    let t = std::time::Instant::now();
    let swept = porin::datapath::http::write_before_flip(b.ebpf_mut(), &y, 1 - g, true)
        .expect("the writes before the flip");
    let sweep_time = t.elapsed();
    assert_eq!(swept, room, "exactly the leftovers deleted before the flip");
    let mut both: BTreeSet<HttpKey> = x.http_maps.rules.keys().copied().collect();
    both.extend(y.http_maps.rules.keys());
    assert_eq!(http_rules(&b), both, "before the flip: X's and Y's rules");
    let live: BTreeSet<(u8, u32)> = http_sets(&b)
        .iter()
        .map(|(k, s)| (k.generation, s.id))
        .collect();
    let mut want: BTreeSet<(u8, u32)> =
        x.http_maps.sets.values().map(|s| (g as u8, s.id)).collect();
    want.extend(y.http_maps.sets.values().map(|s| (1 - g as u8, s.id)));
    assert_eq!(live, want, "before the flip: X's sets live, Y's next");

    b.apply(&y, &[]).expect("B applies Y");
    assert_ne!(b.generation(), g, "one generation flip");
    assert_http_maps_are(&b, &y, "B after Y");
    eprintln!(
        "HTTP maps across adoption: sets {sets0} -> {}, rules {rules0} -> {} \
         (X: {} sets, {} rules + {room} leftovers; Y: {} sets, {} rules); \
         the {room} leftovers swept before the flip in {sweep_time:?}",
        http_sets(&b).len(),
        http_rules(&b).len(),
        x.http_maps.sets.len(),
        x.http_maps.rules.len(),
        y.http_maps.sets.len(),
        y.http_maps.rules.len(),
    );

    // The second apply diffs against Y: nothing to do, no flip.
    let g = b.generation();
    b.apply(&y, &[]).expect("B applies Y again");
    assert_eq!(b.generation(), g, "Y again changes nothing");
    assert_http_maps_are(&b, &y, "B after Y again");

    // A change of HTTP rules alone after adoption: Y's rules go.
    let z = with_http(&key, &[8080, 9090], &[(8080, "/health"), (9090, "/z")]);
    b.apply(&z, &[]).expect("B applies Z");
    assert_ne!(b.generation(), g);
    assert_http_maps_are(&b, &z, "B after Z");
    b.apply(&y, &[]).expect("B applies Y once more");
    assert_http_maps_are(&b, &y, "B back to Y");
}

/// An apply that fails after writing its HTTP rules (here: the policy map
/// has no room for its entries) leaves them behind; the next apply, even
/// of the policy that stayed applied, deletes them.
#[test]
fn a_failed_apply_leaves_no_http_rules_behind() {
    require_root("a_failed_apply_leaves_no_http_rules_behind");
    let mut dp = Datapath::load(TcAttach::Tcx, None).expect("load the datapath");
    let y = with_http(&dp.http_key(), &[8080], &[(8080, "/health")]);
    dp.apply(&y, &[]).expect("apply Y");
    let g = dp.generation();

    // More entries than the policy map holds, and HTTP rules of their own.
    let mut big = with_http(
        &dp.http_key(),
        &[8080, 9090],
        &[(8080, "/health"), (9090, "/big")],
    );
    overfill(&mut big);
    assert!(dp.apply(&big, &[]).is_err(), "the policy map is too small");
    assert_eq!(dp.generation(), g, "no flip");
    let leftovers = http_rules(&dp).len() - y.http_maps.rules.len();
    assert!(leftovers > 0, "the failed apply wrote its rules");

    dp.apply(&y, &[]).expect("apply Y again");
    assert_http_maps_are(&dp, &y, "Y after the failed apply");
    eprintln!(
        "rules after the failed apply: {}, after the next one: {} (Y: {})",
        y.http_maps.rules.len() + leftovers,
        http_rules(&dp).len(),
        y.http_maps.rules.len()
    );
    let m: BpfHashMap<&MapData, PolicyKey, PolicyValue> =
        maps::open(dp.ebpf(), maps::POLICY).unwrap();
    assert_eq!(
        m.keys().count(),
        y.policy.len(),
        "only Y's policy entries, under the live generation"
    );
}

/// An apply that fails midway (the policy map has no room) after it added
/// an address and parked one whose identity changes: the next apply, of
/// the config that stayed applied, must leave the address map exactly as
/// that config says (nothing added left, nothing left parked on UPDATING).
#[test]
fn a_failed_apply_leaves_no_addresses_behind() {
    require_root("a_failed_apply_leaves_no_addresses_behind");
    let mut dp = Datapath::load(TcAttach::Tcx, None).expect("load the datapath");
    let a = compiled(G1, G2, &[8080]);
    dp.apply(&a, &[]).expect("apply A");

    // PEER changes identity (parked first), a new address appears, and the
    // policy does not fit.
    let mut b = compiled(G1, G3, &[8080]);
    let added = Ipv4Addr::new(10, 231, 250, 10);
    b.ip4.insert(added.octets(), G9);
    overfill(&mut b);
    assert!(dp.apply(&b, &[]).is_err(), "the policy map is too small");
    let ip4 = |dp: &Datapath| -> BTreeMap<[u8; 4], Identity> {
        let m: BpfHashMap<&MapData, [u8; 4], Identity> = maps::open(dp.ebpf(), maps::IP4).unwrap();
        m.iter().map(|r| r.unwrap()).collect()
    };
    let after_failure = ip4(&dp);
    eprintln!("addresses after the failed apply: {after_failure:?}");
    assert_ne!(
        after_failure, a.ip4,
        "the failed apply changed the address map"
    );

    dp.apply(&a, &[]).expect("apply A again");
    assert_eq!(ip4(&dp), a.ip4, "exactly A's addresses and identities");
    assert_eq!(dp.applied().ip4, a.ip4);
}

/// Adds as many policy entries as the policy map holds, so an apply of
/// `c` fails when it writes them (after its earlier steps).
fn overfill(c: &mut Compiled) {
    for i in 0..porin_common::datapath::max_entries::POLICY {
        c.policy.insert(
            PolicyKey::new(
                G1,
                G3 + (i >> 16),
                Direction::Ingress,
                17,
                (i & 0xffff) as u16,
            ),
            PolicyValue::allow(2),
        );
    }
}

/// The HTTP stream state of `sport`'s connection from PEER to EP:80 (the
/// key `porin_common::http::conn_key` makes).
fn http_conn_key(sport: u16) -> porin_common::datapath::CtKey {
    let w = |a: [u8; 4]| {
        let mut x = [0; 16];
        x[..4].copy_from_slice(&a);
        x
    };
    porin_common::datapath::CtKey {
        saddr: w(PEER.octets()),
        daddr: w([10, 231, 250, 1]),
        sport,
        dport: 80,
        protocol: 6,
        family: 4,
        _pad: [0; 2],
        ifindex: EP,
    }
}

/// The sweep deletes the HTTP stream state of a connection with no
/// conntrack entry left, but only at its second walk (a new connection's
/// state is written just before its entry), keeps that of a live one, and
/// counts each endpoint's HTTP-ruled entries.
#[test]
fn the_sweep_deletes_the_http_state_of_connections_gone() {
    require_root("the_sweep_deletes_the_http_state_of_connections_gone");
    use porin_common::{
        datapath::{Ct4Key, CtCount, CtKey, CtValue},
        decide::{ct4_key, ct_value},
        http_stream::{conn_at_syn, HttpConn},
        parse::Flow,
    };
    let mut dp = Datapath::load(TcAttach::Tcx, None).expect("load the datapath");
    dp.apply(&compiled(G1, G2, &[80]), &[]).expect("apply");
    let live = http_conn_key(40001);
    let gone = http_conn_key(40002);
    {
        let bpf = dp.ebpf_mut();
        let mut conns: BpfHashMap<&mut MapData, CtKey, HttpConn> =
            maps::open_mut(bpf, maps::HTTP_CONNS).unwrap();
        for k in [live, gone] {
            conns
                .insert(k, conn_at_syn(1000, HttpSet::default()), 0)
                .unwrap();
        }
    }
    {
        let flow = Flow {
            saddr: live.saddr,
            daddr: live.daddr,
            sport: live.sport,
            dport: live.dport,
            family: 4,
            protocol: 6,
            may_be_reply: false,
            tcp_flags: 0,
        };
        let l = ct4_key(&flow, EP);
        let now = porin::datapath::conntrack::monotonic_s();
        let v = ct_value(
            now,
            porin_common::datapath::PEER_IN_UNVERIFIED,
            Direction::Ingress,
            l.origin,
            1,
            porin_common::ct::state::TCP_ESTABLISHED,
        );
        let mut ct: BpfHashMap<&mut MapData, Ct4Key, CtValue> =
            maps::open_mut(dp.ebpf_mut(), maps::CT4).unwrap();
        ct.insert(l.key, v, 0).unwrap();
    }
    let http_keys = |dp: &Datapath| -> BTreeSet<(u16, u32)> {
        let m: BpfHashMap<&MapData, CtKey, HttpConn> =
            maps::open(dp.ebpf(), maps::HTTP_CONNS).unwrap();
        m.keys()
            .map(|k| k.unwrap())
            .map(|k| (k.sport, k.ifindex))
            .collect()
    };
    let both: BTreeSet<_> = [(40001, EP), (40002, EP)].into();
    dp.sweep_connections().expect("first sweep");
    assert_eq!(http_keys(&dp), both, "one walk without its entry: kept");
    dp.sweep_connections().expect("second sweep");
    assert_eq!(
        http_keys(&dp),
        [(40001, EP)].into(),
        "the second: the orphan deleted, the live one kept"
    );
    let counts = dp.connection_counts().expect("counts");
    assert_eq!(
        counts,
        vec![(
            EP,
            CtCount {
                entries: 1,
                http: 1
            }
        )]
    );
}

/// A new runtime-bridge port is guarded: attached with no endpoint entry
/// (all its traffic dropped), kept by applies that do not list it and
/// reported as guarded (not as held: no error), an endpoint's veth once
/// listed, detached once gone. A port whose ifindex still has an endpoint
/// entry is not guarded (the old entry would give it an identity).
#[test]
fn a_new_bridge_port_is_guarded_until_its_container_is_listed() {
    use porin::{datapath::Veth, testing::netns::ip_ok};
    require_root("datapath manager test");
    let (a, b) = ("pt-dm-guard-a", "pt-dm-guard-b");
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
    let gone = Gone(a);
    let ifindex = porin::datapath::ifindex_of(a).expect("ifindex of the test veth");
    let veth = Veth {
        ifindex,
        name: a.to_string(),
    };

    let mut dp = Datapath::load(TcAttach::Tcx, None).expect("load the datapath");
    dp.hold_live_veths(true);
    let mut c = compiled(G1, G2, &[80]);
    c.endpoints.clear();
    dp.apply(&c, &[]).expect("apply");
    assert!(dp.guard_port(&veth).expect("guard"), "attached now");
    assert!(dp.is_attached(ifindex, a));
    assert!(!dp.guard_port(&veth).expect("guard again"), "once");
    let endpoints = |dp: &Datapath| {
        let m: BpfHashMap<&MapData, u32, EndpointInfo> =
            maps::open(dp.ebpf(), maps::ENDPOINTS).unwrap();
        m.get(&ifindex, 0).ok()
    };
    assert_eq!(endpoints(&dp), None, "no endpoint entry: drops all");

    let report = dp.apply(&c, &[]).expect("apply without it");
    assert_eq!(report.guarded, vec![a.to_string()], "{report:?}");
    assert!(
        report.held.is_empty() && report.detached.is_empty(),
        "{report:?}"
    );

    // Its container classified: its policy, the same attachment (reported
    // as attached: enforcing its endpoint from now on).
    c.endpoints
        .insert(ifindex, EndpointInfo::new(G1, mode::ENFORCE));
    let report = dp
        .apply(&c, std::slice::from_ref(&veth))
        .expect("apply listing it");
    assert_eq!(report.attached, vec![a.to_string()], "{report:?}");
    assert!(report.guarded.is_empty(), "{report:?}");
    let report = dp
        .apply(&c, std::slice::from_ref(&veth))
        .expect("apply again");
    assert!(report.attached.is_empty(), "once: {report:?}");
    assert_eq!(endpoints(&dp).map(|e| e.identity), Some(G1));

    // Listed no more (its container unreadable): held, an error now.
    c.endpoints.clear();
    let report = dp.apply(&c, &[]).expect("apply without it");
    assert_eq!(report.held, vec![a.to_string()], "{report:?}");
    assert!(report.guarded.is_empty(), "{report:?}");

    // Gone: detached.
    drop(gone);
    let report = dp.apply(&c, &[]).expect("apply after it went");
    assert_eq!(report.detached, vec![a.to_string()], "{report:?}");
    assert!(dp.attached().is_empty());

    // An ifindex that still has an endpoint entry is not guarded.
    let mut d = compiled(G1, G2, &[80]);
    d.endpoints.clear();
    d.endpoints
        .insert(ifindex, EndpointInfo::new(G1, mode::ENFORCE));
    let mut dp = Datapath::load(TcAttach::Tcx, None).expect("load the datapath");
    dp.apply(&d, &[])
        .expect("apply with an entry at the ifindex");
    assert!(
        !dp.guard_port(&veth).expect("guard"),
        "not over another veth's endpoint entry"
    );
}
