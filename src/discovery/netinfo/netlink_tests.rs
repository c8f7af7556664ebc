//! Crafted buffers for the rtnetlink parser: well-formed answers as the
//! kernel sends them, and broken ones that must give errors, not panics.

use super::*;

const NLA_F_NESTED: u16 = 0x8000;

fn rta(ty: u16, data: &[u8]) -> Vec<u8> {
    let mut v = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(data);
    v.resize(align4(v.len()), 0);
    v
}

fn nlmsg(ty: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut v = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&seq.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes());
    v.extend_from_slice(body);
    v.resize(align4(v.len()), 0);
    v
}

fn ifinfo(index: u32, flags: u32, attributes: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![0u8, 0, 1, 0]; // family, pad, type ARPHRD_ETHER
    v.extend_from_slice(&index.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes()); // change
    for a in attributes {
        v.extend_from_slice(a);
    }
    v
}

fn ifaddr(family: u8, prefix_len: u8, index: u32, attributes: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![family, prefix_len, 0, 0];
    v.extend_from_slice(&index.to_ne_bytes());
    for a in attributes {
        v.extend_from_slice(a);
    }
    v
}

const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];

/// A veth as the kernel describes it inside a container.
fn veth_body() -> Vec<u8> {
    ifinfo(
        2,
        0x1003,
        &[
            rta(IFLA_IFNAME, b"eth0\0"),
            rta(IFLA_ADDRESS, &MAC),
            rta(IFLA_LINK, &17u32.to_ne_bytes()),
            rta(IFLA_LINK_NETNSID, &0i32.to_ne_bytes()),
            rta(
                IFLA_LINKINFO | NLA_F_NESTED,
                &[rta(IFLA_INFO_KIND, b"veth\0"), rta(2, &[1, 2, 3, 4])].concat(),
            ),
        ],
    )
}

fn lo_body() -> Vec<u8> {
    ifinfo(
        1,
        IFF_LOOPBACK | 1,
        &[rta(IFLA_IFNAME, b"lo\0"), rta(IFLA_ADDRESS, &[0; 6])],
    )
}

fn v4_body() -> Vec<u8> {
    ifaddr(
        AF_INET,
        24,
        2,
        &[
            rta(IFA_ADDRESS, &[10, 232, 7, 2]),
            rta(IFA_LOCAL, &[10, 232, 7, 2]),
            rta(3, b"eth0\0"), // IFA_LABEL
        ],
    )
}

fn v6_body() -> Vec<u8> {
    let a: Ipv6Addr = "fd00:232:7::2".parse().unwrap();
    ifaddr(AF_INET6, 64, 2, &[rta(IFA_ADDRESS, &a.octets())])
}

/// A link dump and an address dump, split over datagrams as the kernel may.
fn sample_datagrams(seq: u32) -> Vec<Vec<u8>> {
    vec![
        [
            nlmsg(RTM_NEWLINK, NLM_F_MULTI, seq, &lo_body()),
            nlmsg(RTM_NEWLINK, NLM_F_MULTI, seq, &veth_body()),
        ]
        .concat(),
        [
            nlmsg(RTM_NEWADDR, NLM_F_MULTI, seq, &v4_body()),
            nlmsg(RTM_NEWADDR, NLM_F_MULTI, seq, &v6_body()),
        ]
        .concat(),
        nlmsg(NLMSG_DONE, NLM_F_MULTI, seq, &0i32.to_ne_bytes()),
    ]
}

#[test]
fn messages_split_a_datagram_and_accept_a_missing_final_pad() {
    let mut buf = nlmsg(RTM_NEWLINK, 0, 7, &[1, 2, 3, 4, 5]); // padded to 24
    assert_eq!(buf.len(), 24);
    let mut last = nlmsg(NLMSG_DONE, 0, 7, &[9, 9]);
    last.truncate(18); // no padding after the last message
    buf.extend_from_slice(&last);
    let got: Vec<_> = messages(&buf).collect::<Result<_, _>>().unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0.ty, RTM_NEWLINK);
    assert_eq!(got[0].0.seq, 7);
    assert_eq!(got[0].1, &[1, 2, 3, 4, 5]);
    assert_eq!(got[1].0.ty, NLMSG_DONE);
    assert_eq!(got[1].1, &[9, 9]);
}

