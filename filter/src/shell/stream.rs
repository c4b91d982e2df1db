//! One request's way through the filter: the breaker and steering on the
//! request headers, the response's status and header rules on the response
//! headers, and the outcome recorded against its host when the stream is
//! done.
//!
//! The healthy path is kept to two host calls per request (`:status` on
//! the response, `upstream.address` at done); the cluster comes from
//! the worker's address cache (see `crate::address_clusters`).

use std::rc::Rc;

use super::envoy_host::Worker;
use super::host::{self, Map};
use super::props;
use crate::breaker::Admission;
use crate::classify::{self, FailureKind, LocalOrigin, ResponseFacts};
use crate::config::{BreakerMode, Config, Encoding};
use crate::headers::{self, Action, Facts};
use crate::service::Observation;
use crate::state::worker::{Route, Routed, Sampled, Steer};
use crate::template::Values;

/// What a callback tells Envoy (the ABI's `FilterHeadersStatus`).
pub const CONTINUE: u32 = 0;
pub const PAUSE: u32 = 1;

/// What the VM holds besides one plugin instance's state.
#[derive(Debug, Clone, Copy, Default)]
pub struct VmCounts {
    /// Live plugin instances (root contexts).
    pub instances: usize,
    /// Requests in flight.
    pub in_flight: usize,
}

/// The VM's linear memory: it only ever grows, so a leak shows as growth.
fn memory_bytes() -> usize {
    #[cfg(target_arch = "wasm32")]
    let pages = core::arch::wasm32::memory_size(0);
    #[cfg(not(target_arch = "wasm32"))]
    let pages = 0;
    pages * 65_536
}

/// A random number naming this VM in the status document (each Envoy
/// worker has its own VM), drawn at its first status request.
fn vm_id() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static ID: AtomicU32 = AtomicU32::new(0);
    let id = ID.load(Ordering::Relaxed);
    if id != 0 {
        return id;
    }
    let id = (host::random_u64().unwrap_or(1) as u32).max(1);
    ID.store(id, Ordering::Relaxed);
    id
}

/// Per-request state between Envoy's callbacks.
#[derive(Default)]
pub struct Stream {
    /// The plugin instance (root context) the request belongs to, when the
    /// VM runs several (see `super::roots`).
    pub root: Option<u32>,
    /// An attempt seen by an upstream instance (see `super::attempt`),
    /// not a request.
    pub attempt: bool,
    /// The configuration governing this request (an override's, or the
    /// top-level one) and the scope of its state.
    config: Option<Rc<Config>>,
    scope: String,
    route: Option<Route>,
    cluster: Option<String>,
    /// The hosts the request was steered to: the first attempt's, then
    /// the ones named for its retries.
    steered_to: Vec<Rc<str>>,
    discovery: bool,
    probe: bool,
    local_reply: bool,
    request_id: Option<String>,
    pub(super) request_at_ms: Option<u64>,
    /// The worker's clock when the request came in (tick-precise, no host
    /// call), to tell a refused connection from a connect timeout.
    pub(super) started_ms: u64,
    pub(super) response_at_ms: Option<u64>,
    pub(super) grpc_status: Option<u32>,
    pub(super) status: Option<u16>,
    /// The response came to its end (end of stream in its headers, body
    /// or trailers); one that started and did not was cut off.
    pub(super) response_ended: bool,
}

impl Stream {
    /// Request headers to response headers, when both were timed.
    pub(super) fn duration_ms(&self) -> Option<u64> {
        self.request_at_ms
            .zip(self.response_at_ms)
            .map(|(start, end)| end.saturating_sub(start))
    }

    fn cluster(&mut self) -> Option<&str> {
        if self.cluster.is_none() {
            self.cluster = props::cluster_name();
        }
        self.cluster.as_deref()
    }

