//! The control protocol between `porin` commands and `porin run`.
//!
//! # Framing
//! Every message is a frame: a 4-byte little-endian payload length, then
//! the payload, postcard-encoded. A request payload starts with the protocol
//! version (`u16` varint) followed by a [`Request`]; a reply payload is a
//! [`Response`]. The version is decoded on its own first, so a client of
//! another version gets a clear error reply instead of a decoding error.
//!
//! Frames have a maximum size ([`MAX_REQUEST`] towards the daemon,
//! [`MAX_RESPONSE`] back), checked from the length prefix before anything is
//! allocated: a client cannot make the daemon allocate more than
//! `MAX_REQUEST` bytes per connection.
//!
//! # Versioning
//! [`VERSION`] changes whenever a type here changes incompatibly; new
//! requests and replies are only ever appended to the enums (postcard encodes
//! variants by index), so an old client can still ask what it knows.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::flows::record::FlowView;

/// Protocol version; see the module notes. 2: `Status::last_reload`, and
/// `Request::Reload` / `Response::Reload`. 3: `Status::conntrack`,
/// `ReloadOutcome::revoked`. 4: `PeerView::runtime` and `image` in flows.
pub const VERSION: u16 = 4;
/// Largest request payload the daemon accepts.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Largest reply payload (a policy dump or a page of flows).
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;
/// Bytes of the length prefix.
pub const HEADER: usize = 4;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Status,
    Policy,
    /// The last `last` matching flows; with `follow`, the daemon then keeps
    /// sending [`Response::Flows`] frames with new matching flows until the
    /// client hangs up.
    Flows {
        filter: FlowFilter,
        last: u32,
        follow: bool,
    },
    /// Re-read the configuration file the daemon was started with: validate
    /// it, and apply it if valid. Answered with [`Response::Reload`] once
    /// the new policy is enforced (or refused).
    Reload,
    /// The HTTP requests each policy allowed, counted in the kernel
    /// ([`Response::HttpCounts`]). Last: older daemons, which do not know
    /// it, still decode every other request.
    HttpCounts,
}

/// Which flows a client wants; empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowFilter {
    /// Verdicts (`FORWARDED`, `DROPPED`, `AUDIT`), any of them.
    pub verdicts: Vec<String>,
    /// Identity names (`web`, `world`) or numbers; matches either side.
    pub identities: Vec<String>,
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Status(Box<Status>),
    Policy(Box<PolicyDump>),
    Flows(Vec<FlowView>),
    Error(ErrorReply),
    Reload(ReloadOutcome),
    /// Policies with allowed HTTP requests, in policy order.
    HttpCounts(Vec<PolicyCount>),
}

/// HTTP requests one policy allowed since its number last changed (`other`:
/// the policies past the counted ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCount {
    pub policy: String,
    pub allowed: u64,
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadResult {
    /// The new file is valid and its policy is enforced.
    Applied,
    /// The file is invalid: nothing changed.
    Invalid,
    /// The file is valid but its policy could not be applied; the previous
    /// policy stays in force (see `errors`).
    Failed,
    /// Still being applied when the daemon stopped waiting for it.
    Pending,
}

/// The outcome of one reload (SIGHUP or `porin reload`): the reply to
/// [`Request::Reload`] and `porin status`'s "last reload".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    pub result: ReloadResult,
    /// `SIGHUP` or `porin reload`.
    pub trigger: String,
    pub config_file: String,
    /// When the reload was asked for, in nanoseconds since the epoch.
    pub requested_unix_ns: u64,
    /// The policy generation in force after it (the old one when the reload
    /// changed nothing).
    pub policy_generation: u64,
    /// Active datapath slot (0 or 1) after it.
    pub datapath_slot: u32,
    /// From the request to the new policy enforced (maps written, the
    /// generation switched, attachments done), in microseconds; 0 unless
    /// applied.
    pub enforced_us: u64,
    /// Why it was refused or failed: for an invalid file, one
    /// `FILE:LINE:COLUMN: message` per line, as `porin check-config` prints.
    pub errors: String,
    /// Established connections the applied policy no longer allows, ended
    /// by the apply (`datapath::conntrack`); 0 unless applied.
    pub revoked: u64,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The frame could not be decoded (garbage, truncated payload).
    Malformed,
    /// The length prefix exceeds [`MAX_REQUEST`].
    TooLarge,
    /// The client speaks another protocol version.
    Version,
    /// The client took too long to send its request.
    Timeout,
    /// The daemon could not answer (e.g. its state is unavailable).
    Internal,
    /// The client's user may not use the socket (`SO_PEERCRED`).
    Denied,
}

