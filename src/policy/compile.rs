//! [`compile`]: configuration + endpoints + host addresses → map entries.

use std::fmt;
use std::net::IpAddr;

use porin_common::datapath::identity as reserved;
use porin_common::sip::SipKey;

use crate::config::{Config, Loc};
use crate::discovery::endpoint::Endpoint;

use super::compiled::{Compiled, Warning};
use super::http::{self, HttpCompileError};
use super::identity::{CollisionError, Identities};
use super::rules::{self, Culprit, Entries, Overflow, POLICY_ENTRIES_PER_GENERATION};
use super::{addrs, select};

/// Why a configuration cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileError {
    /// Two groups or networks derive the same identity. The error carries
    /// no file name (`compile` is not given one); set
    /// `CollisionError::file` before showing it.
    Collision(CollisionError),
    /// The policy map would need more than
    /// [`POLICY_ENTRIES_PER_GENERATION`] entries.
    Overflow(Overflow),
    /// HTTP rules the datapath cannot hold.
    Http(HttpCompileError),
    /// A policy names a peer the configuration does not define (a
    /// validated configuration never does).
    UnknownPeer {
        policy: String,
        peer: String,
        loc: Loc,
    },
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompileError::Collision(e) => write!(f, "{e}"),
            CompileError::Http(e) => write!(f, "{e}"),
            CompileError::Overflow(o) => {
                write!(
                    f,
                    "the policy needs more than {} map entries (the map holds {} and \
                     keeps two generations during an update); ",
                    o.capacity,
                    rules::POLICY_MAP_ENTRIES
                )?;
                match &o.culprit {
                    Culprit::GroundRules => write!(
                        f,
                        "the ground rules alone fill it (`cross_group: allow` costs \
                         8 entries per pair of groups)"
                    ),
                    Culprit::Policy { name, loc, entries } => write!(
                        f,
                        "the limit was passed at policy `{name}` ({loc}), which expands to \
                         {entries} entries (peers x protocols x ports; every port of a \
                         range is one entry): use fewer or narrower port ranges"
                    ),
                }
            }
            CompileError::UnknownPeer { policy, peer, loc } => {
                write!(f, "policy `{policy}` ({loc}): unknown peer `{peer}`")
            }
        }
    }
}

impl std::error::Error for CompileError {}

impl From<CollisionError> for CompileError {
    fn from(e: CollisionError) -> Self {
        CompileError::Collision(e)
    }
}

impl From<Overflow> for CompileError {
    fn from(o: Overflow) -> Self {
        CompileError::Overflow(o)
    }
}

/// Compiles the configuration for the current endpoints. `host_addrs` are
/// the node's own addresses (e.g. the bridge gateways) that get
/// `identity::HOST`; `http_key` is the datapath's hash key for HTTP rule
/// keys ([`crate::datapath::Datapath::http_key`]; any key, e.g.
/// [`http::ANY_KEY`], when nothing is written to a datapath). Pure: the
/// same input gives the same output.
pub fn compile(
    cfg: &Config,
    endpoints: &[Endpoint],
    host_addrs: &[IpAddr],
    http_key: &SipKey,
) -> Result<Compiled, CompileError> {
    compile_with_capacity(
        cfg,
        endpoints,
        host_addrs,
        http_key,
        POLICY_ENTRIES_PER_GENERATION,
    )
}

fn compile_with_capacity(
    cfg: &Config,
    endpoints: &[Endpoint],
    host_addrs: &[IpAddr],
    http_key: &SipKey,
    capacity: usize,
) -> Result<Compiled, CompileError> {
    let ids = Identities::derive(cfg, "")?;
    check_peers(cfg, &ids)?;

    let mut entries = Entries::new(capacity);
    rules::ground_rules(cfg, &ids, &mut entries)?;
    rules::policies(cfg, &ids, &mut entries)?;

    let http_maps = http::compile(
        cfg,
        http_key,
        &entries.http,
        &entries.plain,
        &mut entries.map,
    )
    .map_err(CompileError::Http)?;

    let selection = select::select(&cfg.groups, endpoints);
    let mut out = Compiled {
        policy: entries.map,
        http: entries.http,
        http_maps,
        rules: cfg.policies.iter().map(|p| p.name.clone()).collect(),
        ..Compiled::default()
    };
    out.warnings
        .extend(selection.overlaps.iter().cloned().map(Warning::Overlap));
    addrs::endpoints(cfg, &ids, &selection, host_addrs, &mut out);
    addrs::networks(cfg, &ids, &mut out);
    for id in [
        reserved::ANY,
        reserved::HOST,
        reserved::WORLD,
        reserved::UNMANAGED,
    ] {
        out.names.insert(id, ids.describe(id));
    }
    for g in &cfg.groups {
        if let Some(id) = ids.group(&g.name) {
            out.names.insert(id, ids.describe(id));
        }
    }
    for n in &cfg.networks {
        if let Some(id) = ids.network(&n.name) {
            out.names.insert(id, ids.describe(id));
        }
    }
    Ok(out)
}

/// Refuses a policy peer without an identity instead of dropping it (which
/// would silently narrow or, for a `from` list, change the policy).
fn check_peers(cfg: &Config, ids: &Identities) -> Result<(), CompileError> {
    for p in &cfg.policies {
        if let Some(peer) = p.from.iter().chain(&p.to).find(|x| ids.peer(x).is_none()) {
            return Err(CompileError::UnknownPeer {
                policy: p.name.clone(),
                peer: peer.name.clone(),
                loc: peer.loc,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
pub(super) fn compile_small(
    cfg: &Config,
    endpoints: &[Endpoint],
    capacity: usize,
) -> Result<Compiled, CompileError> {
    compile_with_capacity(cfg, endpoints, &[], &super::http::ANY_KEY, capacity)
}
