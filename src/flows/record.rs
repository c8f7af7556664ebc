//! Flow records: a decoded `FlowEvent` plus what userspace knows about its
//! two sides (identity names, containers, labels) and the interface, and
//! the JSON/wire view of it with Hubble's field names where they fit.

use std::{net::IpAddr, sync::Arc};

use porin_common::{
    datapath::DropReason,
    flow::{kind, verdict, FlowEvent, HTTP_PATH_BYTES},
};
use serde::{Deserialize, Serialize};

use crate::state::{Directory, EndpointMeta};

/// One side of a flow, resolved when the event was read.
#[derive(Debug, Clone)]
pub struct Side {
    pub name: Arc<str>,
    /// The container owning the address, if it is one.
    pub endpoint: Option<Arc<EndpointMeta>>,
}

/// A flow as kept in the history: the raw event (fixed size) and shared
/// references, so a record's size does not depend on label counts or name
/// lengths (bounded memory per record).
#[derive(Debug, Clone)]
pub struct FlowRecord {
    /// Position in the daemon's stream of records (1, 2, ...).
    pub seq: u64,
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub event: FlowEvent,
    pub src: Side,
    pub dst: Side,
    /// Interface name, at most 15 bytes as in the kernel.
    pub ifname: heapless::String<16>,
    /// Name of the policy of `event.rule` (None: ground rule or none).
    pub policy: Option<Arc<str>>,
}

impl FlowRecord {
    /// Enriches `event` with what `dir` knows now.
    pub fn enrich(seq: u64, time_ns: u64, event: FlowEvent, dir: &Directory) -> Self {
        let side = |addr: &[u8; 16], id| Side {
            name: dir.identity_name(id),
            endpoint: ip(event.family, addr).and_then(|a| dir.by_addr.get(&a).cloned()),
        };
        let mut ifname = heapless::String::new();
        if let Some(n) = dir.ifnames.get(&event.ifindex) {
            for c in n.chars() {
                if ifname.push(c).is_err() {
                    break;
                }
            }
        }
        FlowRecord {
            seq,
            time_ns,
            src: side(&event.saddr, event.src_identity),
            dst: side(&event.daddr, event.dst_identity),
            ifname,
            policy: event
                .rule
                .checked_sub(1)
                .and_then(|i| dir.rules.get(i as usize).cloned()),
            event,
        }
    }

    pub fn verdict(&self) -> &'static str {
        verdict_name(self.event.verdict)
    }

    pub fn view(&self) -> FlowView {
        let e = &self.event;
        let peer = |s: &Side, addr: &[u8; 16], port: u16, id: u32| PeerView {
            identity: id,
            identity_name: s.name.to_string(),
            ip: ip(e.family, addr)
                .map(|a| a.to_string())
                .unwrap_or_default(),
            port,
            container_name: s
                .endpoint
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            container_id: s
                .endpoint
                .as_ref()
                .map(|m| m.id.clone())
                .unwrap_or_default(),
            labels: s
                .endpoint
                .as_ref()
                .map(|m| m.labels.clone())
                .unwrap_or_default(),
            runtime: s
                .endpoint
                .as_ref()
                .map(|m| m.runtime.clone())
                .unwrap_or_default(),
            image: s
                .endpoint
                .as_ref()
                .map(|m| m.image.clone())
                .unwrap_or_default(),
        };
        let http = (e.kind == kind::HTTP).then(|| {
            let len = usize::from(e.http_path_len).min(HTTP_PATH_BYTES);
            HttpView {
                method: method_name(e.http_method).to_string(),
                url: String::from_utf8_lossy(&e.http_path[..len]).into_owned(),
            }
        });
        let mqtt = (e.kind == kind::MQTT).then(|| {
            let len = usize::from(e.http_path_len).min(HTTP_PATH_BYTES);
            let text = String::from_utf8_lossy(&e.http_path[..len]).into_owned();
            let connect = e.http_method == porin_common::mqtt::ptype::CONNECT;
            MqttView {
                packet_type: porin_common::mqtt::ptype::name(e.http_method).to_string(),
                client_id: if connect { text.clone() } else { String::new() },
                topic: if connect { String::new() } else { text },
            }
        });
        FlowView {
            time: rfc3339(self.time_ns),
            verdict: self.verdict().to_string(),
            drop_reason_desc: (e.verdict != verdict::FORWARDED)
                .then(|| DropReason::name_of(e.drop_reason).to_string()),
            event_type: match e.kind {
                kind::NEW_FLOW => "NEW_FLOW",
                kind::DROP => "DROP",
                kind::HTTP => "L7_HTTP",
                kind::MQTT => "L7_MQTT",
                _ => "UNKNOWN",
            }
            .to_string(),
            traffic_direction: if e.direction == 0 {
                "EGRESS"
            } else {
                "INGRESS"
            }
            .to_string(),
            ip_version: e.family,
            protocol: protocol_name(e.protocol),
            source: peer(&self.src, &e.saddr, e.sport, e.src_identity),
            destination: peer(&self.dst, &e.daddr, e.dport, e.dst_identity),
            tcp_flags: tcp_flags(e.tcp_flags),
            interface: InterfaceView {
                index: e.ifindex,
                name: self.ifname.to_string(),
            },
            bytes: e.bytes,
            policy: self.policy.as_deref().unwrap_or_default().to_string(),
            l7_http: http,
            l7_mqtt: mqtt,
        }
    }
}

