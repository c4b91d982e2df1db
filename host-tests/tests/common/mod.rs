//! A hand-driven service for the wasmtime-host tests that need exact
//! control: which VM a stream starts on, when it completes, and with what.
//! (The scenario DSL is better for traffic over time; this is better for
//! "start six streams, complete two".)

#![allow(dead_code)]

use std::time::Duration;

use host_tests::wasm_host::abi::{headers, MapType};
use host_tests::wasm_host::scenario::RouteSpec;
use host_tests::wasm_host::{Answer, LocalReply, PluginModule, Proxy, StreamRef, StreamState};

pub const STEER: &str = "x-meshguard-upstream";

/// Envoy stat names as the filter builds them (`filter/src/metrics.rs`).
pub fn sanitize(part: &str) -> String {
    part.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '|' | ':' | '-' | '_' | '[' | ']' => c,
            _ => '_',
        })
        .collect()
}

/// `meshguard.<metric>.service.<service>`.
pub fn service_metric(metric: &str, service: &str) -> String {
    format!("meshguard.{metric}.service.{}", sanitize(service))
}

/// `meshguard.<metric>.service.<service>.<label>.<value>`.
pub fn labelled(metric: &str, service: &str, label: &str, value: &str) -> String {
    format!("{}.{label}.{value}", service_metric(metric, service))
}

/// `meshguard.<metric>.service.<service>.host.<address>`.
pub fn host_metric(metric: &str, service: &str, host: &str) -> String {
    format!(
        "{}.host.{}",
        service_metric(metric, service),
        sanitize(host)
    )
}

/// The service key of an override with state of its own:
/// `<cluster> [vs=<selector> route=<selector>]` (`*` when unset).
pub fn scoped(cluster: &str, virtual_service: &str, route: &str) -> String {
    format!("{cluster} [vs={virtual_service} route={route}]")
}

/// What happened to a request when its headers went through the filter.
#[derive(Debug, Clone)]
pub enum Started {
    /// It goes on to `host` (chosen by the steering header when `steered`,
    /// by the worker's round robin otherwise); complete it later.
    Upstream {
        stream: StreamRef,
        host: usize,
        steered: bool,
    },
    /// The filter answered it (the stream is already finished).
    Local(LocalReply),
}

impl Started {
    pub fn local(&self) -> Option<&LocalReply> {
        match self {
            Started::Local(reply) => Some(reply),
            Started::Upstream { .. } => None,
        }
    }

    pub fn upstream(&self) -> Option<(StreamRef, usize)> {
        match self {
            Started::Upstream { stream, host, .. } => Some((*stream, *host)),
            Started::Local(_) => None,
        }
    }
}

/// N VMs in front of hosts `10.0.0.1:80`, `10.0.0.2:80`... of one cluster.
pub struct Service {
    pub proxy: Proxy,
    pub cluster: String,
    pub hosts: Vec<String>,
    /// Envoy's round robin is per worker.
    round_robin: Vec<usize>,
    /// Requests each host received.
    pub reached: Vec<u64>,
    /// Failed answers each host gave.
    pub failed: Vec<u64>,
    /// Requests sent by the steering header.
    pub steered: u64,
    pub local_replies: Vec<LocalReply>,
}

impl Service {
    pub fn new(config: &str, workers: usize, hosts: usize) -> Service {
        let module = PluginModule::from_env();
        let proxy = Proxy::new(&module, workers, config).expect("VMs start");
        assert!(
            proxy.configured.iter().all(|c| *c),
            "configuration refused: {:?}",
            proxy.logs()
        );
        Service {
            proxy,
            cluster: "demo".to_string(),
            hosts: (1..=hosts).map(|i| format!("10.0.0.{i}:80")).collect(),
            round_robin: (0..workers).collect(),
            reached: vec![0; hosts],
            failed: vec![0; hosts],
            steered: 0,
            local_replies: Vec::new(),
        }
    }

    pub fn advance(&mut self, by: Duration) {
        self.proxy.advance(by).expect("no trap");
    }

    pub fn elapsed(&self) -> Duration {
        self.proxy.elapsed()
    }

