//! Names and what they refer to: name syntax, reserved names, uniqueness,
//! and resolution of `from`/`to`/`deny_from` references.

use std::collections::HashMap;

use super::error::Sink;
use super::read::closest;
use super::types::{Loc, Peer, PeerKind};

/// Names with a built-in meaning. `world` and `host` can be used as peers;
/// `unmanaged` is the identity of containers that no group selects.
pub const RESERVED_NAMES: [&str; 3] = ["world", "host", "unmanaged"];
/// Prefix the datapath uses for its own identities.
pub const RESERVED_PREFIX: &str = "reserved:";
/// Longest item name (a group name becomes part of identity labels).
pub const MAX_NAME_LEN: usize = 63;

/// Syntax of group, network and policy names: `[a-z0-9][a-z0-9-_.]{0,62}`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "`{name}`: names starting with `{RESERVED_PREFIX}` are reserved"
        ));
    }
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if !first_ok || !rest_ok || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "`{name}` is not a valid name: use 1-{MAX_NAME_LEN} characters from a-z, 0-9, \
             `-`, `_`, `.`, starting with a letter or digit"
        ));
    }
    Ok(())
}

/// A name defined by a group or a network, with where its `name` value is.
pub(crate) struct Declared {
    pub(crate) kind: PeerKind,
    pub(crate) name: String,
    pub(crate) loc: Loc,
    /// e.g. `groups[1].name`
    pub(crate) path: String,
}

/// Which kinds of names a reference may use.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allowed {
    /// Policy `from` / `to`: groups, networks, `world`, `host`.
    Peers,
    /// Uplink `deny_from`: networks only.
    Networks,
}

/// The names groups and networks define; they share one namespace because
/// both become identities.
pub(crate) struct Names {
    kinds: HashMap<String, PeerKind>,
}

impl Names {
    /// Reports reserved, duplicate and colliding names; the first
    /// definition in the file wins, later ones are the errors.
    pub(crate) fn new(mut declared: Vec<Declared>, sink: &mut Sink) -> Names {
        declared.sort_by_key(|d| d.loc);
        let mut kinds = HashMap::new();
        let mut first: HashMap<&str, &Declared> = HashMap::new();
        for d in &declared {
            if RESERVED_NAMES.contains(&d.name.as_str()) {
                sink.error(
                    d.loc,
                    &d.path,
                    format!("`{}` is a reserved name; choose another", d.name),
                );
                continue;
            }
            match first.get(d.name.as_str()) {
                Some(prev) => {
                    let what = if prev.kind == d.kind {
                        format!("duplicate {} name `{}`", kind_word(d.kind), d.name)
                    } else {
                        format!(
                            "`{}` is already the name of a {}; groups and networks share \
                             one namespace",
                            d.name,
                            kind_word(prev.kind)
                        )
                    };
                    sink.error(
                        d.loc,
                        &d.path,
                        format!(
                            "{what} (first defined at {}, line {})",
                            prev.path, prev.loc.line
                        ),
                    );
                }
                None => {
                    first.insert(&d.name, d);
                    kinds.insert(d.name.clone(), d.kind);
                }
            }
        }
        Names { kinds }
    }

    /// Resolves one reference; reports and returns `None` when it names
    /// nothing usable here.
    pub(crate) fn resolve(
        &self,
        name: &str,
        loc: Loc,
        path: &str,
        allowed: Allowed,
        sink: &mut Sink,
    ) -> Option<Peer> {
        let kind = match (name, self.kinds.get(name)) {
            ("world", _) => PeerKind::World,
            ("host", _) => PeerKind::Host,
            (_, Some(kind)) => *kind,
            ("unmanaged", None) => {
                sink.error(
                    loc,
                    path,
                    "`unmanaged` is reserved for containers no group selects and can not be \
                     used in a rule",
                );
                return None;
            }
            (_, None) => {
                let mut candidates: Vec<&str> = self
                    .kinds
                    .iter()
                    .filter(|(_, k)| allowed == Allowed::Peers || **k == PeerKind::Network)
                    .map(|(n, _)| n.as_str())
                    .collect();
                candidates.sort_unstable();
                if allowed == Allowed::Peers {
                    candidates.extend(["world", "host"]);
                }
                let what = match allowed {
                    Allowed::Peers => "group or network",
                    Allowed::Networks => "network",
                };
                let hint = closest(name, &candidates)
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default();
                sink.error(loc, path, format!("`{name}` is not a defined {what}{hint}"));
                return None;
            }
        };
        if allowed == Allowed::Networks && kind != PeerKind::Network {
            sink.error(
                loc,
                path,
                format!(
                    "`{name}` is a {}; deny_from accepts network names only",
                    kind_word(kind)
                ),
            );
            return None;
        }
        Some(Peer {
            kind,
            name: name.to_owned(),
            loc,
        })
    }
}

fn kind_word(kind: PeerKind) -> &'static str {
    match kind {
        PeerKind::Group => "group",
        PeerKind::Network => "network",
        PeerKind::World | PeerKind::Host => "reserved peer",
    }
}

/// Reports every repeated entry of `items` (name, position, path) after its
/// first occurrence; `what` names the entry in the message.
pub(crate) fn report_duplicates<'a>(
    items: impl IntoIterator<Item = (&'a str, Loc, &'a str)>,
    what: &str,
    sink: &mut Sink,
) {
    let mut seen: HashMap<&str, (Loc, &str)> = HashMap::new();
    for (name, loc, path) in items {
        match seen.get(name) {
            Some((first_loc, first_path)) => sink.error(
                loc,
                path,
                format!(
                    "duplicate {what} `{name}` (first at {first_path}, line {})",
                    first_loc.line
                ),
            ),
            None => {
                seen.insert(name, (loc, path));
            }
        }
    }
}

/// A policy is enforced on the containers of the groups it names, so at
/// least one side must name a group.
pub(crate) fn check_policy_subject(
    from: &[Peer],
    to: &[Peer],
    loc: Loc,
    path: &str,
    sink: &mut Sink,
) {
    let has_group = from.iter().chain(to).any(|p| p.kind == PeerKind::Group);
    if !has_group {
        sink.error(
            loc,
            path,
            "policy names no group on `from` or `to`; Porin enforces policies on the \
             containers of a group",
        );
    }
}

/// Linux interface names: 1-15 bytes (IFNAMSIZ - 1), no `/`, `:` or
/// whitespace, and not `.` or `..`.
pub fn check_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "interface name `{name}` must be 1-15 bytes long (it is {})",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("`{name}` is not a valid interface name"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || *c == '\0')
    {
        return Err(format!(
            "interface name `{name}` contains {bad:?}, which Linux does not allow"
        ));
    }
    Ok(())
}