#[test]
fn messages_report_bad_lengths_and_stop() {
    // Too short for a header.
    let short = [0u8; 10];
    let got: Vec<_> = messages(&short).collect();
    assert_eq!(
        got,
        vec![Err(ParseError::Truncated {
            what: "netlink message header",
            need: 16,
            have: 10
        })]
    );
    // Length below the header size: would loop forever if accepted.
    let mut zero = nlmsg(NLMSG_NOOP, 0, 1, &[]);
    zero[0..4].copy_from_slice(&0u32.to_ne_bytes());
    zero.extend_from_slice(&nlmsg(NLMSG_NOOP, 0, 1, &[]));
    let got: Vec<_> = messages(&zero).collect();
    assert_eq!(got.len(), 1, "nothing after a bad length is trusted");
    assert!(matches!(got[0], Err(ParseError::BadLength { len: 0, .. })));
    // Length beyond the datagram.
    let mut long = nlmsg(NLMSG_NOOP, 0, 1, &[0; 4]);
    long[0..4].copy_from_slice(&1000u32.to_ne_bytes());
    assert!(matches!(
        messages(&long).next(),
        Some(Err(ParseError::BadLength { len: 1000, .. }))
    ));
    assert!(messages(&[]).next().is_none());
}

#[test]
fn attrs_follow_the_four_byte_alignment_and_mask_flags() {
    let buf = [
        rta(IFLA_IFNAME, b"abcde"), // 9 bytes, padded to 12
        rta(IFLA_LINKINFO | NLA_F_NESTED, &[]),
        rta(IFLA_LINK, &5u32.to_ne_bytes()),
    ]
    .concat();
    let got: Vec<_> = attrs(&buf).collect::<Result<_, _>>().unwrap();
    assert_eq!(
        got,
        vec![
            (IFLA_IFNAME, &b"abcde"[..]),
            (IFLA_LINKINFO, &[][..]),
            (IFLA_LINK, &5u32.to_ne_bytes()[..])
        ]
    );
}

#[test]
fn attrs_reject_bad_lengths() {
    let mut buf = rta(IFLA_LINK, &5u32.to_ne_bytes());
    buf[0..2].copy_from_slice(&2u16.to_ne_bytes()); // shorter than its header
    assert!(matches!(
        attrs(&buf).next(),
        Some(Err(ParseError::BadLength { len: 2, .. }))
    ));
    buf[0..2].copy_from_slice(&40u16.to_ne_bytes()); // longer than the buffer
    assert!(matches!(
        attrs(&buf).next(),
        Some(Err(ParseError::BadLength { len: 40, .. }))
    ));
    assert!(matches!(
        attrs(&[8, 0]).next(),
        Some(Err(ParseError::Truncated { .. }))
    ));
}

#[test]
fn a_container_veth_is_parsed() {
    let link = parse_link(&veth_body()).unwrap();
    assert_eq!(
        link,
        LinkRecord {
            index: 2,
            flags: 0x1003,
            name: "eth0".into(),
            mac: Some(MAC),
            link: Some(17),
            link_netnsid: Some(0),
            kind: Some("veth".into()),
            master: None,
        }
    );
    let mut enslaved = veth_body();
    enslaved.extend(rta(10, &7u32.to_ne_bytes())); // IFLA_MASTER
    assert_eq!(parse_link(&enslaved).unwrap().master, Some(7));
    let lo = parse_link(&lo_body()).unwrap();
    assert_eq!(lo.name, "lo");
    assert!(lo.flags & IFF_LOOPBACK != 0);
    assert_eq!(lo.kind, None);
    assert_eq!(lo.link_netnsid, None);
}