/// `porin status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub config_file: String,
    pub uptime_s: u64,
    /// Number of policy applies (generations) since the daemon started.
    pub policy_generation: u64,
    /// Active datapath generation slot (0 or 1).
    pub datapath_slot: u32,
    pub endpoints: Vec<EndpointStatus>,
    /// (identity, name) of every identity the policy knows.
    pub identities: Vec<(u32, String)>,
    /// Host veths with programs attached.
    pub attached: Vec<String>,
    /// Veths that failed to attach on the last apply.
    pub attach_failures: Vec<String>,
    pub maps: Vec<MapFill>,
    /// `porin version`'s feature lines.
    pub kernel: Vec<(String, String)>,
    pub warnings: Vec<String>,
    /// The quarantine gate in one line (empty from older daemons).
    #[serde(default)]
    pub gate: String,
    pub flows_in_history: u64,
    pub history_capacity: u64,
    pub events_lost: u64,
    /// The last reload since start (None: none yet).
    pub last_reload: Option<ReloadOutcome>,
    /// Conntrack's per-endpoint quota (empty from older daemons).
    #[serde(default)]
    pub conntrack: ConntrackStatus,
}

/// Conntrack's share per endpoint (`conntrack.max_per_endpoint`,
/// `conntrack.max_http_per_endpoint`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackStatus {
    /// Most entries per endpoint (0: no limit).
    pub max_per_endpoint: u32,
    /// Most HTTP-ruled connections per endpoint (0: no limit).
    pub max_http_per_endpoint: u32,
    /// Packets of new flows refused because their endpoint was at the
    /// quota, since the programs were loaded (`CONNTRACK_QUOTA` drops,
    /// audited ones included).
    pub refused: u64,
    /// Likewise for the HTTP quota (`HTTP_QUOTA` drops).
    pub http_refused: u64,
    /// Every endpoint with entries, most first.
    pub per_endpoint: Vec<EndpointConnections>,
}

/// One endpoint's share of the conntrack tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointConnections {
    /// Host veth name (`ifindex N` when it no longer exists).
    pub veth: String,
    pub entries: u32,
    /// HTTP-ruled connections among them.
    pub http: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub name: String,
    pub id: String,
    pub runtime: String,
    pub identity: u32,
    pub identity_name: String,
    /// `enforce`, `audit` or why it is not enforced.
    pub mode: String,
    pub addresses: Vec<String>,
    pub veths: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFill {
    pub name: String,
    pub entries: u64,
    pub capacity: u64,
}

