//! Source-address allow lists for the status endpoint.
//!
//! Addresses are parsed here rather than by `std::net`'s parser, whose
//! general machinery is about 3.5 KB of the module (its 250 KB budget);
//! the tests check both agree.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `::1/128`, or a bare address (a single host).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network = parse_ip(address.trim())
            .ok_or_else(|| format!("`{text}` is not an IP address or CIDR range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}` has an invalid prefix length (0-{max})"))?,
            None => max,
        };
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address) {
            (IpAddr::V4(net), IpAddr::V4(addr)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(addr) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(addr)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(addr) & mask
            }
            // An IPv4 client seen through an IPv6 socket.
            (IpAddr::V4(_), IpAddr::V6(addr)) => addr
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(IpAddr::V4(v4))),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

/// The IP of Envoy's `source.address` (`1.2.3.4:5678`, `[::1]:5678`).
pub fn source_ip(address: &str) -> Option<IpAddr> {
    if let Some(ip) = parse_ip(address) {
        return Some(ip);
    }
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => address,
    };
    parse_ip(host.trim_start_matches('[').trim_end_matches(']'))
}

/// An IPv4 address in dotted decimal or an IPv6 address in RFC 4291 text
/// (`::` compression, a trailing dotted IPv4 part), as `std` accepts them.
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    if text.contains(':') {
        parse_v6(text).map(IpAddr::V6)
    } else {
        parse_v4(text).map(IpAddr::V4)
    }
}

fn parse_v4(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?.as_bytes();
        // Like std: 1-3 digits, no leading zero (it would read as octal
        // elsewhere).
        let digits = part.len() <= 3 && part.iter().all(u8::is_ascii_digit);
        if part.is_empty() || !digits || (part.len() > 1 && part[0] == b'0') {
            return None;
        }
        let value = part.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        *octet = u8::try_from(value).ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

fn parse_v6(text: &str) -> Option<Ipv6Addr> {
    let mut head = [0u16; 8];
    let mut tail = [0u16; 8];
    let Some((before, after)) = text.split_once("::") else {
        return (groups(text, true, &mut head)? == 8).then_some(Ipv6Addr::from(head));
    };
    let h = groups(before, false, &mut head)?;
    let t = groups(after, true, &mut tail)?;
    if h + t > 7 {
        return None;
    }
    let mut all = [0u16; 8];
    for (slot, group) in all.iter_mut().zip(head.iter().take(h)) {
        *slot = *group;
    }
    for (slot, group) in all.iter_mut().skip(8 - t).zip(tail.iter()) {
        *slot = *group;
    }
    Some(Ipv6Addr::from(all))
}

/// The 16-bit groups of one side of `::` into `out`: how many, or None
/// when a group is malformed or there are too many.
fn groups(text: &str, may_end_in_v4: bool, out: &mut [u16; 8]) -> Option<usize> {
    if text.is_empty() {
        return Some(0);
    }
    let mut n = 0;
    let mut pieces = text.split(':').peekable();
    while let Some(piece) = pieces.next() {
        if pieces.peek().is_none() && may_end_in_v4 && piece.contains('.') {
            let [a, b, c, d] = parse_v4(piece)?.octets();
            *out.get_mut(n)? = u16::from_be_bytes([a, b]);
            *out.get_mut(n + 1)? = u16::from_be_bytes([c, d]);
            n += 2;
            continue;
        }
        let hex =
            !piece.is_empty() && piece.len() <= 4 && piece.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex {
            return None;
        }
        *out.get_mut(n)? = piece.bytes().fold(0u16, |g, b| {
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => b - b'A' + 10,
            };
            g << 4 | u16::from(digit)
        });
        n += 1;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        source_ip(text).unwrap()
    }

    #[test]
    fn ranges_and_single_hosts() {
        let lan = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(lan.contains(ip("10.1.2.3:443")));
        assert!(!lan.contains(ip("11.0.0.1:443")));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1:1")) && !one.contains(ip("127.0.0.2:1")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("8.8.8.8:53")));
        let v6 = Cidr::parse("::1/128").unwrap();
        assert!(v6.contains(ip("[::1]:8080")));
        assert!(!v6.contains(ip("127.0.0.1:8080")));
        assert!(lan.contains(ip("[::ffff:10.0.0.5]:80")), "IPv4-mapped IPv6");
    }

    /// The hand-written parser agrees with std's on valid and broken text.
    #[test]
    fn parses_addresses_as_std_does() {
        let samples = [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "256.0.0.1",
            "1.2.3",
            "1.2.3.4.5",
            "01.2.3.4",
            "1.2.3.04",
            "1..2.3",
            "",
            ".",
            "1.2.3.4 ",
            "+1.2.3.4",
            "1.2.3.-4",
            "1.2.3.1000",
            "::",
            "::1",
            "1::",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7:8:9",
            "1:2:3:4:5:6:7",
            "1::8",
            "1:2:3:4:5:6:7::",
            "::2:3:4:5:6:7:8",
            "1:2:3:4::5:6:7:8",
            ":::",
            "1:::2",
            "::ffff:10.0.0.5",
            "::ffff:10.0.0.256",
            "1:2:3:4:5:6:1.2.3.4",
            "1:2:3:4:5:6:7:1.2.3.4",
            "1.2.3.4::",
            "fe80::1%eth0",
            "FFFF::abcd",
            "12345::",
            "g::1",
            "::1:",
            ":1::",
            "1::2::3",
            "[::1]",
            "2001:db8::1.2.3.4",
            "::1.2.3.4.5",
            "1:2:3:4:5:6:7:8:",
            "0:0:0:0:0:0:0:0",
            "::0:0",
            "1.2.3.4:80",
            "١.٢.٣.٤",
        ];
        for text in samples {
            let std: Option<IpAddr> = text.parse().ok();
            assert_eq!(parse_ip(text), std, "{text:?}");
        }
    }

    /// And on random text made of what addresses are made of.
    #[test]
    fn agrees_with_std_on_random_text() {
        const ALPHABET: &[u8] = b"0123456789abcdefABCDEF:.:.:0f";
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        for _ in 0..50_000 {
            let mut text = String::new();
            state = crate::steering::xorshift(state);
            for _ in 0..(state % 24) {
                state = crate::steering::xorshift(state);
                text.push(char::from(
                    ALPHABET[(state % ALPHABET.len() as u64) as usize],
                ));
            }
            let std: Option<IpAddr> = text.parse().ok();
            assert_eq!(parse_ip(&text), std, "{text:?}");
        }
    }

    #[test]
    fn refuses_malformed_ranges() {
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0/8").is_err());
        assert!(Cidr::parse("localhost").is_err());
        assert!(Cidr::parse("::/129").is_err());
        assert_eq!(source_ip("not an address"), None);
    }
}