#[test]
fn a_link_address_that_is_not_a_mac_is_none() {
    // E.g. an ipip tunnel: its "link address" is an IPv4 address.
    let body = ifinfo(
        3,
        0,
        &[rta(IFLA_IFNAME, b"tunl0"), rta(IFLA_ADDRESS, &[0; 4])],
    );
    let link = parse_link(&body).unwrap();
    assert_eq!(link.name, "tunl0", "the terminating NUL is optional");
    assert_eq!(link.mac, None);
}

#[test]
fn link_parsing_rejects_truncation_and_short_integers() {
    assert!(matches!(
        parse_link(&[0; 15]),
        Err(ParseError::Truncated {
            what: "ifinfomsg",
            ..
        })
    ));
    let body = ifinfo(3, 0, &[rta(IFLA_LINK, &[1, 2])]);
    assert!(matches!(
        parse_link(&body),
        Err(ParseError::Truncated {
            what: "IFLA_LINK",
            ..
        })
    ));
}

#[test]
fn addresses_of_both_families_are_parsed() {
    let v4 = parse_addr(&v4_body()).unwrap().unwrap();
    assert_eq!(v4.index, 2);
    assert_eq!(v4.prefix_len, 24);
    assert_eq!(v4.addr, IpAddr::from([10, 232, 7, 2]));
    let v6 = parse_addr(&v6_body()).unwrap().unwrap();
    assert_eq!(v6.prefix_len, 64);
    assert_eq!(v6.addr, "fd00:232:7::2".parse::<IpAddr>().unwrap());
}

#[test]
fn the_local_address_wins_over_the_point_to_point_peer() {
    let body = ifaddr(
        AF_INET,
        32,
        4,
        &[
            rta(IFA_ADDRESS, &[10, 232, 7, 9]), // the peer
            rta(IFA_LOCAL, &[10, 232, 7, 2]),
        ],
    );
    assert_eq!(
        parse_addr(&body).unwrap().unwrap().addr,
        IpAddr::from([10, 232, 7, 2])
    );
}

#[test]
fn other_families_and_odd_addresses_are_skipped() {
    let packet = ifaddr(17, 0, 2, &[rta(IFA_ADDRESS, &[1, 2, 3, 4, 5, 6])]);
    assert_eq!(parse_addr(&packet).unwrap(), None);
    let wrong_len = ifaddr(AF_INET, 24, 2, &[rta(IFA_ADDRESS, &[10, 232, 7])]);
    assert_eq!(parse_addr(&wrong_len).unwrap(), None);
    let none = ifaddr(AF_INET6, 64, 2, &[]);
    assert_eq!(parse_addr(&none).unwrap(), None);
    assert!(parse_addr(&[2, 24, 0]).is_err());
}

#[test]
fn nsid_answers() {
    let with = |id: i32| [vec![0, 0, 0, 0], rta(NETNSA_NSID, &id.to_ne_bytes())].concat();
    assert_eq!(parse_nsid(&with(3)).unwrap(), Some(3));
    assert_eq!(parse_nsid(&with(-1)).unwrap(), None, "not assigned");
    assert_eq!(parse_nsid(&[0; 4]).unwrap(), None);
    assert!(parse_nsid(&[0; 2]).is_err());
}

#[test]
fn a_multipart_dump_is_collected_until_done() {
    let mut c = ReplyCollector::new(42);
    let mut seen = Vec::new();
    let datagrams = sample_datagrams(42);
    for (i, d) in datagrams.iter().enumerate() {
        let done = c
            .feed(d, |ty, _| {
                seen.push(ty);
                Ok(())
            })
            .unwrap();
        assert_eq!(done, i == datagrams.len() - 1);
    }
    assert!(c.finished());
    assert_eq!(
        seen,
        vec![RTM_NEWLINK, RTM_NEWLINK, RTM_NEWADDR, RTM_NEWADDR]
    );
}

