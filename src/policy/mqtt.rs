//! MQTT rules → the MQTT maps (`PORIN_MQTTS_V1`, `PORIN_MQTTT_V1`; the
//! parser and the walk are [`porin_common::mqtt`]).
//!
//! A policy's `publish` patterns become one deterministic automaton and
//! its `subscribe` patterns another: the patterns' levels form a trie (an
//! NFA: `+` and `{client_id}` edges beside the literal ones, `#` a flag),
//! and the subset construction turns it into states the kernel walks with
//! one or two lookups per level. A state is a set of trie nodes; its
//! edges are, for each literal some node has, the nodes that literal
//! reaches together with every node's `+` edge (and with `{client_id}`
//! edges in the `*_CID` variant, taken when the level equals the client
//! id), and an `OTHER` edge for any other level (`+` edges only). Empty
//! sets are left out: no edge means no match. States that have a `#`
//! below them accept everything and need no edges.
//!
//! The patterns are few (at most 64 per list) and short, so the
//! construction stays small; a set that would pass [`MAX_STATES`] is
//! refused rather than truncated.

use std::collections::{BTreeMap, BTreeSet};

use porin_common::mqtt::{
    kind, node_flag, set_flag, MqttKey, MqttNext, MqttSet, PUBLISH_ROOT, SUBSCRIBE_ROOT,
};
use porin_common::sip::{siphash, SipKey};

use crate::config::{ClientId, Level, MqttRule, TopicPattern};

/// Most automaton states of one rule set (both automata).
pub const MAX_STATES: usize = 4096;

/// The MQTT maps' contents.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MqttMaps {
    /// `PORIN_MQTTS_V1`, by set id.
    pub sets: BTreeMap<u32, MqttSet>,
    /// `PORIN_MQTTT_V1`.
    pub edges: BTreeMap<MqttKey, MqttNext>,
}

#[derive(Default)]
struct TrieNode {
    lit: BTreeMap<String, usize>,
    plus: Option<usize>,
    cid: Option<usize>,
    /// A `#` below this node.
    hash: bool,
    /// A pattern ends here.
    end: bool,
}

fn trie(patterns: &[TopicPattern]) -> Vec<TrieNode> {
    let mut nodes = vec![TrieNode::default()];
    for p in patterns {
        let mut at = 0;
        for level in &p.levels {
            let next = match level {
                Level::Hash => {
                    nodes[at].hash = true;
                    break;
                }
                Level::Literal(s) => nodes[at].lit.get(s).copied(),
                Level::Plus => nodes[at].plus,
                Level::ClientId => nodes[at].cid,
            };
            let next = match next {
                Some(n) => n,
                None => {
                    nodes.push(TrieNode::default());
                    let n = nodes.len() - 1;
                    match level {
                        Level::Literal(s) => {
                            nodes[at].lit.insert(s.clone(), n);
                        }
                        Level::Plus => nodes[at].plus = Some(n),
                        Level::ClientId => nodes[at].cid = Some(n),
                        Level::Hash => unreachable!(),
                    }
                    n
                }
            };
            at = next;
        }
        if !matches!(p.levels.last(), Some(Level::Hash)) {
            nodes[at].end = true;
        }
    }
    nodes
}

type State = BTreeSet<usize>;

fn flags(t: &[TrieNode], s: &State) -> u32 {
    let mut f = 0;
    for &n in s {
        if t[n].hash {
            f |= node_flag::ALL | node_flag::ACCEPT;
        }
        if t[n].end {
            f |= node_flag::ACCEPT;
        }
    }
    f
}

