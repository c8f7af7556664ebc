//! IPv4/IPv6 networks in CIDR notation.
//!
//! Kept to plain std types: an address plus a prefix length is all the
//! datapath needs (it becomes an LPM-trie key).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A network: an address with all host bits zero, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// Builds a network; fails when the prefix is too long for the address
    /// family or when host bits are set (the message names the network the
    /// user probably meant).
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, String> {
        let max = max_prefix(addr);
        if prefix_len > max {
            return Err(format!(
                "prefix length /{prefix_len} is out of range 0-{max} for an {} address",
                family(addr)
            ));
        }
        let network = mask(addr, prefix_len);
        if network != addr {
            return Err(format!(
                "{addr}/{prefix_len} has host bits set; the network is {network}/{prefix_len} \
                 (or write /{max} for the single address)"
            ));
        }
        Ok(Cidr { addr, prefix_len })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` is inside this network (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix_len) == self.addr
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// Accepts `ADDR/LEN` and, for a single host, a bare `ADDR`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            format!("`{text}` is not an IPv4 or IPv6 network (expected ADDRESS/LENGTH)")
        })?;
        let prefix_len = match len_text {
            None => max_prefix(addr),
            Some(l) => {
                // u8::from_str would accept "+24"; only plain digits are CIDR.
                if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("`{text}` has an invalid prefix length `/{l}`"));
                }
                let n: u16 = l
                    .parse()
                    .map_err(|_| format!("invalid prefix length `/{l}`"))?;
                u8::try_from(n).unwrap_or(u8::MAX)
            }
        };
        Cidr::new(addr, prefix_len)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Clears the host bits of `addr` for a prefix of `len` bits.
fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}
