//! The ejection guard: how many of a service's hosts may be out at once.

/// Hosts that may be ejected at the same time: `max_percent` of the known
/// hosts, rounded down, but always at least one, so small services (where
/// Istio's 10% default ejects nothing) are still protected.
pub fn max_ejected(known_hosts: usize, max_percent: u8) -> usize {
    (known_hosts * usize::from(max_percent) / 100).max(1)
}

pub fn may_eject(ejected: usize, known_hosts: usize, max_percent: u8) -> bool {
    ejected < max_ejected(known_hosts, max_percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn always_at_least_one() {
        assert_eq!(max_ejected(1, 50), 1);
        assert_eq!(max_ejected(2, 50), 1);
        assert_eq!(max_ejected(3, 50), 1);
        assert_eq!(max_ejected(3, 10), 1, "Istio's default would eject nothing");
        assert_eq!(max_ejected(5, 0), 1);
    }

    #[test]
    fn never_more_than_the_percentage() {
        assert_eq!(max_ejected(10, 50), 5);
        assert_eq!(max_ejected(10, 10), 1);
        assert_eq!(max_ejected(4, 50), 2);
        assert_eq!(max_ejected(10, 100), 10);
        assert!(may_eject(4, 10, 50));
        assert!(!may_eject(5, 10, 50));
    }
}
