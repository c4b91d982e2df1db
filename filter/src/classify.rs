//! Deciding what one finished request says about the host that served it.

use crate::config::Detection;

/// Envoy's legacy response-flag bits, as the `response.flags` property
/// reports them (`StreamInfo::legacyResponseFlags`).
pub mod flags {
    pub const NO_HEALTHY_UPSTREAM: u64 = 0x2;
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 0x4;
    pub const LOCAL_RESET: u64 = 0x8;
    pub const UPSTREAM_REMOTE_RESET: u64 = 0x10;
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 0x20;
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 0x40;
    pub const UPSTREAM_OVERFLOW: u64 = 0x80;
    pub const NO_ROUTE_FOUND: u64 = 0x100;
    pub const FAULT_INJECTED: u64 = 0x400;
    pub const RATE_LIMITED: u64 = 0x800;
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 0x4000;
    pub const UPSTREAM_MAX_STREAM_DURATION_REACHED: u64 = 0x80000;
    pub const UPSTREAM_PROTOCOL_ERROR: u64 = 0x80_0000;
    pub const NO_CLUSTER_FOUND: u64 = 0x100_0000;
    pub const OVERLOAD_MANAGER: u64 = 0x200_0000;

    /// Envoy refused or answered the request itself before any host was at
    /// fault: these must never count against a host.
    pub const NOT_THE_HOSTS_FAULT: u64 = NO_HEALTHY_UPSTREAM
        | UPSTREAM_OVERFLOW
        | NO_ROUTE_FOUND
        | FAULT_INJECTED
        | RATE_LIMITED
        | NO_CLUSTER_FOUND
        | OVERLOAD_MANAGER;
}

/// What the shell learned about a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFacts {
    /// HTTP status sent to the client; 0 when none was sent.
    pub status: u16,
    /// Envoy's legacy response-flag bits.
    pub flags: u64,
    /// `grpc-status` from the response headers or trailers, if any.
    pub grpc_status: Option<u32>,
    /// Time from request headers to response headers, when measured.
    pub duration_ms: Option<u64>,
    /// The response is a local reply this filter produced.
    pub from_this_filter: bool,
}

/// How a connection-level failure happened (Envoy's "local origin" errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalOrigin {
    ConnectFailure,
    Reset,
    Timeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// 502, 503 or 504 from the host.
    Gateway(u16),
    /// Another 5xx from the host, or a status outside HTTP's 100-599
    /// (Envoy passes 600-999 through).
    ServerError(u16),
    /// A status the operator listed as a failure (429, a 4xx...).
    Status(u16),
    Grpc(u32),
    LocalOrigin(LocalOrigin),
    /// The client gave up, counted only when configured.
    ClientCancelled,
}

impl FailureKind {
    pub fn is_gateway_like(self) -> bool {
        matches!(self, FailureKind::Gateway(_) | FailureKind::LocalOrigin(_))
    }

    pub fn is_local_origin(self) -> bool {
        matches!(self, FailureKind::LocalOrigin(_))
    }
}

/// One request's verdict on its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub failure: Option<FailureKind>,
    pub slow: bool,
}

impl Outcome {
    pub const SUCCESS: Outcome = Outcome {
        failure: None,
        slow: false,
    };

    pub fn failed(self) -> bool {
        self.failure.is_some()
    }
}

/// Why a finished request says nothing about its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    LocalReply,
    NotTheHostsFault,
    ClientCancelled,
    NoResponse,
}

pub fn classify(facts: &ResponseFacts, detection: &Detection) -> Result<Outcome, Ignored> {
    if facts.from_this_filter {
        return Err(Ignored::LocalReply);
    }
    let slow = detection.slow_calls_enabled()
        && facts
            .duration_ms
            .is_some_and(|ms| ms > detection.slow_call_threshold.0);
    let failure = |kind| {
        Ok(Outcome {
            failure: Some(kind),
            slow,
        })
    };
    if let Some(origin) = local_origin(facts.flags) {
        return failure(FailureKind::LocalOrigin(origin));
    }
    if facts.flags & flags::NOT_THE_HOSTS_FAULT != 0 {
        return Err(Ignored::NotTheHostsFault);
    }
    if facts.flags & flags::DOWNSTREAM_CONNECTION_TERMINATION != 0 {
        return if detection.count_client_cancellations {
            failure(FailureKind::ClientCancelled)
        } else {
            Err(Ignored::ClientCancelled)
        };
    }
    let status = facts.status;
    if status == 0 {
        return Err(Ignored::NoResponse);
    }
    if !(100..=599).contains(&status) {
        return failure(FailureKind::ServerError(status));
    }
    if detection.failure_statuses.contains(status) {
        return failure(match status {
            502..=504 => FailureKind::Gateway(status),
            500..=599 => FailureKind::ServerError(status),
            _ => FailureKind::Status(status),
        });
    }
    if let Some(code) = facts.grpc_status {
        if detection.grpc_code_is_failure(code) {
            return failure(FailureKind::Grpc(code));
        }
    }
    Ok(Outcome {
        failure: None,
        slow,
    })
}

