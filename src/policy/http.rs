//! HTTP rules → the L7 maps (`PORIN_HTTPS_V1`, `PORIN_HTTPR_V1`; layout and
//! matching in [`porin_common::http`]).
//!
//! Allow semantics are a union, as at L3/L4: a request is allowed if any
//! policy that allows its connection allows it. So a policy entry is HTTP
//! restricted (`action::ALLOW_HTTP`) only when no rule without HTTP rules
//! covers it. "Covers" follows the datapath's lookup order: the entry
//! `(peer, port)` is found before `(peer, 0)`, `(ANY, port)` and `(ANY, 0)`,
//! so it answers for all four; its rule set is the union of the HTTP rules
//! of every policy that produced any of them, and a plain entry among them
//! leaves it plain.
//!
//! A rule set's id is [`porin_common::http::set_id`] of its canonical text
//! (policy index and rules), so identical sets share entries and a reload
//! that keeps a set keeps its id.
//!
//! Paths, hosts and header conditions are hashed under the datapath's
//! secret key ([`porin_common::sip`]; the daemon passes
//! `Datapath::http_key`), so the map keys are only valid for the datapath
//! that holds that key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use porin_common::datapath::{action, identity as reserved, PolicyKey, PolicyValue};
use porin_common::http::{
    alt_kind, header_name_hash, header_value_hash, host_condition, method, name_bit, path_hash,
    set_id, HttpAlt, HttpKey, HttpSet, HttpValue, ALTS, MAX_CONDITIONS, MAX_SEGMENTS,
};
use porin_common::sip::SipKey;

use crate::config::{Config, HttpPath, HttpRule, Loc, Method};

use super::compiled::HttpTarget;
use super::mqtt::MqttMaps;

/// A key for compiling without a datapath (`check-config`, tests): the
/// rule hashes it gives match no datapath's, whose keys are random.
pub const ANY_KEY: SipKey = SipKey {
    k0: 0x706f_7269_6e2d_6368,
    k1: 0x6563_6b2d_6f6e_6c79,
};

/// Entries of `PORIN_HTTPR_V1` one configuration may use: half the map, so
/// a reload can write the new sets beside the old.
pub const HTTP_RULE_ENTRIES: usize = porin_common::http::max_entries::RULES as usize / 2;

/// An HTTP rule the datapath cannot hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCompileError {
    pub policy: String,
    pub loc: Loc,
    pub why: String,
}

impl fmt::Display for HttpCompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "policy `{}` ({}): {}", self.policy, self.loc, self.why)
    }
}

/// The L7 maps' contents.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpMaps {
    /// `PORIN_HTTPS_V1` (generation 0, like the policy entries).
    pub sets: BTreeMap<PolicyKey, HttpSet>,
    /// `PORIN_HTTPR_V1`.
    pub rules: BTreeMap<HttpKey, HttpValue>,
    /// The MQTT sets and automata (`PORIN_MQTTS_V1`, `PORIN_MQTTT_V1`)
    /// of the sets marked [`porin_common::http::SET_MQTT`].
    pub mqtt: MqttMaps,
}