/// `porin policy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDump {
    pub policy_generation: u64,
    pub summary: String,
    /// `Compiled::explain()`: per endpoint, what it may send and receive.
    pub explain: String,
    /// Policy names by 1-based rule number.
    pub rules: Vec<String>,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("truncated frame: {0}")]
    Truncated(#[source] io::Error),
    #[error("undecodable frame: {0}")]
    Decode(#[from] postcard::Error),
    #[error("protocol version {got}, this side speaks {VERSION}")]
    Version { got: u16 },
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

impl FrameError {
    /// The error reply the daemon sends for it.
    pub fn reply(&self) -> ErrorReply {
        let code = match self {
            FrameError::TooLarge { .. } => ErrorCode::TooLarge,
            FrameError::Version { .. } => ErrorCode::Version,
            FrameError::Io(e) if e.kind() == io::ErrorKind::TimedOut => ErrorCode::Timeout,
            FrameError::Closed | FrameError::Io(_) => ErrorCode::Internal,
            FrameError::Truncated(_) | FrameError::Decode(_) => ErrorCode::Malformed,
        };
        ErrorReply {
            code,
            message: self.to_string(),
        }
    }
}

/// `payload` with its length prefix.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A request as a complete frame.
pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut payload = postcard::to_stdvec(&VERSION).expect("a u16 always encodes");
    payload.extend(postcard::to_stdvec(req).expect("requests always encode"));
    frame(&payload)
}

/// A reply as a complete frame. A reply larger than [`MAX_RESPONSE`] is
/// replaced by an error reply saying so.
pub fn encode_response(resp: &Response) -> Vec<u8> {
    let payload = postcard::to_stdvec(resp).unwrap_or_else(|e| {
        postcard::to_stdvec(&internal(format!("encoding the reply: {e}"))).expect("encodes")
    });
    if payload.len() > MAX_RESPONSE {
        let too_big = internal(format!(
            "the reply is {} bytes, over the limit of {MAX_RESPONSE}; ask for fewer flows",
            payload.len()
        ));
        return frame(&postcard::to_stdvec(&too_big).expect("encodes"));
    }
    frame(&payload)
}

fn internal(message: String) -> Response {
    Response::Error(ErrorReply {
        code: ErrorCode::Internal,
        message,
    })
}

/// The payload length from a header, checked against `max`.
pub fn payload_len(header: [u8; HEADER], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes a request payload (version first).
pub fn decode_request(payload: &[u8]) -> Result<Request, FrameError> {
    let (version, rest) = postcard::take_from_bytes::<u16>(payload)?;
    if version != VERSION {
        return Err(FrameError::Version { got: version });
    }
    let (req, rest) = postcard::take_from_bytes::<Request>(rest)?;
    if !rest.is_empty() {
        return Err(FrameError::Decode(postcard::Error::DeserializeBadEncoding));
    }
    Ok(req)
}

pub fn decode_response(payload: &[u8]) -> Result<Response, FrameError> {
    Ok(postcard::from_bytes(payload)?)
}

/// Reads one frame's payload from a blocking reader (the client side).
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; HEADER];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(FrameError::Io(e)),
    }
    let len = payload_len(header, max)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Truncated(e)
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(payload)
}

/// Sends `req` and reads one reply (blocking).
pub fn call(stream: &mut (impl Read + Write), req: &Request) -> Result<Response, FrameError> {
    // A daemon that refuses the client (permissions) replies at once and
    // closes, possibly before the request is written: the write then fails
    // with EPIPE, but the refusal is waiting to be read and says why.
    let sent = stream.write_all(&encode_request(req));
    match next_response(stream) {
        Ok(reply) => Ok(reply),
        Err(read) => Err(match sent {
            Err(write) => write.into(),
            Ok(()) => read,
        }),
    }
}

