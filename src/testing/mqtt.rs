//! MQTT packets as clients write them (3.1.1 and 5.0), for the parser's
//! tests and the kernel stage's `BPF_PROG_TEST_RUN` tests. The live tests
//! use real clients (`mosquitto_pub`, `mosquitto_sub`, paho) instead.

/// MQTT's variable byte integer.
pub fn varint(mut v: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        out.push(b);
        if v == 0 {
            return out;
        }
    }
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A packet: fixed header byte, remaining length, `body`.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len() as u32));
    out.extend_from_slice(body);
    out
}

/// CONNECT with clean session, keepalive 60, client id `id` (`level` 4 or
/// 5; MQTT 5 with a Session Expiry Interval property, as paho sends).
pub fn connect(level: u8, id: &str) -> Vec<u8> {
    let mut b = string(b"MQTT");
    b.push(level);
    b.push(0x02);
    b.extend_from_slice(&60u16.to_be_bytes());
    if level == 5 {
        // Properties: Session Expiry Interval (0x11) = 0.
        b.extend([5, 0x11, 0, 0, 0, 0]);
    }
    b.extend(string(id.as_bytes()));
    packet(0x10, &b)
}

/// CONNECT (3.1.1) with a Will: `topic` and `message`, published by the
/// broker when the client goes.
pub fn connect_with_will(id: &str, topic: &str, message: &[u8]) -> Vec<u8> {
    let mut b = string(b"MQTT");
    b.push(4);
    b.push(0x02 | 0x04);
    b.extend_from_slice(&60u16.to_be_bytes());
    b.extend(string(id.as_bytes()));
    b.extend(string(topic.as_bytes()));
    b.extend(string(message));
    packet(0x10, &b)
}

/// PUBLISH of `payload` to `topic` (`qos` 0-2, packet id 1 when > 0).
pub fn publish(level: u8, topic: &str, qos: u8, retain: bool, payload: &[u8]) -> Vec<u8> {
    let mut b = string(topic.as_bytes());
    if qos > 0 {
        b.extend_from_slice(&1u16.to_be_bytes());
    }
    if level == 5 {
        b.push(0);
    }
    b.extend_from_slice(payload);
    packet(0x30 | (qos << 1) | u8::from(retain), &b)
}

/// SUBSCRIBE to `filters` at QoS 0, packet id 1.
pub fn subscribe(level: u8, filters: &[&str]) -> Vec<u8> {
    let mut b = 1u16.to_be_bytes().to_vec();
    if level == 5 {
        b.push(0);
    }
    for f in filters {
        b.extend(string(f.as_bytes()));
        b.push(0);
    }
    packet(0x82, &b)
}

/// PINGREQ.
pub fn pingreq() -> Vec<u8> {
    vec![0xc0, 0]
}

/// DISCONNECT (3.1.1; a 5.0 broker takes it as reason 0 too).
pub fn disconnect() -> Vec<u8> {
    vec![0xe0, 0]
}

/// MQTT rules as a policy's `mqtt:` would give them, with the defaults
/// (QoS up to 2, retain allowed, no size limit).
pub fn rule(client_ids: &[&str], publish: &[&str], subscribe: &[&str]) -> crate::config::MqttRule {
    use crate::config::{ClientId, Loc, TopicPattern};
    let topics = |v: &[&str]| -> Vec<TopicPattern> {
        v.iter().map(|p| TopicPattern::parse(p).unwrap()).collect()
    };
    crate::config::MqttRule {
        client_ids: client_ids
            .iter()
            .map(|c| ClientId::parse(c).unwrap())
            .collect(),
        publish: topics(publish),
        subscribe: topics(subscribe),
        max_qos: 2,
        retain: true,
        max_message_size: None,
        loc: Loc { line: 1, column: 1 },
    }
}