/// Builds one automaton from `patterns` with its root at `root`, numbering
/// new states from `*next_id`. The root's flags are returned.
fn automaton(
    set: u32,
    key: &SipKey,
    patterns: &[TopicPattern],
    root: u16,
    next_id: &mut usize,
    edges: &mut BTreeMap<MqttKey, MqttNext>,
) -> Result<u32, String> {
    let t = trie(patterns);
    let start: State = [0].into();
    let mut ids: BTreeMap<State, u16> = BTreeMap::new();
    ids.insert(start.clone(), root);
    let mut work = vec![start.clone()];
    while let Some(s) = work.pop() {
        let id = ids[&s];
        let at_root = id == root;
        // Below a `#` everything matches: no edges needed, except the
        // root's `$` literals (a root `#` does not cover `$` topics).
        let all = flags(&t, &s) & node_flag::ALL != 0;
        if all && !at_root {
            continue;
        }
        let plus: State = s.iter().filter_map(|&n| t[n].plus).collect();
        let cid: State = s.iter().filter_map(|&n| t[n].cid).collect();
        let literals: BTreeSet<&String> = s.iter().flat_map(|&n| t[n].lit.keys()).collect();
        let mut out: Vec<(u16, u64, State)> = Vec::new();
        for l in literals {
            if all && !l.starts_with('$') {
                continue;
            }
            let lit: State = s.iter().filter_map(|&n| t[n].lit.get(l).copied()).collect();
            let h = siphash(key, l.as_bytes());
            if at_root && l.starts_with('$') {
                // MQTT: no wildcard at the root matches a `$` topic (and
                // no `{client_id}` either: a client named `$SYS` must not
                // reach `$SYS/...` through `{client_id}/#`).
                out.push((kind::LIT, h, lit.clone()));
                out.push((kind::LIT_CID, h, lit));
                continue;
            }
            let with_plus: State = lit.union(&plus).copied().collect();
            let with_cid: State = with_plus.union(&cid).copied().collect();
            out.push((kind::LIT, h, with_plus));
            out.push((kind::LIT_CID, h, with_cid));
        }
        if !all {
            let with_cid: State = plus.union(&cid).copied().collect();
            out.push((kind::OTHER, 0, plus));
            out.push((kind::OTHER_CID, 0, with_cid));
        }
        for (k, hash, target) in out {
            if target.is_empty() {
                continue;
            }
            let tid = match ids.get(&target) {
                Some(&i) => i,
                None => {
                    if *next_id >= MAX_STATES {
                        return Err(format!(
                            "the MQTT topic patterns need more than {MAX_STATES} automaton states"
                        ));
                    }
                    let i = *next_id as u16;
                    *next_id += 1;
                    ids.insert(target.clone(), i);
                    work.push(target.clone());
                    i
                }
            };
            edges.insert(
                MqttKey {
                    set,
                    node: id,
                    kind: k,
                    hash,
                },
                MqttNext {
                    node: u32::from(tid),
                    flags: flags(&t, &target),
                },
            );
        }
    }
    Ok(flags(&t, &start))
}

/// Compiles one policy's MQTT rules as set `id`, hashed under `key`.
pub fn compile_set(
    id: u32,
    key: &SipKey,
    rule: &MqttRule,
    edges: &mut BTreeMap<MqttKey, MqttNext>,
) -> Result<MqttSet, String> {
    let mut set = MqttSet {
        id,
        flags: u32::from(rule.max_qos) & set_flag::MAX_QOS,
        max_size: rule.max_message_size.unwrap_or(0),
        ..MqttSet::default()
    };
    if rule.retain {
        set.flags |= set_flag::RETAIN;
    }
    if rule.client_ids.is_empty() {
        set.flags |= set_flag::ANY_CLIENT;
    }
    for c in &rule.client_ids {
        let (k, text) = match c {
            ClientId::Prefix(p) if p.is_empty() => {
                set.flags |= set_flag::ANY_CLIENT;
                continue;
            }
            ClientId::Prefix(p) => {
                set.cid_prefixes |= 1 << p.len();
                (kind::CID_PREFIX, p)
            }
            ClientId::Exact(e) => (kind::CID_EXACT, e),
        };
        edges.insert(
            MqttKey {
                set: id,
                node: 0,
                kind: k,
                hash: siphash(key, text.as_bytes()),
            },
            MqttNext { node: 0, flags: 0 },
        );
    }
    let mut next_id = 2;
    set.publish_root = automaton(id, key, &rule.publish, PUBLISH_ROOT, &mut next_id, edges)?;
    set.subscribe_root = automaton(
        id,
        key,
        &rule.subscribe,
        SUBSCRIBE_ROOT,
        &mut next_id,
        edges,
    )?;
    Ok(set)
}

/// A reference matcher: MQTT's own topic matching (§4.7) with Porin's
/// `{client_id}` level, written from the specification without the
/// automaton, for the differential tests.
pub fn reference_matches(pattern: &TopicPattern, topic: &str, client: Option<&str>) -> bool {
    let levels: Vec<&str> = topic.split('/').collect();
    if topic.starts_with('$') && !matches!(pattern.levels.first(), Some(Level::Literal(_))) {
        return false;
    }
    let mut i = 0;
    for l in &pattern.levels {
        match l {
            Level::Hash => return true,
            _ if i >= levels.len() => return false,
            Level::Plus => {}
            Level::Literal(s) => {
                if s != levels[i] {
                    return false;
                }
            }
            Level::ClientId => {
                if client != Some(levels[i]) || (i == 0 && levels[i].starts_with('$')) {
                    return false;
                }
            }
        }
        i += 1;
    }
    i == levels.len()
}

#[cfg(test)]
mod tests;