/// What an upstream instance knows of an attempt that ended without
/// response headers (Envoy gives an upstream filter no response flags of
/// the attempt's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unanswered {
    /// The attempt had a connection (`upstream.local_address` is set).
    pub connected: bool,
    /// Envoy gave a transport failure reason (a refused connection).
    pub refused: bool,
    /// From the attempt's request headers to its end.
    pub elapsed_ms: u64,
    /// The downstream stream's flags say the client went away.
    pub client_gone: bool,
}

/// An unanswered attempt this long was a timeout (connect, per-try or
/// route), not a refusal or a reset.
pub const TIMEOUT_HINT_MS: u64 = 500;

/// An attempt that got no response headers: a connect failure, a reset or
/// a timeout, unless the client going away cut it short.
pub fn classify_unanswered(a: &Unanswered, detection: &Detection) -> Result<Outcome, Ignored> {
    if a.client_gone {
        return if detection.count_client_cancellations {
            Ok(Outcome {
                failure: Some(FailureKind::ClientCancelled),
                slow: false,
            })
        } else {
            Err(Ignored::ClientCancelled)
        };
    }
    let slow = a.elapsed_ms >= TIMEOUT_HINT_MS;
    let origin = match (a.connected, a.refused || !slow) {
        (false, true) => LocalOrigin::ConnectFailure,
        (true, true) => LocalOrigin::Reset,
        (_, false) => LocalOrigin::Timeout,
    };
    Ok(Outcome {
        failure: Some(FailureKind::LocalOrigin(origin)),
        slow: false,
    })
}

fn local_origin(bits: u64) -> Option<LocalOrigin> {
    use flags::*;
    if bits & UPSTREAM_CONNECTION_FAILURE != 0 {
        Some(LocalOrigin::ConnectFailure)
    } else if bits & (UPSTREAM_REQUEST_TIMEOUT | UPSTREAM_MAX_STREAM_DURATION_REACHED) != 0 {
        Some(LocalOrigin::Timeout)
    } else if bits
        & (UPSTREAM_REMOTE_RESET
            | UPSTREAM_CONNECTION_TERMINATION
            | UPSTREAM_PROTOCOL_ERROR
            | LOCAL_RESET)
        != 0
    {
        Some(LocalOrigin::Reset)
    } else {
        None
    }
}