/// A flow for people and tools (`porin flows -o json`, the flow log, the
/// control protocol). No `skip_serializing_if`: postcard needs every field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowView {
    pub time: String,
    pub verdict: String,
    pub drop_reason_desc: Option<String>,
    pub event_type: String,
    pub traffic_direction: String,
    pub ip_version: u8,
    pub protocol: String,
    pub source: PeerView,
    pub destination: PeerView,
    pub tcp_flags: Vec<String>,
    pub interface: InterfaceView,
    pub bytes: u32,
    /// The policy that allowed it; empty for a ground rule or a drop.
    pub policy: String,
    pub l7_http: Option<HttpView>,
    /// MQTT packets judged by MQTT rules. Absent in logs written before
    /// it existed.
    #[serde(default)]
    pub l7_mqtt: Option<MqttView>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub identity: u32,
    pub identity_name: String,
    pub ip: String,
    pub port: u16,
    pub container_name: String,
    pub container_id: String,
    pub labels: Vec<String>,
    /// The container's runtime (`podman`, `containerd`, `docker`); empty
    /// when not a container. Absent in logs written before it existed.
    #[serde(default)]
    pub runtime: String,
    /// The container's image reference; empty when not a container.
    #[serde(default)]
    pub image: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceView {
    pub index: u32,
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpView {
    pub method: String,
    pub url: String,
}

/// An MQTT packet of an `L7_MQTT` record: its type, and the first 64
/// bytes of its topic (PUBLISH), filter (SUBSCRIBE) or client id
/// (CONNECT).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttView {
    pub packet_type: String,
    pub topic: String,
    pub client_id: String,
}

/// Decodes a ring-buffer record; None when its size is not the layout's.
pub fn decode(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() != core::mem::size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: the size matches and FlowEvent is plain data valid for any
    // bytes; read_unaligned because ring-buffer records are only 8-aligned
    // by the kernel's convention, not by the slice's type.
    Some(unsafe { bytes.as_ptr().cast::<FlowEvent>().read_unaligned() })
}

pub fn ip(family: u8, addr: &[u8; 16]) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::from([addr[0], addr[1], addr[2], addr[3]])),
        6 => Some(IpAddr::from(*addr)),
        _ => None,
    }
}

pub fn verdict_name(v: u8) -> &'static str {
    match v {
        verdict::FORWARDED => "FORWARDED",
        verdict::DROPPED => "DROPPED",
        verdict::AUDIT => "AUDIT",
        _ => "UNKNOWN",
    }
}

fn protocol_name(p: u8) -> String {
    match p {
        1 => "ICMPv4".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        other => format!("IP/{other}"),
    }
}

fn method_name(m: u8) -> &'static str {
    porin_common::http::method::NAMES
        .get(usize::from(m))
        .copied()
        .unwrap_or("?")
}

fn tcp_flags(f: u8) -> Vec<String> {
    [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
    ]
    .iter()
    .filter(|(bit, _)| f & bit != 0)
    .map(|(_, n)| n.to_string())
    .collect()
}