/// The keys whose entry answers for `k` only if `k` itself is absent, and
/// `k`: `(peer|ANY, port|0)`.
fn covering(k: &PolicyKey) -> Vec<PolicyKey> {
    let mut out = Vec::new();
    for peer in [k.peer, reserved::ANY] {
        for port in [k.port, 0] {
            let mut c = *k;
            c.peer = peer;
            c.port = port;
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}

/// Compiles the HTTP rules of `targets` and turns their policy entries
/// into `ALLOW_HTTP` ones. `plain` are keys some rule without HTTP rules
/// produced (ground rules included).
pub fn compile(
    cfg: &Config,
    hash_key: &SipKey,
    targets: &[HttpTarget],
    plain: &BTreeSet<PolicyKey>,
    policy: &mut BTreeMap<PolicyKey, PolicyValue>,
) -> Result<HttpMaps, HttpCompileError> {
    let mut by_key: BTreeMap<PolicyKey, BTreeSet<u32>> = BTreeMap::new();
    for t in targets {
        by_key.entry(t.key).or_default().insert(t.rule);
    }
    let mut out = HttpMaps::default();
    let mut done: BTreeMap<Vec<u32>, HttpSet> = BTreeMap::new();
    for key in by_key.keys() {
        let cover = covering(key);
        if cover.iter().any(|c| plain.contains(c)) {
            continue;
        }
        let rules: BTreeSet<u32> = cover
            .iter()
            .filter_map(|c| by_key.get(c))
            .flatten()
            .copied()
            .collect();
        let rules: Vec<u32> = rules.into_iter().collect();
        let set = match done.get(&rules) {
            Some(s) => *s,
            None if rules.iter().any(|&r| policy_of(cfg, r).mqtt.is_some()) => {
                let s = compile_mqtt(cfg, hash_key, &rules, &mut out.mqtt)?;
                done.insert(rules.clone(), s);
                s
            }
            None => {
                let s = compile_set(cfg, hash_key, &rules, &mut out.rules)?;
                done.insert(rules.clone(), s);
                s
            }
        };
        if let Some(v) = policy.get_mut(key) {
            v.action = action::ALLOW_HTTP;
            out.sets.insert(*key, set);
        }
    }
    if out.rules.len() > HTTP_RULE_ENTRIES {
        let p = &cfg.policies[0];
        return Err(HttpCompileError {
            policy: p.name.clone(),
            loc: p.loc,
            why: format!(
                "the HTTP rules need {} map entries, more than the {HTTP_RULE_ENTRIES} \
                 the datapath holds (a `\"*\"` method costs 10)",
                out.rules.len()
            ),
        });
    }
    if out.mqtt.edges.len() > MQTT_EDGE_ENTRIES {
        let p = &cfg.policies[0];
        return Err(HttpCompileError {
            policy: p.name.clone(),
            loc: p.loc,
            why: format!(
                "the MQTT rules need {} map entries, more than the {MQTT_EDGE_ENTRIES} \
                 the datapath holds",
                out.mqtt.edges.len()
            ),
        });
    }
    Ok(out)
}

/// Entries of `PORIN_MQTTT_V1` one configuration may use: half the map, so
/// a reload can write the new sets beside the old.
pub const MQTT_EDGE_ENTRIES: usize = porin_common::mqtt::max_entries::EDGES as usize / 2;

fn policy_of(cfg: &Config, rule: u32) -> &crate::config::Policy {
    &cfg.policies[rule as usize - 1]
}

/// The MQTT rule set of the connections `rules` (1-based policy indexes)
/// allow: one policy's `mqtt` rules. MQTT rules are not merged: a client
/// id rule holds for its own policy's topics, and a union of two
/// policies' would let each client use the other's topics; nor do HTTP
/// and MQTT rules share a port.
fn compile_mqtt(
    cfg: &Config,
    key: &SipKey,
    rules: &[u32],
    out: &mut MqttMaps,
) -> Result<HttpSet, HttpCompileError> {
    let with_mqtt: Vec<u32> = rules
        .iter()
        .copied()
        .filter(|&r| policy_of(cfg, r).mqtt.is_some())
        .collect();
    let first = policy_of(cfg, with_mqtt[0]);
    let fail = |why: String| HttpCompileError {
        policy: first.name.clone(),
        loc: first.loc,
        why,
    };
    if let Some(&other) = rules.iter().find(|&&r| policy_of(cfg, r).mqtt.is_none()) {
        return Err(fail(format!(
            "its MQTT rules and the HTTP rules of policy `{}` apply to the same connections \
             (a port speaks one protocol)",
            policy_of(cfg, other).name
        )));
    }
    if let Some(&other) = with_mqtt.get(1) {
        return Err(fail(format!(
            "its MQTT rules and those of policy `{}` apply to the same connections; \
             MQTT rules are not merged (a client id rule holds for its own topics): \
             write them as one policy",
            policy_of(cfg, other).name
        )));
    }
    let Some(rule) = &first.mqtt else {
        unreachable!("filtered above");
    };
    // Without the rule's position in the file: editing around a policy
    // must not renumber its set (live connections would lose it).
    let canonical = format!(
        "mqtt#{}|{:?}|{:?}|{:?}|{}|{}|{:?}",
        with_mqtt[0],
        rule.client_ids,
        rule.publish,
        rule.subscribe,
        rule.max_qos,
        rule.retain,
        rule.max_message_size
    );
    let id = set_id(canonical.as_bytes());
    let mut set = super::mqtt::compile_set(id, key, rule, &mut out.edges).map_err(fail)?;
    set.rule = with_mqtt[0];
    out.sets.insert(id, set);
    Ok(HttpSet {
        id,
        depths: porin_common::http::SET_MQTT,
        names: 0,
    })
}

/// Canonical text of a rule set: its policies' indexes and rules.
fn canonical(cfg: &Config, rules: &[u32]) -> String {
    let mut s = String::new();
    for &r in rules {
        s.push_str(&format!("#{r}"));
        for h in &cfg.policies[r as usize - 1].http {
            s.push_str(&format!(
                "|{} {} {:?} {:?}",
                h.method, h.path, h.host, h.headers
            ));
        }
        s.push('\n');
    }
    s
}

fn compile_set(
    cfg: &Config,
    key: &SipKey,
    rules: &[u32],
    out: &mut BTreeMap<HttpKey, HttpValue>,
) -> Result<HttpSet, HttpCompileError> {
    let items: Vec<(u32, &str, &[HttpRule])> = rules
        .iter()
        .map(|&r| {
            let p = &cfg.policies[r as usize - 1];
            (r, p.name.as_str(), p.http.as_slice())
        })
        .collect();
    compile_rules(key, canonical(cfg, rules).as_bytes(), &items, out)
}

/// Compiles one rule set, hashed under `key`: `items` are (1-based policy
/// index, policy name, its HTTP rules); the set id is [`set_id`] of
/// `canonical`. Public for the differential tests.
pub fn compile_rules(
    key: &SipKey,
    canonical: &[u8],
    items: &[(u32, &str, &[HttpRule])],
    out: &mut BTreeMap<HttpKey, HttpValue>,
) -> Result<HttpSet, HttpCompileError> {
    let id = set_id(canonical);
    let mut set = HttpSet {
        id,
        depths: 0,
        names: 0,
    };
    for &(r, name, http) in items {
        for rule in http {
            let fail = |why: String| HttpCompileError {
                policy: name.to_owned(),
                loc: rule.loc,
                why,
            };
            let (path, kind) = match &rule.path {
                HttpPath::Exact(p) => (p.as_str(), alt_kind::EXACT),
                HttpPath::Prefix(p) => {
                    let depth = p.bytes().filter(|&b| b == b'/').count();
                    if depth >= MAX_SEGMENTS {
                        return Err(fail(format!(
                            "prefix `{}` is {depth} segments deep; the datapath matches \
                             prefixes up to {} segments",
                            rule.path,
                            MAX_SEGMENTS - 1
                        )));
                    }
                    set.depths |= 1 << depth;
                    (p.as_str(), alt_kind::PREFIX)
                }
            };
            let alt = alt_of(key, rule, r, kind);
            // The headers the parser must keep for these conditions.
            for h in &rule.headers {
                set.names |= name_bit(header_name_hash(key, h.name.as_bytes()));
            }
            for m in methods(rule.method) {
                let key = HttpKey {
                    set: id,
                    method: m,
                    _pad: [0; 3],
                    path: path_hash(key, path.as_bytes()),
                };
                let v = out.entry(key).or_default();
                add_alt(v, alt).map_err(|()| {
                    fail(format!(
                        "more than {ALTS} rules with method {} and path `{path}` differ in \
                         host or headers (the datapath keeps {ALTS} per method and path)",
                        method::NAMES[m as usize]
                    ))
                })?;
            }
        }
    }
    Ok(set)
}

fn alt_of(key: &SipKey, rule: &HttpRule, r: u32, kind: u8) -> HttpAlt {
    let mut headers = [0u64; MAX_CONDITIONS];
    for (slot, h) in headers.iter_mut().zip(&rule.headers) {
        *slot = match &h.value {
            None => header_name_hash(key, h.name.as_bytes()),
            Some(v) => header_value_hash(key, h.name.as_bytes(), v.as_bytes()),
        };
    }
    headers.sort_unstable();
    HttpAlt {
        host: rule
            .host
            .as_ref()
            .map_or(0, |h| host_condition(key, h.as_bytes())),
        headers,
        rule: r,
        kind,
        _pad: [0; 3],
    }
}

/// Adds `alt` to `v`, merging it with one of equal conditions.
fn add_alt(v: &mut HttpValue, alt: HttpAlt) -> Result<(), ()> {
    for slot in v.alts.iter_mut() {
        if slot.kind == 0 {
            *slot = alt;
            return Ok(());
        }
        if slot.host == alt.host && slot.headers == alt.headers {
            slot.kind |= alt.kind;
            return Ok(());
        }
    }
    Err(())
}

/// Method indexes a rule's method is stored under: `"*"` under all.
fn methods(m: Method) -> Vec<u8> {
    let idx = match m {
        Method::Any => return (method::GET..=method::OTHER).collect(),
        Method::Get => method::GET,
        Method::Head => method::HEAD,
        Method::Post => method::POST,
        Method::Put => method::PUT,
        Method::Delete => method::DELETE,
        Method::Patch => method::PATCH,
        Method::Options => method::OPTIONS,
        Method::Connect => method::CONNECT,
        Method::Trace => method::TRACE,
    };
    vec![idx]
}

/// Host reference model for tests: whether `rules` (the config's own
/// matching) allow a request. The differential tests compare it with the
/// compiled maps and `porin_common::http::judge`.
pub fn reference_allows(
    rules: &[HttpRule],
    method_idx: u8,
    path: &str,
    host: Option<&str>,
    headers: &[(String, String)],
) -> bool {
    rules.iter().any(|r| {
        let m_ok = match methods(r.method).as_slice() {
            [one] => *one == method_idx,
            _ => true,
        };
        let host_ok = match &r.host {
            None => true,
            Some(h) => host.is_some_and(|x| x.trim().eq_ignore_ascii_case(h)),
        };
        let hdr_ok = r.headers.iter().all(|c| {
            headers.iter().any(|(n, v)| {
                n.eq_ignore_ascii_case(&c.name)
                    && c.value
                        .as_ref()
                        .is_none_or(|want| v.trim_matches([' ', '\t']) == want)
            })
        });
        m_ok && r.path.matches(path) && host_ok && hdr_ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::policy::compile;
    use porin_common::datapath::{proto, Direction};
    use porin_common::http::{judge, parse as parse_request};

    fn compiled(policies: &str) -> Result<crate::policy::Compiled, crate::policy::CompileError> {
        let yaml = format!(
            "version: 1\ngroups:\n  - name: web\n    select:\n      labels: {{app: web}}\n  \
             - name: cli\n    select:\n      labels: {{app: cli}}\n\
             ground_rules:\n  same_group: deny\n  host_ingress: deny\n\
             policies:\n{policies}"
        );
        let cfg = parse(&yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        compile(&cfg, &[], &[], &ANY_KEY)
    }

    const WEB_METRICS: &str = "  - name: scrape\n    from: [cli]\n    to: [web]\n    \
        protocol: tcp\n    ports: [8080]\n    http:\n      - method: GET\n        path: /metrics\n";

    /// The ingress entry of `web` from `cli` on port `port`.
    fn ingress(c: &crate::policy::Compiled, port: u16) -> (PolicyKey, PolicyValue) {
        c.policy
            .iter()
            .find(|(k, _)| {
                k.direction == Direction::Ingress as u8
                    && k.port == port
                    && k.protocol == proto::TCP
                    && k.peer != reserved::ANY
            })
            .map(|(k, v)| (*k, *v))
            .expect("ingress entry")
    }

    fn allows(c: &crate::policy::Compiled, key: &PolicyKey, req: &[u8]) -> u32 {
        let set = c.http_maps.sets[key];
        let r = parse_request(req, req.len(), &ANY_KEY).expect("request parses");
        judge(&r, &set, |k| c.http_maps.rules.get(k))
    }

    #[test]
    fn http_entries_are_restricted_and_judged() {
        let c = compiled(WEB_METRICS).unwrap();
        let (k, v) = ingress(&c, 8080);
        assert_eq!(v.action, action::ALLOW_HTTP);
        assert_eq!(allows(&c, &k, b"GET /metrics HTTP/1.1\r\n\r\n"), 1);
        assert_eq!(allows(&c, &k, b"POST /metrics HTTP/1.1\r\n\r\n"), 0);
        assert_eq!(allows(&c, &k, b"GET /admin HTTP/1.1\r\n\r\n"), 0);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn a_plain_rule_covering_the_entry_wins() {
        // Any TCP port from cli, without HTTP rules: the union allows all.
        let plain = "  - name: all-tcp\n    from: [cli]\n    to: [web]\n    protocol: tcp\n";
        let c = compiled(&format!("{WEB_METRICS}{plain}")).unwrap();
        let (k, v) = ingress(&c, 8080);
        assert_eq!(v.action, action::ALLOW, "{k:?}");
        assert!(!c.http_maps.sets.contains_key(&k));
    }

    #[test]
    fn rules_of_policies_sharing_an_entry_are_united() {
        let more = "  - name: health\n    from: [cli]\n    to: [web]\n    protocol: tcp\n    \
            ports: [8080]\n    http:\n      - method: \"*\"\n        path: /health/*\n        \
            host: web.local\n";
        let c = compiled(&format!("{WEB_METRICS}{more}")).unwrap();
        let (k, _) = ingress(&c, 8080);
        assert_eq!(allows(&c, &k, b"GET /metrics HTTP/1.1\r\n\r\n"), 1);
        assert_eq!(
            allows(
                &c,
                &k,
                b"PROPFIND /health/x HTTP/1.1\r\nHost: web.local\r\n\r\n"
            ),
            2
        );
        assert_eq!(
            allows(&c, &k, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"),
            0
        );
        assert_eq!(
            allows(&c, &k, b"GET /healthz HTTP/1.1\r\nHost: web.local\r\n\r\n"),
            0
        );
    }

    #[test]
    fn limits_are_compile_errors() {
        let deep = "  - name: deep\n    from: [cli]\n    to: [web]\n    protocol: tcp\n    \
            ports: [80]\n    http:\n      - method: GET\n        path: /a/b/c/d/e/f/g/h/*\n";
        let e = compiled(deep).unwrap_err().to_string();
        assert!(
            e.contains("policy `deep`") && e.contains("segments deep"),
            "{e}"
        );
        let mut many = String::from(
            "  - name: many\n    from: [cli]\n    to: [web]\n    protocol: tcp\n    \
             ports: [80]\n    http:\n",
        );
        for i in 0..=ALTS {
            many.push_str(&format!(
                "      - method: GET\n        path: /x\n        host: h{i}.local\n"
            ));
        }
        let e = compiled(&many).unwrap_err().to_string();
        assert!(e.contains("more than 4 rules with method GET"), "{e}");
    }

    #[test]
    fn rules_compiled_under_one_key_do_not_match_under_another() {
        let c = compiled(WEB_METRICS).unwrap();
        let (k, _) = ingress(&c, 8080);
        let set = c.http_maps.sets[&k];
        let req = b"GET /metrics HTTP/1.1\r\n\r\n";
        let other = SipKey { k0: 1, k1: 2 };
        let r = parse_request(req, req.len(), &other).unwrap();
        assert_eq!(judge(&r, &set, |k| c.http_maps.rules.get(k)), 0);
        assert_eq!(allows(&c, &k, req), 1, "under its own key it matches");
    }

    /// The parse scratch is reused from request to request: a prefix
    /// depth the parse was not asked to hash holds an earlier request's
    /// hash, and `judge` must never read it (the connection's set could
    /// change between the parse and the judgement).
    #[test]
    fn a_depth_the_parse_did_not_hash_is_never_read() {
        use porin_common::http::{feed, parse_begin, Request};
        let api = "  - name: api\n    from: [cli]\n    to: [web]\n    protocol: tcp\n    \
            ports: [8080]\n    http:\n      - method: GET\n        path: /api/*\n";
        let c = compiled(api).unwrap();
        let (k, _) = ingress(&c, 8080);
        let set = c.http_maps.sets[&k];
        assert_ne!(set.depths, 0, "a prefix rule");
        let mut r = Request::EMPTY;
        let first = b"GET /api/x HTTP/1.1\r\n\r\n";
        parse_begin(&mut r, &ANY_KEY, set.depths, set.names);
        assert_eq!(feed(first, first.len(), &mut r), Some(Ok(first.len())));
        assert_ne!(judge(&r, &set, |k| c.http_maps.rules.get(k)), 0);
        // The same scratch, a request under a set wanting no prefix: its
        // depth entries keep /api's hashes.
        let second = b"GET /admin/x HTTP/1.1\r\n\r\n";
        parse_begin(&mut r, &ANY_KEY, 0, 0);
        assert_eq!(feed(second, second.len(), &mut r), Some(Ok(second.len())));
        assert_eq!(judge(&r, &set, |k| c.http_maps.rules.get(k)), 0);
    }

    #[test]
    fn set_ids_follow_content() {
        let a = compiled(WEB_METRICS).unwrap();
        let b = compiled(WEB_METRICS).unwrap();
        assert_eq!(a.http_maps, b.http_maps);
        let other = WEB_METRICS.replace("/metrics", "/other");
        let c = compiled(&other).unwrap();
        let (k, _) = ingress(&a, 8080);
        assert_ne!(a.http_maps.sets[&k].id, c.http_maps.sets[&k].id);
    }
}

#[cfg(test)]
mod host_peer_tests {
    use super::ANY_KEY;
    use crate::config::parse;
    use crate::policy::compile;
    use porin_common::datapath::{action, identity as reserved};

    #[test]
    fn a_host_client_is_http_restricted() {
        let yaml = "version: 1\ngroups:\n  - name: web\n    select:\n      labels: {app: web}\n\
            ground_rules:\n  host_ingress: deny\npolicies:\n  - name: scrape\n    from: [host]\n    \
            to: [web]\n    protocol: tcp\n    ports: [8080]\n    http:\n      - method: GET\n        \
            path: /metrics\n";
        let cfg = parse(yaml, "t.yaml").unwrap();
        let c = compile(&cfg, &[], &[], &ANY_KEY).unwrap();
        let e: Vec<_> = c
            .policy
            .iter()
            .filter(|(k, _)| k.peer == reserved::HOST || k.peer == reserved::ANY)
            .collect();
        assert!(
            e.iter()
                .any(|(k, v)| k.port == 8080 && v.action == action::ALLOW_HTTP),
            "{e:?}"
        );
    }
}
