//! Syntax of the MQTT part of a policy: client ids and topic patterns.
//!
//! Topics follow MQTT's own matching (MQTT 3.1.1 §4.7, 5.0 §4.7): levels
//! split at `/`, `+` one whole level, `#` the last level and everything
//! below it (its parent included: `a/#` matches `a`). Porin adds one
//! level, `{client_id}`: the client id the connection sent in its
//! CONNECT, so `cams/{client_id}/#` lets each camera publish under its
//! own name only.

use std::fmt;

/// Longest topic pattern (bytes).
pub const MAX_TOPIC: usize = 256;
/// Longest exact client id (bytes).
pub const MAX_CLIENT_ID: usize = 256;
/// Most topic patterns in one of `publish` / `subscribe`.
pub const MAX_TOPICS: usize = 64;

/// One level of a topic pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Literal(String),
    /// `+`
    Plus,
    /// `#` (always the last level)
    Hash,
    /// `{client_id}`
    ClientId,
}

/// A `publish` or `subscribe` pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPattern {
    pub levels: Vec<Level>,
}

impl TopicPattern {
    pub fn parse(text: &str) -> Result<TopicPattern, String> {
        if text.is_empty() {
            return Err("a topic pattern must not be empty".into());
        }
        if text.len() > MAX_TOPIC {
            return Err(format!(
                "topic pattern is {} bytes; at most {MAX_TOPIC}",
                text.len()
            ));
        }
        if text.contains('\0') {
            return Err("a topic must not contain NUL".into());
        }
        if text.ends_with('/') {
            return Err(format!(
                "`{text}` ends with `/` (an empty last level): not supported; \
                 the datapath refuses such topics"
            ));
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "+" => Level::Plus,
                "#" if i + 1 == parts.len() => Level::Hash,
                "#" => {
                    return Err(format!(
                        "`#` must be the last level of `{text}` (it covers everything below)"
                    ))
                }
                "{client_id}" => Level::ClientId,
                p if p.contains('+') || p.contains('#') => {
                    return Err(format!(
                        "`{p}` in `{text}`: `+` and `#` must be a whole level (`a/+/b`, `a/#`)"
                    ))
                }
                p if p.contains('{') || p.contains('}') => {
                    return Err(format!(
                        "`{p}` in `{text}`: the only placeholder is a whole `{{client_id}}` level"
                    ))
                }
                p => Level::Literal(p.to_string()),
            };
            levels.push(level);
        }
        Ok(TopicPattern { levels })
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.levels.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            match l {
                Level::Literal(s) => f.write_str(s)?,
                Level::Plus => f.write_str("+")?,
                Level::Hash => f.write_str("#")?,
                Level::ClientId => f.write_str("{client_id}")?,
            }
        }
        Ok(())
    }
}

/// A `client_id` pattern: exact, or a prefix (`cam-*`; `*` alone is any).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClientId {
    Exact(String),
    Prefix(String),
}

impl ClientId {
    pub fn parse(text: &str) -> Result<ClientId, String> {
        let (body, prefix) = match text.strip_suffix('*') {
            Some(b) => (b, true),
            None => (text, false),
        };
        if body.contains('*') {
            return Err(format!(
                "`{text}`: `*` may only end a client id pattern (`cam-*`)"
            ));
        }
        if prefix {
            if body.len() > porin_common::mqtt::MAX_CID_PREFIX {
                return Err(format!(
                    "client id prefix `{body}` is {} bytes; at most {}",
                    body.len(),
                    porin_common::mqtt::MAX_CID_PREFIX
                ));
            }
            return Ok(ClientId::Prefix(body.to_string()));
        }
        if body.is_empty() {
            return Err("a client id must not be empty (write `*` for any)".into());
        }
        if body.len() > MAX_CLIENT_ID {
            return Err(format!(
                "client id is {} bytes; at most {MAX_CLIENT_ID}",
                body.len()
            ));
        }
        Ok(ClientId::Exact(body.to_string()))
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientId::Exact(s) => f.write_str(s),
            ClientId::Prefix(s) => write!(f, "{s}*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns() {
        let p = TopicPattern::parse("sensors/+/temperature").unwrap();
        assert_eq!(
            p.levels,
            vec![
                Level::Literal("sensors".into()),
                Level::Plus,
                Level::Literal("temperature".into())
            ]
        );
        assert_eq!(p.to_string(), "sensors/+/temperature");
        let p = TopicPattern::parse("cams/{client_id}/#").unwrap();
        assert_eq!(p.levels[1], Level::ClientId);
        assert_eq!(p.levels[2], Level::Hash);
        assert_eq!(TopicPattern::parse("#").unwrap().levels, vec![Level::Hash]);
        // Empty levels are levels (but not the last: see below).
        assert_eq!(TopicPattern::parse("/a//b").unwrap().levels.len(), 4);
        for bad in ["", "a/#/b", "a+/b", "a/b#", "a/{client}", "x\0y", "a/"] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(TopicPattern::parse(&"a".repeat(MAX_TOPIC + 1)).is_err());
    }

    #[test]
    fn client_ids() {
        assert_eq!(
            ClientId::parse("cam-*").unwrap(),
            ClientId::Prefix("cam-".into())
        );
        assert_eq!(
            ClientId::parse("*").unwrap(),
            ClientId::Prefix(String::new())
        );
        assert_eq!(
            ClientId::parse("hub").unwrap(),
            ClientId::Exact("hub".into())
        );
        for bad in ["", "a*b", "**", &"x".repeat(64 + 1)] {
            let r = ClientId::parse(&format!("{bad}*"));
            if bad.is_empty() {
                assert!(r.is_ok());
            } else {
                assert!(r.is_err(), "{bad:?}*");
            }
        }
        assert!(ClientId::parse("a*b").is_err());
        assert!(ClientId::parse("").is_err());
    }
}
