//! The proxy-wasm shell: reads what Envoy knows about a request, hands it
//! to the core, and writes back the steering header. Kept thin; every host
//! error is handled, nothing here may panic.

mod host;
mod metrics;
mod props;
mod store;
mod worker;

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::breaker::Admission;
use crate::classify::{self, ResponseFacts};
use crate::config::{BreakerMode, Config, Encoding};
use crate::headers::{self, Action as Action_, Facts};
use crate::service::Observation;
use crate::template::Values;
use host::Map;
use worker::{Route, Worker};

/// How often each worker writes batched successes and re-reads the other
/// workers' view; bounds how stale a worker's host grades can be.
const TICK_MS: u32 = 100;

proxy_wasm::main! {{
    let _ = log::set_logger(&HostLogger);
    log::set_max_level(log::LevelFilter::Info);
    std::panic::set_hook(Box::new(|info| {
        host::log(host::Level::Error, &format!("meshguard: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => host::Level::Error,
            log::Level::Warn => host::Level::Warn,
            log::Level::Info => host::Level::Info,
            log::Level::Debug => host::Level::Debug,
            log::Level::Trace => host::Level::Trace,
        };
        host::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

fn sync_log_level() {
    let filter = match host::log_level() {
        Ok(0) => log::LevelFilter::Trace,
        Ok(1) => log::LevelFilter::Debug,
        Ok(2) => log::LevelFilter::Info,
        Ok(3) => log::LevelFilter::Warn,
        Ok(_) => log::LevelFilter::Error,
        Err(_) => log::LevelFilter::Info,
    };
    log::set_max_level(filter);
}

#[derive(Default)]
struct Root {
    worker: Option<Rc<RefCell<Worker>>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        sync_log_level();
        let bytes = match host::plugin_configuration(size) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                log::error!(
                    "meshguard: cannot read the plugin configuration (status {})",
                    status.0
                );
                return false;
            }
        };
        let config = match Config::parse(&bytes) {
            Ok(config) => Rc::new(config),
            Err(error) => {
                metrics::Metrics::default().add(crate::metrics::global("config_rejected"), 1);
                let kept = if self.worker.is_some() {
                    "keeping the previous configuration"
                } else {
                    "filter not started"
                };
                log::error!("meshguard: invalid plugin configuration, {kept}: {error}");
                return false;
            }
        };
        match &self.worker {
            Some(worker) => match worker.try_borrow_mut() {
                Ok(mut worker) => worker.reconfigure(config),
                Err(_) => return false,
            },
            None => {
                let plugin = props::plugin_name().unwrap_or_else(|| "meshguard".to_string());
                let now = host::now_ms().unwrap_or(0);
                // Workers start within the same millisecond: seed each from
                // the host's entropy, or request ids would repeat across them.
                let seed = host::random_u64().unwrap_or(0) ^ now;
                self.worker = Some(Rc::new(RefCell::new(Worker::new(
                    config, &plugin, now, seed,
                ))));
            }
        }
        if let Err(status) = host::set_tick_period_ms(TICK_MS) {
            log::warn!("meshguard: no tick period (status {}); grades will be slow to spread across workers", status.0);
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(worker) = &self.worker else { return };
        let (Ok(now), Ok(mut worker)) = (host::now_ms(), worker.try_borrow_mut()) else {
            return;
        };
        worker.tick(now);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Returning None would make the SDK panic; a filter without a
        // configuration passes traffic through untouched instead.
        Some(Box::new(Stream {
            worker: self.worker.clone(),
            ..Stream::default()
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Per-request state between Envoy's callbacks.
#[derive(Default)]
struct Stream {
    worker: Option<Rc<RefCell<Worker>>>,
    /// The configuration governing this request (an override's, or the
    /// top-level one) and the scope of its state.
    config: Option<Rc<Config>>,
    scope: String,
    route: Option<Route>,
    cluster: Option<String>,
    steered_to: Option<String>,
    probe: bool,
    local_reply: bool,
    request_id: Option<String>,
    request_at_ms: Option<u64>,
    response_at_ms: Option<u64>,
    grpc_status: Option<u32>,
}

impl Context for Stream {}

impl Stream {
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

    /// Answers locally (mode localReply) or redirects through the fallback
    /// header (mode fallback) while the breaker is open.
    fn reject(&mut self, config: &Config, retry_after_ms: u64) -> Action {
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
            return Action::Continue;
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
            Ok(()) => Action::Pause,
            Err(_) => Action::Continue,
        }
    }

    /// Runs header rules against what is known of the request: the host it
    /// goes to (or came from), the breaker, the route and the status.
    fn run_rules(
        &self,
        worker: &Worker,
        map: Map,
        rules: &[crate::headers::Rule],
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
        self.apply_rules(map, rules, &facts, &values);
    }

    fn apply_rules(
        &self,
        map: Map,
        rules: &[crate::headers::Rule],
        facts: &Facts,
        values: &Values,
    ) {
        for action in headers::actions(rules, facts, values) {
            let _ = match action {
                Action_::Set(name, value) => host::set_header(map, name, value.as_bytes()),
                Action_::Append(name, value) => host::add_header(map, name, value.as_bytes()),
                Action_::Remove(name) => host::remove_header(map, name),
                Action_::Rename(from, to) => match host::header(map, from) {
                    Ok(Some(value)) => host::remove_header(map, from)
                        .and_then(|()| host::set_header(map, to, &value)),
                    _ => Ok(()),
                },
            };
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            return Action::Continue;
        };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            return Action::Continue;
        };
        if let Some(action) = self.status_endpoint(&worker) {
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
                drop(worker);
                return self.reject(&config, retry_after_ms);
            }
        }
        let steering = &config.steering;
        let mut steered = false;
        if steering.enabled {
            if let Some((value, address)) = worker.steer(&cluster, &self.scope) {
                steered = host::set_header(Map::RequestHeaders, &steering.header, value).is_ok();
                if steered {
                    self.steered_to = Some(address.to_string());
                }
            }
        }
        if !steered {
            self.strip_client_steering(&config);
        }
        if !rules.request.is_empty() {
            let address = self.steered_to.clone();
            let rules = &rules.request;
            self.run_rules(&worker, Map::RequestHeaders, rules, &cluster, address, None);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let (Some(worker), Some(config)) = (self.worker.clone(), self.config.clone()) else {
            return Action::Continue;
        };
        if self.request_at_ms.is_some() {
            self.response_at_ms = host::now_ms().ok();
        }
        let steering = &config.steering;
        // The stateful-session filter writes the chosen host into the
        // response; clients should not see (or pin) upstream addresses.
        if steering.enabled && (self.steered_to.is_some() || steering.encoding == Encoding::Base64)
        {
            let _ = host::remove_header(Map::ResponseHeaders, &steering.header);
        }
        if end_of_stream {
            // A gRPC "trailers-only" response carries its status here.
            self.grpc_status = props::grpc_status(Map::ResponseHeaders);
        }
        let rules = &config.headers.response;
        if rules.is_empty() || self.local_reply {
            return Action::Continue;
        }
        let Ok(worker) = worker.try_borrow() else {
            return Action::Continue;
        };
        let status =
            props::header_text(Map::ResponseHeaders, ":status").and_then(|s| s.parse().ok());
        let address = props::upstream_address();
        let cluster = self.cluster().map(str::to_string).unwrap_or_default();
        self.run_rules(
            &worker,
            Map::ResponseHeaders,
            rules,
            &cluster,
            address,
            status,
        );
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        if self.worker.is_some() {
            self.grpc_status = props::grpc_status(Map::ResponseTrailers);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // Our own local replies never count against anyone.
        if self.local_reply {
            return;
        }
        let (Some(worker), Some(config)) = (self.worker.clone(), self.config.clone()) else {
            return;
        };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            return;
        };
        // A request that never reached a host says nothing about any host.
        let Some(address) = props::upstream_address() else {
            return;
        };
        let status = props::response_code().unwrap_or(0);
        let flags = if classify::needs_flags(status, &config.detection) {
            props::response_flags().unwrap_or(0)
        } else {
            0
        };
        let Some(cluster) = self.cluster().map(str::to_string) else {
            return;
        };
        let duration_ms = self
            .request_at_ms
            .zip(self.response_at_ms)
            .map(|(start, end)| end.saturating_sub(start));
        let facts = ResponseFacts {
            status,
            flags,
            grpc_status: self.grpc_status,
            duration_ms,
            from_this_filter: false,
        };
        let Ok(outcome) = classify::classify(&facts, &config.detection) else {
            return;
        };
        let breaker = &config.circuit_breaker;
        let observation = Observation {
            outcome,
            breaker_slow: breaker.slow_calls_enabled()
                && duration_ms.is_some_and(|ms| ms > breaker.slow_call_threshold.0),
            probe: self.probe,
        };
        worker.observe(&cluster, &self.scope, &config, &address, observation);
    }
}

impl Stream {
    /// Answers the status endpoint for allowed sources; everyone else's
    /// request passes on as if the endpoint did not exist.
    fn status_endpoint(&mut self, worker: &Worker) -> Option<Action> {
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
        let now = host::now_ms().unwrap_or(0);
        let body = worker.status_json(now);
        self.local_reply = true;
        let headers = [
            ("content-type", "application/json"),
            ("cache-control", "no-store"),
        ];
        match host::send_local_response(200, "meshguard_status", body.as_bytes(), &headers, None) {
            Ok(()) => Some(Action::Pause),
            Err(_) => None,
        }
    }

    /// A client must not pick the host itself through our header, when the
    /// operator asked the filter to see to it (an Envoy header_mutation
    /// filter ahead of meshguard does it for free). The session header of
    /// base64 mode is the application's own (sticky sessions).
    fn strip_client_steering(&self, config: &Config) -> Action {
        let steering = &config.steering;
        if steering.enabled && steering.strip_client_header && steering.encoding == Encoding::Plain
        {
            let _ = host::remove_header(Map::RequestHeaders, &steering.header);
        }
        Action::Continue
    }
}