/// Reads the next reply (blocking), e.g. while following flows.
pub fn next_response(stream: &mut impl Read) -> Result<Response, FrameError> {
    decode_response(&read_frame(stream, MAX_RESPONSE)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(frame: &[u8]) -> &[u8] {
        &frame[HEADER..]
    }

    #[test]
    fn requests_round_trip() {
        for req in [
            Request::Status,
            Request::Policy,
            Request::Flows {
                filter: FlowFilter {
                    verdicts: vec!["DROPPED".into()],
                    identities: vec!["web".into(), "16777216".into()],
                },
                last: 20,
                follow: true,
            },
            Request::Reload,
        ] {
            let f = encode_request(&req);
            let len = payload_len(f[..4].try_into().unwrap(), MAX_REQUEST).unwrap();
            assert_eq!(len, f.len() - HEADER);
            assert_eq!(decode_request(payload(&f)).unwrap(), req);
        }
    }

    #[test]
    fn responses_round_trip() {
        let status = Status {
            version: "0.1.0".into(),
            endpoints: vec![EndpointStatus {
                name: "web".into(),
                identity: 7,
                ..Default::default()
            }],
            ..Default::default()
        };
        let reload = ReloadOutcome {
            result: ReloadResult::Invalid,
            trigger: "porin reload".into(),
            config_file: "/etc/porin/porin.yaml".into(),
            requested_unix_ns: 1,
            policy_generation: 4,
            datapath_slot: 1,
            enforced_us: 0,
            errors: "/etc/porin/porin.yaml:3:9: enforcement.mode: unknown value".into(),
            revoked: 0,
        };
        let status = Status {
            last_reload: Some(reload.clone()),
            ..status
        };
        let resp = Response::Status(Box::new(status));
        let f = encode_response(&resp);
        assert_eq!(decode_response(payload(&f)).unwrap(), resp);
        let resp = Response::Reload(reload);
        let f = encode_response(&resp);
        assert_eq!(decode_response(payload(&f)).unwrap(), resp);
        let err = Response::Error(ErrorReply {
            code: ErrorCode::Malformed,
            message: "x".into(),
        });
        assert_eq!(
            decode_response(payload(&encode_response(&err))).unwrap(),
            err
        );
    }

    #[test]
    fn a_truncated_request_is_malformed() {
        let f = encode_request(&Request::Flows {
            filter: FlowFilter::default(),
            last: 300,
            follow: false,
        });
        let p = payload(&f);
        for cut in 0..p.len() {
            let e = decode_request(&p[..cut]).unwrap_err();
            assert_eq!(e.reply().code, ErrorCode::Malformed, "cut at {cut}: {e}");
        }
        // A frame whose payload stops early on the wire.
        let mut short = &f[..f.len() - 1];
        let e = read_frame(&mut short, MAX_REQUEST).unwrap_err();
        assert!(matches!(e, FrameError::Truncated(_)), "{e}");
        assert_eq!(e.reply().code, ErrorCode::Malformed);
    }

    #[test]
    fn an_oversized_frame_is_refused_before_reading_it() {
        let header = ((MAX_REQUEST + 1) as u32).to_le_bytes();
        let e = payload_len(header, MAX_REQUEST).unwrap_err();
        assert_eq!(e.reply().code, ErrorCode::TooLarge);
        let mut wire: &[u8] = &u32::MAX.to_le_bytes();
        assert!(matches!(
            read_frame(&mut wire, MAX_REQUEST),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_and_trailing_bytes_are_malformed_and_versions_are_checked() {
        // This version, then variant 200 (no such request).
        assert!(matches!(
            decode_request(&[VERSION as u8, 200, 1]),
            Err(FrameError::Decode(_))
        ));
        assert!(matches!(
            decode_request(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::Decode(_))
        ));
        let mut ok = postcard::to_stdvec(&VERSION).unwrap();
        ok.extend(postcard::to_stdvec(&Request::Status).unwrap());
        ok.push(0);
        assert!(matches!(decode_request(&ok), Err(FrameError::Decode(_))));
        let mut other = postcard::to_stdvec(&(VERSION + 1)).unwrap();
        other.extend(postcard::to_stdvec(&Request::Status).unwrap());
        let e = decode_request(&other).unwrap_err();
        assert_eq!(e.reply().code, ErrorCode::Version);
        assert!(e.to_string().contains(&format!("version {}", VERSION + 1)));
        // An empty connection is "closed", not an error to reply to.
        let mut empty: &[u8] = &[];
        assert!(matches!(
            read_frame(&mut empty, MAX_REQUEST),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn an_oversized_reply_becomes_an_error_reply() {
        let big = FlowView {
            policy: "x".repeat(MAX_RESPONSE),
            ..Default::default()
        };
        let f = encode_response(&Response::Flows(vec![big]));
        match decode_response(payload(&f)).unwrap() {
            Response::Error(e) => assert!(e.message.contains("over the limit"), "{}", e.message),
            _ => panic!("expected an error reply"),
        }
    }
}