/// Whether the shell must read the response flags to classify this status:
/// a plain 1xx-4xx answer that is not a configured failure and that came
/// to its end needs nothing more, which keeps the common path to one
/// property read. A response that did not end (no end of stream in its
/// headers, body or trailers) was cut off: a reset, a protocol error or a
/// timeout after the headers (Envoy's `upstream_reset_after_response_started`,
/// flags UR/UC/UPE/UT), or the client going away (DC); only the flags tell.
pub fn needs_flags(status: u16, response_ended: bool, detection: &Detection) -> bool {
    !response_ended || !(100..500).contains(&status) || detection.failure_statuses.contains(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn unanswered_attempts_are_told_apart_as_envoy_shows_them() {
        let d = detection("");
        let kind = |connected, refused, elapsed_ms, client_gone| {
            let a = Unanswered {
                connected,
                refused,
                elapsed_ms,
                client_gone,
            };
            classify_unanswered(&a, &d).map(|o| o.failure)
        };
        let origin = |o| Ok(Some(FailureKind::LocalOrigin(o)));
        // Measured in Envoy 1.40: refused = no local address and a reason;
        // connect timeout = no local address, no reason, after the timeout;
        // reset before the response = a local address; per-try timeout = a
        // local address, after the timeout.
        assert_eq!(
            kind(false, true, 2, false),
            origin(LocalOrigin::ConnectFailure)
        );
        assert_eq!(
            kind(false, true, 900, false),
            origin(LocalOrigin::ConnectFailure)
        );
        assert_eq!(kind(false, false, 500, false), origin(LocalOrigin::Timeout));
        assert_eq!(kind(true, false, 3, false), origin(LocalOrigin::Reset));
        assert_eq!(
            kind(true, false, 300_000, false),
            origin(LocalOrigin::Timeout)
        );
        assert_eq!(kind(true, false, 3, true), Err(Ignored::ClientCancelled));
        let counting = detection(r#"{"detection":{"countClientCancellations":true}}"#);
        let a = Unanswered {
            connected: true,
            refused: false,
            elapsed_ms: 3,
            client_gone: true,
        };
        assert_eq!(
            classify_unanswered(&a, &counting).map(|o| o.failure),
            Ok(Some(FailureKind::ClientCancelled))
        );
    }

    fn detection(json: &str) -> Detection {
        Config::parse(json.as_bytes()).unwrap().detection
    }

    fn status(code: u16) -> ResponseFacts {
        ResponseFacts {
            status: code,
            ..ResponseFacts::default()
        }
    }

    fn kind(facts: ResponseFacts, d: &Detection) -> Option<FailureKind> {
        classify(&facts, d).unwrap().failure
    }

    #[test]
    fn success_and_client_errors_are_not_failures() {
        let d = Detection::default();
        for code in [200, 204, 301, 400, 404, 429, 499] {
            assert_eq!(classify(&status(code), &d), Ok(Outcome::SUCCESS), "{code}");
        }
    }

    #[test]
    fn server_errors_and_gateway_errors() {
        let d = Detection::default();
        assert_eq!(kind(status(500), &d), Some(FailureKind::ServerError(500)));
        for code in [502, 503, 504] {
            assert_eq!(kind(status(code), &d), Some(FailureKind::Gateway(code)));
        }
    }

    #[test]
    fn configured_statuses_count() {
        let d = detection(r#"{"detection":{"failureStatusCodes":["5xx","429"]}}"#);
        assert_eq!(kind(status(429), &d), Some(FailureKind::Status(429)));
        assert_eq!(kind(status(404), &d), None);
        let only_503 = detection(r#"{"detection":{"failureStatusCodes":[503]}}"#);
        assert_eq!(kind(status(500), &only_503), None);
    }

    #[test]
    fn local_origin_failures_from_response_flags() {
        let d = Detection::default();
        let with = |bits, code| ResponseFacts {
            status: code,
            flags: bits,
            ..ResponseFacts::default()
        };
        let cases = [
            (
                flags::UPSTREAM_CONNECTION_FAILURE,
                LocalOrigin::ConnectFailure,
            ),
            (flags::UPSTREAM_REMOTE_RESET, LocalOrigin::Reset),
            (flags::UPSTREAM_CONNECTION_TERMINATION, LocalOrigin::Reset),
            (flags::UPSTREAM_PROTOCOL_ERROR, LocalOrigin::Reset),
            (flags::UPSTREAM_REQUEST_TIMEOUT, LocalOrigin::Timeout),
        ];
        for (bits, origin) in cases {
            assert_eq!(
                kind(with(bits, 503), &d),
                Some(FailureKind::LocalOrigin(origin)),
                "{bits:#x}"
            );
        }
        // A reset with no response at all is still the host's fault.
        assert_eq!(
            kind(with(flags::UPSTREAM_REMOTE_RESET, 0), &d),
            Some(FailureKind::LocalOrigin(LocalOrigin::Reset))
        );
    }

    #[test]
    fn envoys_own_refusals_are_not_the_hosts_fault() {
        let d = Detection::default();
        for bits in [
            flags::NO_HEALTHY_UPSTREAM,
            flags::UPSTREAM_OVERFLOW,
            flags::NO_ROUTE_FOUND,
            flags::FAULT_INJECTED,
            flags::RATE_LIMITED,
        ] {
            let facts = ResponseFacts {
                status: 503,
                flags: bits,
                ..ResponseFacts::default()
            };
            assert_eq!(
                classify(&facts, &d),
                Err(Ignored::NotTheHostsFault),
                "{bits:#x}"
            );
        }
    }

    #[test]
    fn client_cancellations_only_when_configured() {
        let facts = ResponseFacts {
            status: 0,
            flags: flags::DOWNSTREAM_CONNECTION_TERMINATION,
            ..ResponseFacts::default()
        };
        assert_eq!(
            classify(&facts, &Detection::default()),
            Err(Ignored::ClientCancelled)
        );
        let d = detection(r#"{"detection":{"countClientCancellations":true}}"#);
        assert_eq!(kind(facts, &d), Some(FailureKind::ClientCancelled));
    }

    #[test]
    fn our_own_local_replies_never_count() {
        let facts = ResponseFacts {
            status: 503,
            from_this_filter: true,
            ..ResponseFacts::default()
        };
        assert_eq!(
            classify(&facts, &Detection::default()),
            Err(Ignored::LocalReply)
        );
    }

    #[test]
    fn no_response_without_a_cause_is_ignored() {
        assert_eq!(
            classify(&status(0), &Detection::default()),
            Err(Ignored::NoResponse)
        );
    }

    #[test]
    fn grpc_status_in_a_200_response() {
        let d = Detection::default();
        let grpc = |code| ResponseFacts {
            status: 200,
            grpc_status: Some(code),
            ..ResponseFacts::default()
        };
        assert_eq!(kind(grpc(14), &d), Some(FailureKind::Grpc(14)));
        assert_eq!(kind(grpc(0), &d), None);
        assert_eq!(kind(grpc(5), &d), None, "NOT_FOUND is the caller's problem");
    }

    #[test]
    fn slow_calls_over_the_threshold() {
        let d = detection(r#"{"detection":{"slowCallThreshold":"100ms"}}"#);
        let timed = |code, ms| ResponseFacts {
            status: code,
            duration_ms: Some(ms),
            ..ResponseFacts::default()
        };
        assert_eq!(classify(&timed(200, 100), &d).unwrap(), Outcome::SUCCESS);
        let slow = classify(&timed(200, 101), &d).unwrap();
        assert!(slow.slow && !slow.failed());
        let slow_failure = classify(&timed(500, 300), &d).unwrap();
        assert!(slow_failure.slow && slow_failure.failed());
        // Disabled by default: duration alone never marks a call slow.
        let default = classify(&timed(200, 60_000), &Detection::default()).unwrap();
        assert!(!default.slow);
    }

    #[test]
    fn only_unusual_statuses_and_unfinished_responses_need_the_flags() {
        let d = Detection::default();
        assert!(!needs_flags(200, true, &d));
        assert!(!needs_flags(404, true, &d));
        assert!(needs_flags(0, true, &d));
        assert!(needs_flags(503, true, &d));
        assert!(needs_flags(700, true, &d));
        let with_429 = detection(r#"{"detection":{"failureStatusCodes":["5xx",429]}}"#);
        assert!(needs_flags(429, true, &with_429));
        // A response whose end never came may have been cut off.
        assert!(needs_flags(200, false, &d));
        assert!(needs_flags(404, false, &d));
    }

    #[test]
    fn a_response_cut_off_after_its_headers_is_the_hosts_failure() {
        let d = Detection::default();
        let cut = |bits| ResponseFacts {
            status: 200,
            flags: bits,
            ..ResponseFacts::default()
        };
        // Envoy 1.40, `upstream_reset_after_response_started{...}`.
        let cases = [
            (flags::UPSTREAM_REMOTE_RESET, LocalOrigin::Reset),
            (flags::UPSTREAM_CONNECTION_TERMINATION, LocalOrigin::Reset),
            (flags::UPSTREAM_PROTOCOL_ERROR, LocalOrigin::Reset),
            (flags::UPSTREAM_REQUEST_TIMEOUT, LocalOrigin::Timeout),
            (
                flags::UPSTREAM_MAX_STREAM_DURATION_REACHED,
                LocalOrigin::Timeout,
            ),
        ];
        for (bits, origin) in cases {
            let outcome = classify(&cut(bits), &d);
            assert_eq!(
                outcome.map(|o| o.failure),
                Ok(Some(FailureKind::LocalOrigin(origin))),
                "{bits:#x}"
            );
            assert!(FailureKind::LocalOrigin(origin).is_local_origin());
        }
        // The client leaving in the middle of the body is not the host's doing.
        assert_eq!(
            classify(&cut(flags::DOWNSTREAM_CONNECTION_TERMINATION), &d),
            Err(Ignored::ClientCancelled)
        );
        // Nothing in the flags: the answer stands.
        assert_eq!(classify(&cut(0), &d), Ok(Outcome::SUCCESS));
    }

    #[test]
    fn statuses_outside_http_are_failures() {
        let d = Detection::default();
        let only_503 = detection(r#"{"detection":{"failureStatusCodes":[503]}}"#);
        for code in [1, 99, 600, 700, 999, 1000, u16::MAX] {
            assert_eq!(
                kind(status(code), &d),
                Some(FailureKind::ServerError(code)),
                "{code}"
            );
            assert_eq!(
                kind(status(code), &only_503),
                Some(FailureKind::ServerError(code)),
                "{code}, whatever the configured statuses"
            );
        }
        for code in [100, 101, 599] {
            assert!(classify(&status(code), &only_503).is_ok_and(|o| !o.failed()));
        }
    }
}