    fn values<'a>(
        &'a self,
        upstream_host: &'a str,
        host_state: &'a str,
        breaker_state: &'a str,
    ) -> Values<'a> {
        Values {
            service: self.cluster.as_deref().unwrap_or(""),
            upstream_host,
            host_state,
            breaker_state,
            route: self.route.as_ref().map_or("", |r| r.name.as_str()),
            virtual_service: self
                .route
                .as_ref()
                .map_or("", |r| r.virtual_service.as_str()),
            request_id: self.request_id.as_deref().unwrap_or(""),
            retry_after_seconds: 0,
        }
    }

    /// `vm` says how many plugin instances and requests this VM holds,
    /// for the status endpoint.
    pub fn on_request_headers(&mut self, worker: &mut Worker, vm: VmCounts) -> u32 {
        if let Some(action) = self.status_endpoint(worker, vm) {
            return action;
        }
        if worker.route_aware() {
            let route = worker.route(props::virtual_host_name(), props::route_name());
            self.route = Some(route);
        }
        let (config, scope) = worker.config_for(self.route.as_ref());
        self.scope = scope;
        self.config = Some(Rc::clone(&config));
        if config.detection.slow_calls_enabled() || config.circuit_breaker.slow_calls_enabled() {
            self.request_at_ms = host::now_ms().ok();
        }
        let rules = &config.headers;
        if rules.request_id.generate || !rules.request.is_empty() || !rules.response.is_empty() {
            self.request_id = props::header_text(Map::RequestHeaders, &rules.request_id.header);
            if self.request_id.is_none() && rules.request_id.generate {
                let id = headers::request_id(worker.random(), worker.random());
                let _ =
                    host::set_header(Map::RequestHeaders, &rules.request_id.header, id.as_bytes());
                self.request_id = Some(id);
            }
        }
        let active = worker.request_path_active() || !rules.request.is_empty();
        self.started_ms = worker.clock_ms();
        let Some(cluster) = active.then(|| self.cluster().map(str::to_string)).flatten() else {
            return self.strip_client_steering(&config);
        };
        match worker.admit(&cluster, &self.scope) {
            Admission::Allowed => {}
            Admission::Probe => self.probe = true,
            Admission::Rejected { retry_after_ms } => {
                if config.circuit_breaker.mode == BreakerMode::LocalReply {
                    worker.count_local_reply(&cluster, &self.scope);
                }
                return self.reject(&config, retry_after_ms);
            }
        }
        let steering = &config.steering;
        let mut steered = false;
        if steering.enabled {
            match worker.steer_request(&cluster, &self.scope, &idempotent) {
                Some(Steer::To {
                    value,
                    hosts,
                    retry_on,
                }) => {
                    steered =
                        host::set_header(Map::RequestHeaders, &steering.header, value).is_ok();
                    if steered {
                        self.steered_to = hosts.to_vec();
                        // A half-open breaker's probe must show what the
                        // host answers, not what a retry elsewhere did.
                        if !self.probe {
                            ask_for_retries(retry_on);
                        }
                    }
                }
                Some(Steer::Discover { retry_on }) => {
                    self.discovery = true;
                    if !self.probe {
                        ask_for_retries(retry_on);
                    }
                }
                None => {}
            }
        }
        if !steered {
            self.strip_client_steering(&config);
        }
        if !rules.request.is_empty() {
            let address = self.steered_to.first().map(|a| a.to_string());
            let rules = &rules.request;
            self.run_rules(worker, Map::RequestHeaders, rules, &cluster, address, None);
        }
        CONTINUE
    }

    pub fn on_response_headers(&mut self, worker: &Worker, end_of_stream: bool) -> u32 {
        // The status is read here, where it is a header lookup, rather than
        // as the `response.code` property at done, which costs more.
        self.status =
            props::header_text(Map::ResponseHeaders, ":status").and_then(|s| s.parse().ok());
        self.response_ended = end_of_stream;
        let Some(config) = self.config.clone() else {
            return CONTINUE;
        };
        if self.request_at_ms.is_some() {
            self.response_at_ms = host::now_ms().ok();
        }
        let steering = &config.steering;
        // The stateful-session filter writes the chosen host into the
        // response; clients should not see (or pin) upstream addresses.
        // Envoy's override_host policy (plain encoding) writes nothing back,
        // but an upstream may send the header: an Envoy filter removes it
        // for free (envoy/demo.yaml.tmpl), or the filter does when it is
        // asked to keep clients off the header (one more call).
        if steering.enabled
            && (steering.encoding == Encoding::Base64 || steering.strip_client_header)
        {
            let _ = host::remove_header(Map::ResponseHeaders, &steering.header);
        }
        if end_of_stream {
            // A gRPC "trailers-only" response carries its status here.
            self.grpc_status = props::grpc_status(Map::ResponseHeaders);
        }
        let rules = &config.headers.response;
        if rules.is_empty() || self.local_reply {
            return CONTINUE;
        }
        let address = props::upstream_address();
        let cluster = self.cluster().map(str::to_string).unwrap_or_default();
        let status = self.status;
        self.run_rules(
            worker,
            Map::ResponseHeaders,
            rules,
            &cluster,
            address,
            status,
        );
        CONTINUE
    }

    /// The response's last body frame passed (see `abi::proxy_on_response_body`).
    pub fn on_response_end(&mut self) {
        self.response_ended = true;
    }

    pub fn on_response_trailers(&mut self) -> u32 {
        self.grpc_status = props::grpc_status(Map::ResponseTrailers);
        // Trailers end a response.
        self.response_ended = true;
        CONTINUE
    }

    /// The request is over (`proxy_on_done`): its outcome counts against
    /// the host it went to.
    pub fn on_done(&mut self, worker: &mut Worker) {
        // Our own local replies never count against anyone.
        if self.local_reply {
            return;
        }
        let config = match &self.config {
            Some(config) => Rc::clone(config),
            None => worker.config_for(None).0,
        };
        let status = self.status.or_else(props::response_code).unwrap_or(0);
        let flags = if classify::needs_flags(status, self.response_ended, &config.detection) {
            props::response_flags().unwrap_or(0)
        } else {
            0
        };
        let duration_ms = self.duration_ms();
        let facts = ResponseFacts {
            status,
            flags,
            grpc_status: self.grpc_status,
            duration_ms,
            from_this_filter: false,
        };
        let Ok(mut outcome) = classify::classify(&facts, &config.detection) else {
            return;
        };
        let breaker = &config.circuit_breaker;
        let breaker_slow = breaker.slow_calls_enabled()
            && duration_ms.is_some_and(|ms| ms > breaker.slow_call_threshold.0);
        let routed = match (self.steered_to.is_empty(), self.discovery) {
            (false, _) => Routed::To(&self.steered_to),
            (true, true) => Routed::Discovery,
            (true, false) => Routed::Envoy,
        };
        // A plain success Envoy's balancer placed may go unattributed,
        // which saves the address read (see `Worker::sample_success`).
        let plain = !outcome.failed() && !outcome.slow && !breaker_slow && !self.probe;
        let sampled = if plain && routed == Routed::Envoy {
            worker.sample_success(&config)
        } else {
            Sampled::EXACT
        };
        if sampled == Sampled::Skip {
            return;
        }
        // A request that never reached a host says nothing about any host.
        let Some(address) = props::upstream_address() else {
            return;
        };
        if outcome.failure == Some(FailureKind::LocalOrigin(LocalOrigin::ConnectFailure)) {
            // Envoy flags a refused connection and a connect timeout alike
            // (UF); they differ in what a retry elsewhere costs.
            let took = host::now_ms().map_or(0, |now| now.saturating_sub(self.started_ms));
            if took >= classify::TIMEOUT_HINT_MS {
                outcome.failure = Some(FailureKind::LocalOrigin(LocalOrigin::Timeout));
            }
        }
        let observation = Observation {
            outcome,
            breaker_slow,
            probe: self.probe,
        };
        worker.observe_sampled(
            self.cluster.as_deref(),
            &self.scope,
            &config,
            &address,
            observation,
            routed,
            sampled,
        );
    }

    /// Answers locally (mode localReply) or redirects through the fallback
    /// header (mode fallback) while the breaker is open.
    fn reject(&mut self, config: &Config, retry_after_ms: u64) -> u32 {
        let breaker = &config.circuit_breaker;
        let retry_after_seconds = retry_after_ms.div_ceil(1000).max(1);
        let mut values = self.values("", "", "Open");
        values.retry_after_seconds = retry_after_seconds;
        if breaker.mode == BreakerMode::Fallback {
            let value = breaker.fallback.value.render(&values);
            let _ = host::set_header(
                Map::RequestHeaders,
                &breaker.fallback.header,
                value.as_bytes(),
            );
            // Match routes again, so a route on this header wins.
            let _ = host::clear_route_cache();
            return CONTINUE;
        }
        let reply = &breaker.local_reply;
        let body = reply.body.render(&values);
        let rendered: Vec<(&str, String)> = reply
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.render(&values)))
            .collect();
        let retry_after = retry_after_seconds.to_string();
        let mut headers: Vec<(&str, &str)> =
            rendered.iter().map(|(n, v)| (*n, v.as_str())).collect();
        headers.push(("retry-after", &retry_after));
        let grpc = props::header_text(Map::RequestHeaders, "content-type")
            .is_some_and(|t| t.starts_with("application/grpc"));
        // gRPC clients get UNAVAILABLE as a status, not an HTTP body.
        let grpc_status = grpc.then_some(14);
        self.local_reply = true;
        match host::send_local_response(
            reply.status,
            "meshguard_circuit_open",
            body.as_bytes(),
            &headers,
            grpc_status,
        ) {
            Ok(()) => PAUSE,
            Err(_) => CONTINUE,
        }
    }

    /// Runs header rules against what is known of the request: the host it
    /// goes to (or came from), the breaker, the route and the status.
    fn run_rules(
        &self,
        worker: &Worker,
        map: Map,
        rules: &[crate::config::Rule],
        cluster: &str,
        address: Option<String>,
        status: Option<u16>,
    ) {
        let state = address
            .as_deref()
            .map(|a| worker.host_state(cluster, &self.scope, a));
        let breaker = worker.breaker_state(cluster, &self.scope);
        let state_text = state.map(|s| s.to_string()).unwrap_or_default();
        let breaker_text = breaker.to_string();
        let facts = Facts {
            host_state: state,
            breaker_state: breaker,
            route: self.route.as_ref().map_or("", |r| r.name.as_str()),
            virtual_service: self
                .route
                .as_ref()
                .map_or("", |r| r.virtual_service.as_str()),
            status,
        };
        let address = address.unwrap_or_default();
        let values = self.values(&address, &state_text, &breaker_text);
        for action in headers::actions(rules, &facts, &values) {
            let _ = match action {
                Action::Set(name, value) => host::set_header(map, name, value.as_bytes()),
                Action::Append(name, value) => host::add_header(map, name, value.as_bytes()),
                Action::Remove(name) => host::remove_header(map, name),
                Action::Rename(from, to) => match host::header(map, from) {
                    Ok(Some(value)) => host::remove_header(map, from)
                        .and_then(|()| host::set_header(map, to, &value)),
                    _ => Ok(()),
                },
            };
        }
    }

    /// Answers the status endpoint for allowed sources; everyone else's
    /// request passes on as if the endpoint did not exist.
    fn status_endpoint(&mut self, worker: &Worker, vm: VmCounts) -> Option<u32> {
        let status = &worker.config_base().status;
        if !status.enabled {
            return None;
        }
        let path = props::header_text(Map::RequestHeaders, ":path")?;
        let path = path.split('?').next().unwrap_or("");
        if path != status.path {
            return None;
        }
        let source = props::source_address()?;
        let ip = crate::cidr::source_ip(&source)?;
        if !status.allowed_cidrs.iter().any(|c| c.contains(ip)) {
            return None;
        }
        // Unless the listener uses the connection's peer, Envoy took
        // `source.address` from the last X-Forwarded-For entry, which the
        // client may have written: no property gives the direct peer, so
        // such a request is refused, saying why (the source looked allowed).
        let forwarded = !status.use_remote_address
            && matches!(
                host::header(Map::RequestHeaders, "x-forwarded-for"),
                Ok(Some(_))
            );
        let (code, details, content_type, body) = if forwarded {
            let body = FORWARDED_REFUSAL.to_string();
            (403, "meshguard_status_forwarded", "text/plain", body)
        } else {
            let now = host::now_ms().unwrap_or(0);
            let mut body = worker.status_json(now);
            // The document ends with its closing brace: the VM's report goes
            // before it.
            body.pop();
            body.push_str(&worker.vm_report(vm_id(), memory_bytes(), vm.instances, vm.in_flight));
            body.push('}');
            (200, "meshguard_status", "application/json", body)
        };
        self.local_reply = true;
        let headers = [
            ("content-type", content_type),
            ("cache-control", "no-store"),
        ];
        match host::send_local_response(code, details, body.as_bytes(), &headers, None) {
            Ok(()) => Some(PAUSE),
            Err(_) => None,
        }
    }

    /// A client must not pick the host itself through our header, when the
    /// operator asked the filter to see to it (an Envoy header_mutation
    /// filter ahead of meshguard does it for free). The session header of
    /// base64 mode is the application's own (sticky sessions).
    fn strip_client_steering(&self, config: &Config) -> u32 {
        let steering = &config.steering;
        if steering.enabled && steering.strip_client_header && steering.encoding == Encoding::Plain
        {
            let _ = host::remove_header(Map::RequestHeaders, &steering.header);
        }
        CONTINUE
    }
}

