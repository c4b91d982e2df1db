//! One attempt's way through an upstream instance (`mode: upstream`, an
//! upstream HTTP filter of the cluster). Envoy gives such a filter one
//! stream per attempt, the retried ones included, with the attempt's own
//! host and status; it never logs them, but ends each with `on_done`.
//! Measured in Envoy 1.40: every attempt gets its request headers, even
//! one whose connection then fails; only answered ones get response
//! headers; `response.code` and `response.flags` there are the downstream
//! stream's, not the attempt's. An answered attempt whose response never
//! reached its end (no end of stream in its headers, body or trailers)
//! was cut off after its headers and counts as a reset of its host,
//! unless the client went away (or its answer was a failure already, as
//! a 503 the router resets to retry it).
//!
//! The outcome is recorded at the end, against the attempt's host, into
//! the same records the downstream instance steers from.

use super::envoy_host::Worker;
use super::host::{self, Map};
use super::props;
use super::stream::{Stream, CONTINUE};
use crate::classify::{self, flags, FailureKind, LocalOrigin, ResponseFacts, Unanswered};
use crate::service::Observation;
use crate::state::worker::Routed;

impl Stream {
    pub fn on_attempt_request_headers(&mut self, worker: &mut Worker) -> u32 {
        self.attempt = true;
        // A request wakes an idle worker (the result is for the request
        // path of a downstream instance; there is none here).
        let _ = worker.request_path_active();
        // Tick-precise is enough to tell a refusal from a timeout; slow
        // calls need the real clock.
        self.started_ms = worker.clock_ms();
        if worker.config_base().detection.slow_calls_enabled() {
            self.request_at_ms = host::now_ms().ok();
        }
        CONTINUE
    }

    pub fn on_attempt_response_headers(&mut self, end_of_stream: bool) -> u32 {
        self.status =
            props::header_text(Map::ResponseHeaders, ":status").and_then(|s| s.parse().ok());
        if self.request_at_ms.is_some() {
            self.response_at_ms = host::now_ms().ok();
        }
        self.response_ended = end_of_stream;
        if end_of_stream {
            self.grpc_status = props::grpc_status(Map::ResponseHeaders);
        }
        CONTINUE
    }

    /// The attempt is over: its outcome counts against its host.
    pub fn on_attempt_done(&mut self, worker: &mut Worker) {
        let Some(address) = props::upstream_address() else {
            return;
        };
        let config = worker.config_for(None).0;
        let detection = &config.detection;
        let outcome = match self.status {
            Some(status) => {
                // Answered, but never to the end: the host reset the
                // attempt (or broke the protocol) after its headers, or a
                // timeout or the client going away cut it off. The flags
                // are the downstream stream's: they tell the client's
                // leaving and the route's timeout apart, not always the
                // attempt's own reset (which may not be written yet).
                let cut_off = !self.response_ended;
                let flags = if cut_off {
                    props::response_flags().unwrap_or(0)
                } else {
                    0
                };
                let facts = ResponseFacts {
                    status,
                    flags,
                    grpc_status: self.grpc_status,
                    duration_ms: self.duration_ms(),
                    from_this_filter: false,
                };
                classify::classify(&facts, detection).map(|mut outcome| {
                    if cut_off && outcome.failure.is_none() {
                        outcome.failure = Some(FailureKind::LocalOrigin(LocalOrigin::Reset));
                    }
                    outcome
                })
            }
            None => {
                let now = host::now_ms().unwrap_or(self.started_ms);
                let client_flags = props::response_flags().unwrap_or(0);
                let attempt = Unanswered {
                    connected: props::upstream_connected(),
                    refused: props::transport_failure_reason().is_some(),
                    elapsed_ms: now.saturating_sub(self.started_ms),
                    client_gone: client_flags & flags::DOWNSTREAM_CONNECTION_TERMINATION != 0,
                };
                classify::classify_unanswered(&attempt, detection)
            }
        };
        let Ok(outcome) = outcome else {
            return;
        };
        worker.observe_request(
            None,
            "",
            &config,
            &address,
            Observation::plain(outcome),
            Routed::Envoy,
        );
    }
}