#[test]
fn answers_to_another_sequence_number_are_skipped() {
    let mut c = ReplyCollector::new(2);
    let stale = [
        nlmsg(RTM_NEWLINK, NLM_F_MULTI, 1, &veth_body()),
        nlmsg(NLMSG_DONE, NLM_F_MULTI, 1, &0i32.to_ne_bytes()),
    ]
    .concat();
    let mut n = 0;
    assert!(!c
        .feed(&stale, |_, _| {
            n += 1;
            Ok(())
        })
        .unwrap());
    assert_eq!(n, 0);
}

#[test]
fn a_single_request_ends_with_its_ack() {
    let mut c = ReplyCollector::new(5);
    let mut got = None;
    let reply = nlmsg(RTM_NEWLINK, 0, 5, &veth_body());
    assert!(!c
        .feed(&reply, |_, p| {
            got = Some(parse_link(p)?);
            Ok(())
        })
        .unwrap());
    let ack = nlmsg(NLMSG_ERROR, 0, 5, &[0i32.to_ne_bytes(), [0; 4]].concat());
    assert!(c.feed(&ack, |_, _| Ok(())).unwrap());
    assert_eq!(got.unwrap().name, "eth0");
}

#[test]
fn kernel_errors_carry_the_errno() {
    let mut c = ReplyCollector::new(5);
    let err = nlmsg(NLMSG_ERROR, 0, 5, &(-libc::ENODEV).to_ne_bytes());
    assert_eq!(
        c.feed(&err, |_, _| Ok(())),
        Err(ReplyError::Kernel(libc::ENODEV))
    );
    assert!(c.finished());

    let mut c = ReplyCollector::new(6);
    let done = nlmsg(NLMSG_DONE, NLM_F_MULTI, 6, &(-libc::EINVAL).to_ne_bytes());
    assert_eq!(
        c.feed(&done, |_, _| Ok(())),
        Err(ReplyError::Kernel(libc::EINVAL))
    );

    let mut c = ReplyCollector::new(7);
    let short = nlmsg(NLMSG_ERROR, 0, 7, &[0, 0]);
    assert!(matches!(
        c.feed(&short, |_, _| Ok(())),
        Err(ReplyError::Parse(_))
    ));
}

#[test]
fn an_interrupted_dump_is_reported_at_its_end() {
    let mut c = ReplyCollector::new(9);
    let part = nlmsg(RTM_NEWLINK, NLM_F_MULTI | NLM_F_DUMP_INTR, 9, &veth_body());
    assert_eq!(c.feed(&part, |_, _| Ok(())), Ok(false));
    let done = nlmsg(NLMSG_DONE, NLM_F_MULTI, 9, &0i32.to_ne_bytes());
    assert_eq!(c.feed(&done, |_, _| Ok(())), Err(ReplyError::Interrupted));
}

#[test]
fn a_done_without_its_code_still_ends_the_dump() {
    let mut c = ReplyCollector::new(1);
    assert_eq!(
        c.feed(&nlmsg(NLMSG_DONE, NLM_F_MULTI, 1, &[]), |_, _| Ok(())),
        Ok(true)
    );
}