/// The status endpoint's answer to a request carrying X-Forwarded-For.
const FORWARDED_REFUSAL: &str = "meshguard: status requests carrying X-Forwarded-For are refused: Envoy may take source.address from that header. Call the endpoint without it, or set status.useRemoteAddress when the listener has use_remote_address: true.\n";

/// GET, HEAD and OPTIONS: a request Envoy may retry after any 5xx.
fn idempotent() -> bool {
    matches!(
        props::header_text(Map::RequestHeaders, ":method").as_deref(),
        Some("GET" | "HEAD" | "OPTIONS")
    )
}

/// A request steered or left to Envoy's load balancer while some host is
/// ejected may land there: ask Envoy to retry it elsewhere (on top of the route's own
/// policy; `x-envoy-max-retries` is left alone, so a route's count stands
/// and a route without retries gets Envoy's default of one).
fn ask_for_retries(retry_on: &str) {
    if retry_on.is_empty() {
        return;
    }
    let _ = host::set_header(Map::RequestHeaders, "x-envoy-retry-on", retry_on.as_bytes());
    if retry_on.split(',').any(|p| p == "retriable-status-codes") {
        let _ = host::set_header(
            Map::RequestHeaders,
            "x-envoy-retriable-status-codes",
            crate::config::RETRIABLE_STATUS_CODES.as_bytes(),
        );
    }
}