/// `2024-05-01T12:00:00.123456789Z` from nanoseconds since the epoch.
pub fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (y, m, d) = civil(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ns % 1_000_000_000
    )
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A TCP SYN from 10.88.0.2:40000 to 10.88.0.3:8080, dropped by policy.
    pub fn drop_event() -> FlowEvent {
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[10, 88, 0, 2]);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[10, 88, 0, 3]);
        FlowEvent {
            ts_ns: 5,
            saddr,
            daddr,
            sport: 40000,
            dport: 8080,
            ifindex: 7,
            src_identity: 0x0100_0001,
            dst_identity: 0x0100_0002,
            bytes: 74,
            rule: 0,
            kind: kind::DROP,
            verdict: verdict::DROPPED,
            drop_reason: 0,
            direction: 0,
            protocol: 6,
            family: 4,
            tcp_flags: 0x02,
            http_method: 0,
            http_path_len: 0,
            _pad: [0; 6],
            http_path: [0; HTTP_PATH_BYTES],
        }
    }

    pub fn directory() -> Directory {
        let sensor = Arc::new(EndpointMeta {
            name: "sensor-1".into(),
            id: "a".repeat(64),
            runtime: "podman".into(),
            image: "localhost/sensor:1".into(),
            labels: vec!["app=sensor".into()],
        });
        Directory {
            by_addr: HashMap::from([("10.88.0.2".parse().unwrap(), sensor)]),
            ifnames: HashMap::from([(7, Arc::from("veth7"))]),
            names: HashMap::from([
                (0x0100_0001, Arc::from("sensor")),
                (0x0100_0002, Arc::from("web")),
            ]),
            rules: vec![Arc::from("sensor-to-web")],
        }
    }

    #[test]
    fn records_are_enriched_from_the_directory() {
        let r = FlowRecord::enrich(1, 1_700_000_000_123_456_789, drop_event(), &directory());
        let v = r.view();
        assert_eq!(v.time, "2023-11-14T22:13:20.123456789Z");
        assert_eq!(v.verdict, "DROPPED");
        assert_eq!(v.drop_reason_desc.as_deref(), Some("POLICY_DENIED"));
        assert_eq!(v.traffic_direction, "EGRESS");
        assert_eq!(v.protocol, "TCP");
        assert_eq!(v.tcp_flags, ["SYN"]);
        assert_eq!(v.source.identity_name, "sensor");
        assert_eq!(v.source.container_name, "sensor-1");
        assert_eq!(v.source.labels, ["app=sensor"]);
        assert_eq!(v.source.image, "localhost/sensor:1");
        assert_eq!(v.source.runtime, "podman");
        assert_eq!(v.source.ip, "10.88.0.2");
        assert_eq!(v.source.port, 40000);
        assert_eq!(v.destination.identity_name, "web");
        assert_eq!(v.destination.container_name, "", "not a known container");
        assert_eq!(v.interface.name, "veth7");
        assert_eq!(v.policy, "");
        let mut allowed = drop_event();
        allowed.verdict = verdict::FORWARDED;
        allowed.kind = kind::NEW_FLOW;
        allowed.rule = 1;
        allowed.src_identity = 99;
        let v = FlowRecord::enrich(2, 0, allowed, &directory()).view();
        assert_eq!(v.drop_reason_desc, None);
        assert_eq!(v.policy, "sensor-to-web");
        assert_eq!(v.source.identity_name, "identity 0x00000063");
        assert_eq!(v.time, "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn http_events_carry_method_path_and_reason() {
        let mut e = drop_event();
        e.kind = kind::HTTP;
        e.drop_reason = porin_common::datapath::DropReason::HttpDenied as u8;
        e.http_method = porin_common::http::method::POST;
        e.http_path[..6].copy_from_slice(b"/admin");
        e.http_path_len = 6;
        let v = FlowRecord::enrich(3, 0, e, &directory()).view();
        assert_eq!(v.event_type, "L7_HTTP");
        assert_eq!(v.drop_reason_desc.as_deref(), Some("HTTP_DENIED"));
        let http = v.l7_http.expect("HTTP fields");
        assert_eq!(
            (http.method.as_str(), http.url.as_str()),
            ("POST", "/admin")
        );
        e.http_method = porin_common::http::method::OTHER;
        let v = FlowRecord::enrich(4, 0, e, &directory()).view();
        assert_eq!(v.l7_http.unwrap().method, "?");
    }

    #[test]
    fn mqtt_events_carry_packet_type_and_topic() {
        let mut e = drop_event();
        e.kind = kind::MQTT;
        e.drop_reason = porin_common::datapath::DropReason::MqttDenied as u8;
        e.http_method = porin_common::mqtt::ptype::PUBLISH;
        e.http_path[..9].copy_from_slice(b"cams/2/fr");
        e.http_path_len = 9;
        let v = FlowRecord::enrich(3, 0, e, &directory()).view();
        assert_eq!(v.event_type, "L7_MQTT");
        assert_eq!(v.drop_reason_desc.as_deref(), Some("MQTT_DENIED"));
        let m = v.l7_mqtt.clone().expect("MQTT fields");
        assert_eq!(
            (m.packet_type.as_str(), m.topic.as_str()),
            ("PUBLISH", "cams/2/fr")
        );
        assert!(v.l7_http.is_none());
        e.http_method = porin_common::mqtt::ptype::CONNECT;
        let m = FlowRecord::enrich(4, 0, e, &directory())
            .view()
            .l7_mqtt
            .unwrap();
        assert_eq!((m.client_id.as_str(), m.topic.as_str()), ("cams/2/fr", ""));
    }

    #[test]
    fn decode_checks_the_size() {
        let e = drop_event();
        // SAFETY: viewing a plain-data struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const FlowEvent).cast::<u8>(),
                size_of::<FlowEvent>(),
            )
        };
        assert_eq!(decode(bytes), Some(e));
        assert_eq!(decode(&bytes[1..]), None);
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(
            rfc3339(951_782_400 * 1_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
        assert_eq!(
            rfc3339(4_107_542_399 * 1_000_000_000),
            "2100-02-28T23:59:59.000000000Z"
        );
    }
}
