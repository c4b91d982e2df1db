//! The proxy-wasm shell: reads what Envoy knows about a request, hands it
//! to the core, and writes back the steering header. Kept thin; every host
//! error is handled, nothing here may panic.

mod host;
mod props;
mod store;
mod worker;

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::classify::{self, ResponseFacts};
use crate::config::{Config, Encoding};
use host::Map;
use worker::Worker;

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
                self.worker = Some(Rc::new(RefCell::new(Worker::new(config, &plugin, now))));
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

#[derive(Default)]
struct Stream {
    worker: Option<Rc<RefCell<Worker>>>,
    cluster: Option<String>,
    steered: bool,
    request_at_ms: Option<u64>,
    response_at_ms: Option<u64>,
    grpc_status: Option<u32>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            return Action::Continue;
        };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            return Action::Continue;
        };
        let config = Rc::clone(&worker.config);
        if config.detection.slow_calls_enabled() {
            self.request_at_ms = host::now_ms().ok();
        }
        if !config.steering.enabled {
            return Action::Continue;
        }
        let header = config.steering.header.as_str();
        if worker.steering_active() {
            self.cluster = props::cluster_name();
            if let Some(cluster) = &self.cluster {
                if let Some(value) = worker.steer(cluster) {
                    self.steered = host::set_header(Map::RequestHeaders, header, value).is_ok();
                    return Action::Continue;
                }
            }
        }
        // A client must not pick the host itself through our header. The
        // session header of base64 mode is the application's own (sticky
        // sessions) and is left alone.
        if config.steering.encoding == Encoding::Plain {
            let _ = host::remove_header(Map::RequestHeaders, header);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let Some(worker) = &self.worker else {
            return Action::Continue;
        };
        let Ok(worker) = worker.try_borrow() else {
            return Action::Continue;
        };
        let config = &worker.config;
        if self.request_at_ms.is_some() {
            self.response_at_ms = host::now_ms().ok();
        }
        // The stateful-session filter writes the chosen host into the
        // response; clients should not see (or pin) upstream addresses.
        if config.steering.enabled && (self.steered || config.steering.encoding == Encoding::Base64)
        {
            let _ = host::remove_header(Map::ResponseHeaders, &config.steering.header);
        }
        if end_of_stream {
            // A gRPC "trailers-only" response carries its status here.
            self.grpc_status = props::grpc_status(Map::ResponseHeaders);
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        if self.worker.is_some() {
            self.grpc_status = props::grpc_status(Map::ResponseTrailers);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let Ok(mut worker) = worker.try_borrow_mut() else {
            return;
        };
        let config = Rc::clone(&worker.config);
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
        let Some(cluster) = self.cluster.take().or_else(props::cluster_name) else {
            return;
        };
        let facts = ResponseFacts {
            status,
            flags,
            grpc_status: self.grpc_status,
            duration_ms: self
                .request_at_ms
                .zip(self.response_at_ms)
                .map(|(start, end)| end.saturating_sub(start)),
            from_this_filter: false,
        };
        if let Ok(outcome) = classify::classify(&facts, &config.detection) {
            worker.observe(&cluster, &address, outcome);
        }
    }
}
