//! A service's steering plan on one worker: every host it may steer to,
//! grouped by weight. A pick chooses a group by smooth weighted round robin
//! over the groups' total weights, then the next host of that group in
//! turn: exact shares, and a cost per request set by the handful of
//! distinct weights (full, Degraded, the warm-up steps), not by the number
//! of hosts. A share of the picks is left to Envoy's own load balancer, so
//! hosts meshguard has not seen yet are found (see `state::members`).

use std::rc::Rc;

use crate::config::Encoding;
use crate::steering::{xorshift, SmoothPicker};

/// A host steering can send a request to.
#[derive(Debug, Clone)]
pub struct Target {
    pub address: Rc<str>,
    /// The header value when it is not the address itself (base64).
    encoded: Option<Box<[u8]>>,
}

impl Target {
    fn new(address: &Rc<str>, encoding: Encoding) -> Self {
        Target {
            address: Rc::clone(address),
            encoded: match encoding {
                Encoding::Plain => None,
                Encoding::Base64 => Some(base64(address.as_bytes()).into_boxed_slice()),
            },
        }
    }

    pub fn value(&self) -> &[u8] {
        self.encoded
            .as_deref()
            .unwrap_or_else(|| self.address.as_bytes())
    }
}

/// Standard base64 with padding (RFC 4648), as Envoy's stateful-session
/// header filter decodes it. Written out: the `base64` crate's encoder,
/// unrolled for throughput, took 6 KB of the module to encode an address
/// once per host and plan.
pub fn base64(bytes: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
    out
}

#[derive(Debug)]
struct Group {
    weight: u8,
    targets: Vec<Target>,
    next: usize,
}

/// What a request gets.
#[derive(Debug, Clone, Copy)]
pub enum Choice<'a> {
    Host(&'a Target),
    /// Left to Envoy's load balancer (discovery).
    Envoy,
}

#[derive(Debug)]
pub struct Plan {
    /// Hosts to send the next requests to before any other, one each:
    /// hosts just back from an ejection, whose first request shows whether
    /// they are still there.
    first: Vec<Target>,
    first_next: usize,
    groups: Vec<Group>,
    totals: Vec<u32>,
    picker: SmoothPicker,
    /// Discovery credit in per mille: a request is left to Envoy each time
    /// it reaches 1000.
    credit: u16,
    /// The heaviest group's next host for a retry (see `alternates`).
    alternate_next: usize,
    /// Hosts the plan was built over (weight 0 included).
    pub hosts: usize,
    /// Some host is ejected (weight 0): requests left to Envoy may land on
    /// it, so they carry a retry policy.
    pub has_ejected: bool,
    /// At least two thirds of the hosts are at full weight: there is
    /// healthy capacity to retry on.
    pub mostly_healthy: bool,
}

impl Plan {
    /// A plan over `hosts` (address, weight in percent of a healthy host's).
    /// `None` when nothing needs steering: every host at full weight, or
    /// none with any weight.
    /// `first` are hosts (among `hosts`) to send one request each before
    /// the round robin starts. `always` builds a plan even when every host
    /// is at full weight (to name the hosts of retries, see `alternates`).
    pub fn build<'a>(
        hosts: impl Iterator<Item = (&'a Rc<str>, u8)>,
        first: &[Rc<str>],
        encoding: Encoding,
        seed: u64,
        always: bool,
    ) -> Option<Plan> {
        let mut groups: Vec<Group> = Vec::new();
        let mut count = 0;
        let mut full = 0;
        let mut has_ejected = false;
        for (address, weight) in hosts {
            count += 1;
            full += usize::from(weight >= 100);
            if weight == 0 {
                has_ejected = true;
                continue;
            }
            let target = Target::new(address, encoding);
            match groups.iter_mut().find(|g| g.weight == weight) {
                Some(group) => group.targets.push(target),
                None => groups.push(Group {
                    weight,
                    targets: vec![target],
                    next: 0,
                }),
            }
        }
        let reduced = has_ejected || groups.iter().any(|g| g.weight < 100);
        if !(reduced || always) || groups.is_empty() {
            return None;
        }
        // Workers start their round robin at different hosts.
        let mut state = seed | 1;
        for group in &mut groups {
            state = xorshift(state);
            group.next = (state % group.targets.len() as u64) as usize;
        }
        let totals: Vec<u32> = groups
            .iter()
            .map(|g| {
                u32::from(g.weight)
                    .saturating_mul(u32::try_from(g.targets.len()).unwrap_or(u32::MAX))
            })
            .collect();
        let picker = SmoothPicker::new(&totals, xorshift(state));
        Some(Plan {
            first: first.iter().map(|a| Target::new(a, encoding)).collect(),
            first_next: 0,
            groups,
            totals,
            picker,
            credit: 0,
            alternate_next: 0,
            hosts: count,
            has_ejected,
            mostly_healthy: full * 3 >= count * 2,
        })
    }