    /// Request headers of a new stream on `vm` through the filter.
    pub fn start(
        &mut self,
        vm: usize,
        route: Option<&RouteSpec>,
        extra: &[(&str, &str)],
    ) -> Started {
        let cluster = self.cluster.clone();
        let mut http = self.proxy.http(vm).expect("context");
        let id = http.id();
        http.property("xds.cluster_name", Answer::string(&cluster))
            .property("source.address", Answer::string("10.1.0.1:40000"));
        if let Some(route) = route {
            http.property("xds.route_name", Answer::string(&route.name))
                .property("xds.virtual_host_name", Answer::string(&route.virtual_host));
            if let Some(metadata) = &route.metadata {
                http.property("xds.route_metadata", Answer::metadata(metadata));
            }
        }
        let mut map = headers(&[
            (":method", "GET"),
            (":path", "/"),
            (":authority", "demo.svc"),
            (":scheme", "http"),
        ]);
        map.extend(
            extra
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())),
        );
        http.request_headers(map, true).expect("no trap");
        let state = http.state();
        if let Some(reply) = state.local_reply.clone() {
            // Envoy sends the reply through the filter's response phase.
            http.property("response.code", Answer::int(i64::from(reply.status)))
                .property("response.flags", Answer::int(0))
                .property("response.code_details", Answer::string(&reply.details));
            let mut map = headers(&[(":status", reply.status.to_string().as_str())]);
            map.extend(reply.headers.iter().cloned());
            http.response_headers(map, reply.body.is_empty())
                .expect("no trap");
            if !reply.body.is_empty() {
                http.response_body(&reply.body, true).expect("no trap");
            }
            http.finish().expect("no trap");
            self.local_replies.push(reply.clone());
            return Started::Local(reply);
        }
        let steering = state
            .header(MapType::RequestHeaders, STEER)
            .map(<[u8]>::to_vec);
        // override_host takes `ip:port` or a list, whose first entry is for
        // the first attempt (the others for retries, which this simulated
        // service does not make).
        let chosen = steering
            .as_deref()
            .and_then(|v| v.split(|b| *b == b',').next())
            .and_then(|v| self.hosts.iter().position(|h| h.as_bytes() == v));
        let (host, steered) = match chosen {
            Some(host) => (host, true),
            None => {
                let next = &mut self.round_robin[vm];
                let host = *next % self.hosts.len();
                *next = next.wrapping_add(1);
                (host, false)
            }
        };
        self.reached[host] += 1;
        self.steered += u64::from(steered);
        Started::Upstream {
            stream: id,
            host,
            steered,
        }
    }

    /// The host's answer, then log/done/delete, as Envoy does.
    pub fn complete(&mut self, stream: StreamRef, host: usize, status: u16) -> StreamState {
        if status >= 500 {
            self.failed[host] += 1;
        }
        let address = self.hosts[host].clone();
        let mut http = self.proxy.resume(stream);
        http.property("upstream.address", Answer::string(&address))
            .property("upstream.port", Answer::int(80))
            .property("response.code", Answer::int(i64::from(status)))
            .property("response.flags", Answer::int(0));
        http.response_headers(
            headers(&[
                (":status", status.to_string().as_str()),
                ("content-length", "0"),
            ]),
            true,
        )
        .expect("no trap");
        http.finish().expect("no trap")
    }

    /// One whole request; `answer` gives each host's status.
    pub fn request(
        &mut self,
        vm: usize,
        route: Option<&RouteSpec>,
        answer: impl FnOnce(usize) -> u16,
    ) -> Started {
        let started = self.start(vm, route, &[]);
        if let Some((stream, host)) = started.upstream() {
            self.complete(stream, host, answer(host));
        }
        started
    }

    pub fn metric(&self, name: &str) -> Option<i64> {
        self.proxy.lock().metric(name).map(|m| m.value)
    }

    /// A metric the test expects to exist.
    pub fn must(&self, name: &str) -> i64 {
        self.metric(name).unwrap_or_else(|| {
            let names: Vec<String> = self
                .proxy
                .lock()
                .metrics()
                .iter()
                .map(|m| format!("{} = {}", m.name, m.value))
                .collect();
            panic!("no metric {name}; defined:\n  {}", names.join("\n  "))
        })
    }

    /// Every metric, `name = value`, for failure messages.
    pub fn dump(&self) -> String {
        self.proxy
            .lock()
            .metrics()
            .iter()
            .map(|m| format!("  {} = {}\n", m.name, m.value))
            .collect()
    }

    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.proxy.log_lines(needle)
    }
}