#[test]
fn requests_are_well_formed() {
    let dump = dump_links_request(3);
    assert_eq!(dump.len(), 32);
    let (hdr, body) = messages(&dump).next().unwrap().unwrap();
    assert_eq!(hdr.len, 32);
    assert_eq!(hdr.ty, RTM_GETLINK);
    assert_eq!(hdr.flags, NLM_F_REQUEST | NLM_F_DUMP);
    assert_eq!(hdr.seq, 3);
    assert_eq!(body, &[0; 16]);

    let addrs = dump_addrs_request(4);
    assert_eq!(addrs.len(), 24);
    assert_eq!(u16_at(&addrs, 4), Some(RTM_GETADDR));

    let one = get_link_request(5, 17);
    let (hdr, body) = messages(&one).next().unwrap().unwrap();
    assert_eq!(hdr.flags, NLM_F_REQUEST | NLM_F_ACK);
    assert_eq!(u32_at(body, 4), Some(17));

    let nsid = get_nsid_request(6, 9);
    assert_eq!(nsid.len(), 16 + 4 + 8);
    let (hdr, body) = messages(&nsid).next().unwrap().unwrap();
    assert_eq!(hdr.ty, RTM_GETNSID);
    let got: Vec<_> = attrs(&body[4..]).collect::<Result<_, _>>().unwrap();
    assert_eq!(got, vec![(NETNSA_FD, &9u32.to_ne_bytes()[..])]);
}

/// Runs every parser over `buf`; only panics matter, errors are expected.
fn parse_everything(buf: &[u8]) {
    let mut c = ReplyCollector::new(1);
    let _ = c.feed(buf, |ty, p| {
        match ty {
            RTM_NEWLINK => drop(parse_link(p)?),
            RTM_NEWADDR => drop(parse_addr(p)?),
            _ => drop(parse_nsid(p)?),
        }
        Ok(())
    });
    for m in messages(buf).flatten() {
        let _ = classify(&m.0, m.1);
    }
    let _ = parse_link(buf);
    let _ = parse_addr(buf);
    let _ = parse_nsid(buf);
    for a in attrs(buf) {
        if a.is_err() {
            break;
        }
    }
}

/// xorshift64: a dependency-free, reproducible source of garbage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn truncated_and_random_buffers_never_panic() {
    let whole = sample_datagrams(1).concat();
    for cut in 0..=whole.len() {
        parse_everything(&whole[..cut]);
        parse_everything(&whole[cut..]);
    }
    for body in [veth_body(), v4_body(), v6_body()] {
        for cut in 0..=body.len() {
            let _ = parse_link(&body[..cut]);
            let _ = parse_addr(&body[..cut]);
        }
    }

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = rng.below(200);
        let buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        parse_everything(&buf);
    }
    // Garbage that is mostly well-formed reaches the deeper code paths.
    for _ in 0..20_000 {
        let mut buf = whole.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(buf.len());
            buf[i] = rng.next() as u8;
        }
        let keep = rng.below(buf.len() + 1);
        buf.truncate(keep);
        parse_everything(&buf);
    }
}

#[test]
fn route_answers_give_the_output_interface_unless_local() {
    let rtmsg = |ty: u8, attributes: &[Vec<u8>]| {
        let mut b = vec![2, 32, 0, 0, 254, 0, 0, ty, 0, 0, 0, 0];
        for a in attributes {
            b.extend_from_slice(a);
        }
        b
    };
    let dst = rta(1, &[10, 88, 0, 5]);
    let oif = rta(4, &9u32.to_ne_bytes());
    // RTN_UNICAST through ifindex 9.
    assert_eq!(
        parse_route_oif(&rtmsg(1, &[dst.clone(), oif.clone()])),
        Ok(Some(9))
    );
    // RTN_LOCAL: one of the namespace's own addresses.
    assert_eq!(parse_route_oif(&rtmsg(2, &[dst.clone(), oif])), Ok(None));
    assert_eq!(parse_route_oif(&rtmsg(1, &[dst])), Ok(None));
    assert!(parse_route_oif(&[2, 32, 0]).is_err());
    assert!(parse_route_oif(&rtmsg(1, &[rta(4, &[1, 2])])).is_err());

    // The request: rtmsg with the family and a full-length destination.
    let req = get_route_request(5, "fd00::1".parse().unwrap());
    assert_eq!(u16::from_ne_bytes([req[4], req[5]]), RTM_GETROUTE);
    assert_eq!((req[16], req[17]), (10, 128));
    assert_eq!(
        &req[28 + 4..28 + 20],
        &"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets()
    );
}