    /// Whether the next [`pick`](Self::pick) at `discovery_per_mille`
    /// would leave the request to Envoy.
    pub fn discovery_due(&self, discovery_per_mille: u16) -> bool {
        self.first_next >= self.first.len() && self.credit + discovery_per_mille.min(1000) >= 1000
    }

    /// The next request's host, or `Envoy` for one of the
    /// `discovery_per_mille` left to Envoy's load balancer.
    pub fn pick(&mut self, discovery_per_mille: u16) -> Option<Choice<'_>> {
        if self.first_next < self.first.len() {
            self.first_next += 1;
            return self.first.get(self.first_next - 1).map(Choice::Host);
        }
        let envoy = self.discovery_due(discovery_per_mille);
        self.credit += discovery_per_mille.min(1000);
        if envoy {
            self.credit -= 1000;
            return Some(Choice::Envoy);
        }
        let index = self.picker.pick(&self.totals)?;
        let group = self.groups.get_mut(index)?;
        if group.next >= group.targets.len() {
            group.next = 0;
        }
        let target = &group.targets[group.next];
        group.next += 1;
        Some(Choice::Host(target))
    }

    /// Up to `n` hosts other than `first` for the retries of a request sent
    /// to `first`, from the heaviest group in turn (their own cursor, so
    /// the shares of first attempts stay exact). Envoy's override_host
    /// policy takes them as `first,second,third`: a retried request then
    /// names the hosts its failed attempts went to.
    pub fn alternates(&mut self, first: &str, n: usize, out: &mut Vec<Rc<str>>) {
        let Some(group) = self.groups.iter().max_by_key(|g| g.weight) else {
            return;
        };
        let len = group.targets.len();
        for _ in 0..len {
            if out.len() >= n {
                break;
            }
            let target = &group.targets[self.alternate_next % len];
            self.alternate_next = self.alternate_next.wrapping_add(1);
            if *target.address != *first && !out.contains(&target.address) {
                out.push(Rc::clone(&target.address));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn names(n: usize) -> Vec<Rc<str>> {
        (0..n)
            .map(|i| Rc::from(format!("10.0.{}.{}:80", i / 250, i % 250)))
            .collect()
    }

    fn shares(plan: &mut Plan, picks: usize, discovery: u16) -> (HashMap<String, usize>, usize) {
        let mut counts = HashMap::new();
        let mut envoy = 0;
        for _ in 0..picks {
            match plan.pick(discovery).unwrap() {
                Choice::Host(t) => *counts.entry(t.address.to_string()).or_insert(0) += 1,
                Choice::Envoy => envoy += 1,
            }
        }
        (counts, envoy)
    }

    #[test]
    fn nothing_to_steer_when_all_are_at_full_weight_or_none_has_weight() {
        let hosts = names(3);
        assert!(Plan::build(
            hosts.iter().map(|h| (h, 100)),
            &[],
            Encoding::Plain,
            1,
            false
        )
        .is_none());
        assert!(
            Plan::build(hosts.iter().map(|h| (h, 0)), &[], Encoding::Plain, 1, false).is_none()
        );
    }

    #[test]
    fn shares_follow_weights_at_any_size() {
        for n in [3, 100, 10_000] {
            let hosts = names(n);
            // Host 0 ejected, host 1 at half weight, the rest full.
            let weight = |i: usize| match i {
                0 => 0,
                1 => 50,
                _ => 100,
            };
            let mut plan = Plan::build(
                hosts.iter().enumerate().map(|(i, h)| (h, weight(i))),
                &[],
                Encoding::Plain,
                7,
                false,
            )
            .unwrap();
            assert!(plan.has_ejected);
            let total_weight = 50 + 100 * (n - 2);
            let picks = total_weight * 4;
            let (counts, envoy) = shares(&mut plan, picks, 0);
            assert_eq!(envoy, 0);
            assert_eq!(
                counts.get(&*hosts[0]),
                None,
                "{n}: ejected host never picked"
            );
            assert_eq!(counts[&*hosts[1]], 200, "{n}");
            for h in &hosts[2..] {
                assert_eq!(counts[&**h], 400, "{n}: every full host its exact share");
            }
        }
    }

    #[test]
    fn discovery_leaves_its_share_to_envoy() {
        let hosts = names(4);
        let mut plan = Plan::build(
            hosts
                .iter()
                .enumerate()
                .map(|(i, h)| (h, if i == 0 { 0 } else { 100 })),
            &[],
            Encoding::Plain,
            3,
            false,
        )
        .unwrap();
        let (_, envoy) = shares(&mut plan, 1000, 50);
        assert_eq!(envoy, 50, "5 % (50 per mille)");
    }

    #[test]
    fn base64_is_rfc_4648_with_padding() {
        // RFC 4648 section 10 test vectors.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            (
                "envoy://connect_originate/10.1.2.3:8080",
                "ZW52b3k6Ly9jb25uZWN0X29yaWdpbmF0ZS8xMC4xLjIuMzo4MDgw",
            ),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded.as_bytes(), "{plain}");
        }
    }

    #[test]
    fn base64_values_encode_the_address() {
        let hosts = names(2);
        let mut plan = Plan::build(
            hosts
                .iter()
                .enumerate()
                .map(|(i, h)| (h, if i == 0 { 0 } else { 100 })),
            &[],
            Encoding::Base64,
            3,
            false,
        )
        .unwrap();
        let Some(Choice::Host(t)) = plan.pick(0) else {
            panic!("a host")
        };
        assert_eq!(t.value(), b"MTAuMC4wLjE6ODA=");
    }
}

#[cfg(test)]
mod alternate_tests {
    use super::*;

    #[test]
    fn retries_go_to_other_full_weight_hosts_in_turn() {
        let hosts: Vec<Rc<str>> = (0..5).map(|i| Rc::from(format!("10.0.0.{i}:80"))).collect();
        // Host 4 Degraded: never a retry's host while full ones exist.
        let weights = hosts
            .iter()
            .map(|h| (h, if h.ends_with("4:80") { 50 } else { 100 }));
        let mut plan = Plan::build(weights, &[], Encoding::Plain, 9, false).unwrap();
        let mut seen = std::collections::HashMap::new();
        for _ in 0..40 {
            let mut out = Vec::new();
            plan.alternates(&hosts[0], 2, &mut out);
            assert_eq!(out.len(), 2);
            assert_ne!(out[0], out[1]);
            for a in &out {
                assert_ne!(**a, *hosts[0], "never the first host itself");
                assert_ne!(**a, *hosts[4], "never the Degraded host");
                *seen.entry(a.to_string()).or_insert(0) += 1;
            }
        }
        assert_eq!(seen.len(), 3, "hosts 1-3 take turns: {seen:?}");
    }

    #[test]
    fn a_plan_over_healthy_hosts_only_when_asked() {
        let hosts: Vec<Rc<str>> = (0..3).map(|i| Rc::from(format!("10.0.0.{i}:80"))).collect();
        let full = || hosts.iter().map(|h| (h, 100));
        assert!(Plan::build(full(), &[], Encoding::Plain, 1, false).is_none());
        let mut plan = Plan::build(full(), &[], Encoding::Plain, 1, true).unwrap();
        assert!(!plan.has_ejected);
        let mut out = Vec::new();
        plan.alternates(&hosts[1], 5, &mut out);
        assert_eq!(out.len(), 2, "as many as there are other hosts");
    }
}

#[cfg(test)]
mod first_tests {
    use super::*;

    #[test]
    fn hosts_back_from_an_ejection_get_the_first_requests() {
        let hosts: Vec<Rc<str>> = (0..100)
            .map(|i| Rc::from(format!("10.0.0.{i}:80")))
            .collect();
        let back = Rc::clone(&hosts[42]);
        let weights = hosts
            .iter()
            .map(|h| (h, if **h == *back { 10 } else { 100 }));
        let mut plan =
            Plan::build(weights, &[Rc::clone(&back)], Encoding::Plain, 5, false).unwrap();
        let Some(Choice::Host(first)) = plan.pick(0) else {
            panic!("a host")
        };
        assert_eq!(first.address, back);
        // Then its weight alone: 10 of 9,910 weight units.
        let again = (0..991)
            .filter(|_| matches!(plan.pick(0), Some(Choice::Host(t)) if t.address == back))
            .count();
        assert_eq!(again, 1);
    }
}
