//! mg-upstream: a demo/test upstream whose failures are set at run time.
//!
//! ```text
//! mg-upstream --name u1 --listen 127.0.0.1:18081 --admin 127.0.0.1:19081
//! ```
//! Data port: 200 `{"upstream":"u1"}` with `x-upstream-name: u1`, unless the
//! behaviour says otherwise; the `x-meshguard-upstream` and `x-request-id`
//! request headers it received come back as `x-upstream-saw-<name>`. Admin
//! port: `PUT|GET /behaviour`, `GET /stats`, `POST /stats/reset` (see
//! `host_tests::Behaviour`). Port 0 picks a free port; the first stdout line
//! reports the bound addresses.
//!
//! Many hosts from one process (large services, EDS membership changes):
//!
//! ```text
//! mg-upstream --name h --hosts 200 --listen 127.0.1.1:0 --admin 127.0.0.1:0
//! ```
//! serves hosts `h-0` .. `h-199`, host `i` on its own loopback address
//! (`host_tests::upstream::fleet_address`: 127.0.1.1 .. 127.0.1.250, then
//! 127.0.2.1 ..) and one port shared by all (port 0: one free on every
//! address). One listener per address, never 0.0.0.0, so other servers on
//! the same port elsewhere in 127/8 are unaffected. Each host has its own
//! behaviour, `randomErrors` seed and counters and answers as itself
//! (`x-upstream-name: h-7`). Admin port, besides the endpoints above (which
//! then mean: `PUT /behaviour` every host, `GET /behaviour` host 0,
//! `GET /stats` the sum, `POST /stats/reset` every host):
//! `GET /hosts` (`[{"index","name","address"}]`), `GET /hosts/stats`
//! (`[{"index","name","address","requests","errors"}]`), `GET /hosts/<i>/stats`,
//! `GET|PUT /hosts/<i>/behaviour`. The ready line adds `hosts=N last=ADDR`.
//! Client: `host_tests::upstream::{Fleet, FleetAdmin}`.
//!
//! `--parent-pid PID`: exit (SIGTERM) when process PID, which started this
//! one, exits, even if it is killed and never cleans up (`make run`'s
//! script passes its own PID).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use host_tests::behaviour::{FaultDice, RateMeter};
use host_tests::upstream::{fleet_address, HostInfo, HostStats, READY_PREFIX};
use host_tests::{Behaviour, ErrorSpreader, Stats};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, TRAILER};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

/// Bodies fail only with [`InjectedReset`] (`cutOff`), which makes hyper
/// drop the connection in the middle of the answer.
type Body = BoxBody<Bytes, InjectedReset>;

const STEERING_HEADER: &str = "x-meshguard-upstream";
const SAW_STEERING_HEADER: &str = "x-upstream-saw-meshguard-upstream";
const REQUEST_ID_HEADER: &str = "x-request-id";
const SAW_REQUEST_ID_HEADER: &str = "x-upstream-saw-request-id";

struct Args {
    name: String,
    listen: SocketAddr,
    admin: SocketAddr,
    /// None: one host on `listen` named `name`. Some(n): n hosts from
    /// `listen`'s address up, named `<name>-<i>`.
    hosts: Option<usize>,
    /// `--parent-pid`: die with this parent (PR_SET_PDEATHSIG).
    parent_pid: Option<u32>,
}

/// Most hosts one process serves (`--hosts`).
const MAX_HOSTS: usize = 20_000;

fn parse_args() -> Result<Args, String> {
    let mut name = None;
    let mut listen = None;
    let mut admin = None;
    let mut hosts = None;
    let mut parent_pid = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--name" => name = Some(value()?),
            "--listen" => listen = Some(value()?),
            "--admin" => admin = Some(value()?),
            "--hosts" => {
                let v = value()?;
                let n: usize = v.parse().map_err(|e| format!("--hosts {v}: {e}"))?;
                if !(1..=MAX_HOSTS).contains(&n) {
                    return Err(format!("--hosts {n}: must be 1-{MAX_HOSTS}"));
                }
                hosts = Some(n);
            }
            "--parent-pid" => {
                let v = value()?;
                parent_pid = Some(v.parse().map_err(|e| format!("--parent-pid {v}: {e}"))?);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let addr = |v: Option<String>, flag: &str| -> Result<SocketAddr, String> {
        let v = v.ok_or_else(|| format!("{flag} is required"))?;
        v.parse().map_err(|e| format!("{flag} {v}: {e}"))
    };
    if hosts.is_some() && listen.is_none() {
        listen = Some("127.0.1.1:0".to_string());
    }
    Ok(Args {
        name: name.ok_or("--name is required")?,
        listen: addr(listen, "--listen")?,
        admin: addr(admin, "--admin")?,
        hosts,
        parent_pid,
    })
}

struct State {
    behaviour: Behaviour,
    spreader: ErrorSpreader,
    /// `randomErrors` and the overload model (`capacityRps`).
    dice: FaultDice,
    overload_spreader: ErrorSpreader,
    rate: RateMeter,
    epoch: Instant,
}

/// One upstream host: its behaviour, counters and data listener.
struct Shared {
    index: usize,
    name: String,
    address: SocketAddr,
    state: Mutex<State>,
    requests: AtomicU64,
    errors: AtomicU64,
    /// Whether the data port must be closed; the acceptor and every open
    /// data connection watch it.
    refuse: watch::Sender<bool>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new(index: usize, name: String, address: SocketAddr) -> Self {
        let (refuse, _) = watch::channel(false);
        Self {
            index,
            state: Mutex::new(State {
                behaviour: Behaviour::healthy().normalized(),
                spreader: ErrorSpreader::new(0),
                dice: FaultDice::new(seed_from_name(&name)),
                overload_spreader: ErrorSpreader::new(100),
                rate: RateMeter::default(),
                epoch: Instant::now(),
            }),
            name,
            address,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            refuse,
        }
    }

    fn stats(&self) -> HostStats {
        HostStats {
            index: self.index,
            name: self.name.clone(),
            address: self.address,
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    fn info(&self) -> HostInfo {
        HostInfo {
            index: self.index,
            name: self.name.clone(),
            address: self.address,
        }
    }

    fn reset_stats(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
    }

    fn set_behaviour(&self, b: Behaviour) {
        let b = b.normalized();
        let refuse = b.refuse;
        {
            let mut st = self.state();
            st.spreader = ErrorSpreader::new(b.effective_error_percent());
            st.overload_spreader = ErrorSpreader::new(b.overload_error_percent.unwrap_or(100));
            st.behaviour = b;
        }
        self.refuse.send_replace(refuse);
        let now = self.state().behaviour.clone();
        eprintln!(
            "mg-upstream {}: behaviour {}",
            self.name,
            serde_json::to_string(&now).unwrap_or_default()
        );
    }
}

/// What the admin port serves: every host of the process.
struct Server {
    name: String,
    hosts: Vec<Arc<Shared>>,
}

impl Server {
    /// The sum over all hosts (`GET /stats`); with one host, its counters.
    fn stats(&self) -> Stats {
        Stats {
            name: self.name.clone(),
            requests: self
                .hosts
                .iter()
                .map(|h| h.requests.load(Ordering::Relaxed))
                .sum(),
            errors: self
                .hosts
                .iter()
                .map(|h| h.errors.load(Ordering::Relaxed))
                .sum(),
        }
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The error a data request fails with when the behaviour says "reset": hyper
/// then drops the connection (HTTP/1) or resets the stream (HTTP/2) without
/// answering.
#[derive(Debug)]
struct InjectedReset;

impl std::fmt::Display for InjectedReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected reset")
    }
}

impl std::error::Error for InjectedReset {}

async fn handle_data(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, InjectedReset> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let (b, fault, overloaded) = {
        let mut st = shared.state();
        let fault = if st.behaviour.random_errors {
            let p = st.behaviour.effective_error_percent();
            st.dice.roll(p)
        } else {
            st.spreader.next_is_fault()
        };
        let now_ms = u64::try_from(st.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let recent = st.rate.record(now_ms);
        let overloaded = match st.behaviour.capacity_rps {
            Some(cap) if recent > cap => {
                if st.behaviour.random_errors {
                    let p = st.behaviour.overload_error_percent.unwrap_or(100);
                    st.dice.roll(p)
                } else {
                    st.overload_spreader.next_is_fault()
                }
            }
            _ => false,
        };
        (st.behaviour.clone(), fault, overloaded && !fault)
    };
    if b.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(b.latency_ms)).await;
    }
    if fault || overloaded {
        shared.errors.fetch_add(1, Ordering::Relaxed);
    }
    if fault && b.reset {
        return Err(InjectedReset);
    }
    let name = shared.name.as_str();
    let mut resp = if fault && b.cut_off {
        cut_off_response(name)
    } else if let Some(code) = b.grpc_status {
        grpc_response(if fault { code } else { 0 })
    } else {
        let status = match (fault, overloaded, b.status) {
            (true, _, Some(s)) | (_, true, Some(s)) => {
                StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            (_, true, None) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::OK,
        };
        let body = if status == StatusCode::OK {
            serde_json::json!({ "upstream": name })
        } else {
            serde_json::json!({ "upstream": name, "status": status.as_u16() })
        };
        json_response(status, &body)
    };
    if let Ok(v) = HeaderValue::from_str(name) {
        resp.headers_mut().insert("x-upstream-name", v);
    }
    for (k, v) in &b.headers {
        if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            resp.headers_mut().insert(k, v);
        }
    }
    // Lets tests check that Envoy strips meshguard's steering header before
    // the request reaches the application.
    if let Some(v) = req.headers().get(STEERING_HEADER) {
        resp.headers_mut().insert(SAW_STEERING_HEADER, v.clone());
    }
    // Lets tests check which request id reached the application (meshguard's
    // header rules can generate one).
    if let Some(v) = req.headers().get(REQUEST_ID_HEADER) {
        resp.headers_mut().insert(SAW_REQUEST_ID_HEADER, v.clone());
    }
    Ok(resp)
}

/// 200 and the start of a JSON body, then the connection is dropped (HTTP/1:
/// the chunked body never ends) or the stream reset (HTTP/2): Envoy has sent
/// the client the headers already and logs `upstream_reset_after_response_started`.
fn cut_off_response(name: &str) -> Response<Body> {
    let body = CutOffBody {
        start: Some(Bytes::from(format!("{{\"upstream\":\"{name}\""))),
        pause: Box::pin(tokio::time::sleep(CUT_OFF_AFTER)),
    };
    let mut r = Response::new(body.boxed());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// How long a cut-off answer waits after its first bytes: hyper sends the
/// headers with them, and an error before they are flushed would drop them
/// too (a reset *before* the response started).
const CUT_OFF_AFTER: Duration = Duration::from_millis(20);

/// One data frame, a pause, then the error that makes hyper abort the answer.
struct CutOffBody {
    start: Option<Bytes>,
    pause: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for CutOffBody {
    type Data = Bytes;
    type Error = InjectedReset;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, InjectedReset>>> {
        if let Some(data) = self.start.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match std::future::Future::poll(self.pause.as_mut(), cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Some(Err(InjectedReset))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

/// 200 + `application/grpc` + one empty message + `grpc-status` trailer: what a
/// gRPC server sends for a unary call, whatever the request was.
fn grpc_response(code: u32) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(code));
    if code != 0 {
        trailers.insert(
            "grpc-message",
            HeaderValue::from_static("injected by mg-upstream"),
        );
    }
    // Length-prefixed message framing: not compressed, zero-length message.
    let body = GrpcBody {
        data: Some(Bytes::from_static(&[0, 0, 0, 0, 0])),
        trailers: Some(trailers),
    };
    let mut r = Response::new(body.boxed());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    // hyper's HTTP/1 encoder only sends trailers announced here (and only if
    // the client sent `te: trailers`); HTTP/2 needs neither.
    r.headers_mut().insert(
        TRAILER,
        HeaderValue::from_static("grpc-status, grpc-message"),
    );
    r
}

/// One data frame, then trailers. http-body-util's `WithTrailers` over `Full`
/// reports end-of-stream after the data, so hyper never sends its trailers.
struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for GrpcBody {
    type Data = Bytes;
    type Error = InjectedReset;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, InjectedReset>>> {
        let frame = match self.data.take() {
            Some(d) => Some(Frame::data(d)),
            None => self.trailers.take().map(Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

async fn read_behaviour(req: Request<Incoming>) -> Result<Behaviour, Response<Body>> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Err(text(
                StatusCode::BAD_REQUEST,
                format!("cannot read body: {e}\n"),
            ))
        }
    };
    let parsed: Result<Behaviour, String> = if body.iter().all(u8::is_ascii_whitespace) {
        Ok(Behaviour::healthy())
    } else {
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    };
    parsed
        .and_then(|b| b.validate().map(|()| b))
        .map_err(|e| text(StatusCode::BAD_REQUEST, format!("bad behaviour: {e}\n")))
}

const ADMIN_ENDPOINTS: &str = "endpoints: GET|PUT /behaviour, GET /stats, POST /stats/reset, \
GET /hosts, GET /hosts/stats, GET /hosts/<i>/stats, GET|PUT /hosts/<i>/behaviour\n";

async fn handle_admin(
    server: Arc<Server>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    // `/hosts/<i>/<what>`: one host of the process.
    if let Some(rest) = path.strip_prefix("/hosts/") {
        if let Some((i, what)) = rest.split_once('/') {
            if let Ok(i) = i.parse::<usize>() {
                let Some(host) = server.hosts.get(i).cloned() else {
                    return Ok(text(
                        StatusCode::NOT_FOUND,
                        format!("no host {i}: this process serves {}\n", server.hosts.len()),
                    ));
                };
                let resp = match (method, what) {
                    (Method::GET, "behaviour") => {
                        json_response(StatusCode::OK, &host.state().behaviour)
                    }
                    (Method::PUT, "behaviour") => match read_behaviour(req).await {
                        Ok(b) => {
                            host.set_behaviour(b);
                            json_response(StatusCode::OK, &host.state().behaviour)
                        }
                        Err(r) => r,
                    },
                    (Method::GET, "stats") => json_response(StatusCode::OK, &host.stats()),
                    _ => text(StatusCode::NOT_FOUND, ADMIN_ENDPOINTS.to_string()),
                };
                return Ok(resp);
            }
        }
    }
    let resp = match (method, path.as_str()) {
        (Method::GET, "/behaviour") => {
            json_response(StatusCode::OK, &server.hosts[0].state().behaviour)
        }
        (Method::PUT, "/behaviour") => match read_behaviour(req).await {
            Ok(b) => {
                for h in &server.hosts {
                    h.set_behaviour(b.clone());
                }
                json_response(StatusCode::OK, &server.hosts[0].state().behaviour)
            }
            Err(r) => r,
        },
        (Method::GET, "/stats") => json_response(StatusCode::OK, &server.stats()),
        (Method::POST, "/stats/reset") => {
            for h in &server.hosts {
                h.reset_stats();
            }
            json_response(StatusCode::OK, &server.stats())
        }
        (Method::GET, "/hosts") => {
            let v: Vec<HostInfo> = server.hosts.iter().map(|h| h.info()).collect();
            json_response(StatusCode::OK, &v)
        }
        (Method::GET, "/hosts/stats") => {
            let v: Vec<HostStats> = server.hosts.iter().map(|h| h.stats()).collect();
            json_response(StatusCode::OK, &v)
        }
        _ => text(StatusCode::NOT_FOUND, ADMIN_ENDPOINTS.to_string()),
    };
    Ok(resp)
}

fn text(status: StatusCode, msg: String) -> Response<Body> {
    let mut r = Response::new(full(msg));
    *r.status_mut() = status;
    r
}

/// Resolves once `refuse` is (or becomes) true; never if the sender is gone.
async fn refusing(mut rx: watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn serve_data_conn(shared: Arc<Shared>, stream: TcpStream) {
    let rx = shared.refuse.subscribe();
    tokio::spawn(async move {
        let _ = stream.set_nodelay(true);
        let svc = service_fn(move |req| handle_data(shared.clone(), req));
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        // Dropping the connection closes the socket: with `refuse` the host
        // looks crashed to pooled connections too, not only to new ones.
        tokio::select! {
            _ = conn => {}
            _ = refusing(rx) => {}
        }
    });
}

/// Accepts data connections, closing the listener while `refuse` is set and
/// binding the same address again afterwards.
async fn run_data(shared: Arc<Shared>, addr: SocketAddr, first: TcpListener) {
    let mut rx = shared.refuse.subscribe();
    let mut listener = Some(first);
    loop {
        if *rx.borrow_and_update() {
            listener = None;
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let l = match listener.take() {
            Some(l) => l,
            None => match TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!(
                        "mg-upstream {}: cannot bind {addr} again: {e}; retrying",
                        shared.name
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        loop {
            tokio::select! {
                accepted = l.accept() => match accepted {
                    Ok((stream, _)) => serve_data_conn(shared.clone(), stream),
                    Err(e) => {
                        // Usually EMFILE or a connection aborted before accept:
                        // back off briefly instead of spinning.
                        eprintln!("mg-upstream {}: accept: {e}", shared.name);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *rx.borrow() {
                        break;
                    }
                }
            }
        }
        // `l` is dropped here: the port now refuses connections.
    }
}

async fn run_admin(server: Arc<Server>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("mg-upstream {}: admin accept: {e}", server.name);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let server = server.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle_admin(server.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A fixed seed per server name: `randomErrors` repeats from run to run.
fn seed_from_name(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

async fn shutdown_signal(mut term: Signal, mut int: Signal) -> &'static str {
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Binds one data listener per host: `listen` alone, or `n` addresses from
/// `listen`'s up on one port. With port 0 the port is the one the OS gives
/// the first address; if another address has it taken, all are dropped and
/// a new port is tried.
async fn bind_hosts(
    listen: SocketAddr,
    n: Option<usize>,
) -> Result<Vec<(SocketAddr, TcpListener)>, String> {
    let Some(n) = n else {
        let l = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let a = l.local_addr().map_err(|e| e.to_string())?;
        return Ok(vec![(a, l)]);
    };
    let IpAddr::V4(base) = listen.ip() else {
        return Err(format!(
            "--hosts needs an IPv4 loopback --listen, not {listen}"
        ));
    };
    let addrs = (0..n)
        .map(|i| {
            fleet_address(base, i).ok_or_else(|| {
                format!("--hosts {n} from {base}: host {i} would leave 127.0.0.0/8 (base must be 127.x.y.1-250)")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut last_err = String::new();
    for _attempt in 0..20 {
        let first = TcpListener::bind(SocketAddr::new(addrs[0].into(), listen.port()))
            .await
            .map_err(|e| format!("cannot listen on {}:{}: {e}", addrs[0], listen.port()))?;
        let port = first.local_addr().map_err(|e| e.to_string())?.port();
        let mut bound = vec![(SocketAddr::new(addrs[0].into(), port), first)];
        let mut failed = None;
        for a in &addrs[1..] {
            let sa = SocketAddr::new((*a).into(), port);
            match TcpListener::bind(sa).await {
                Ok(l) => bound.push((sa, l)),
                Err(e) => {
                    failed = Some(format!("cannot listen on {sa}: {e}"));
                    break;
                }
            }
        }
        match failed {
            None => return Ok(bound),
            Some(e) if listen.port() == 0 => last_err = e,
            Some(e) => return Err(e),
        }
    }
    Err(format!(
        "no port free on all {n} addresses after 20 tries; last: {last_err}"
    ))
}

async fn run(args: Args) -> Result<(), String> {
    let listeners = bind_hosts(args.listen, args.hosts).await?;
    let admin = TcpListener::bind(args.admin)
        .await
        .map_err(|e| format!("cannot listen on {} (admin): {e}", args.admin))?;
    let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;
    let data_addr = listeners[0].0;
    let last_addr = listeners[listeners.len() - 1].0;

    let mut hosts = Vec::with_capacity(listeners.len());
    let mut data = Vec::with_capacity(listeners.len());
    for (i, (addr, l)) in listeners.into_iter().enumerate() {
        let name = match args.hosts {
            None => args.name.clone(),
            Some(_) => format!("{}-{i}", args.name),
        };
        let host = Arc::new(Shared::new(i, name, addr));
        data.push((host.clone(), addr, l));
        hosts.push(host);
    }
    let server = Arc::new(Server {
        name: args.name.clone(),
        hosts,
    });
    // Subscribe to signals before announcing readiness, so a SIGTERM sent
    // right after the ready line is never missed.
    let term =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let int = signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    for (host, addr, l) in data {
        tokio::spawn(run_data(host, addr, l));
    }
    tokio::spawn(run_admin(server.clone(), admin));
    match args.hosts {
        None => println!(
            "{READY_PREFIX} name={} data={data_addr} admin={admin_addr}",
            args.name
        ),
        Some(n) => println!(
            "{READY_PREFIX} name={} data={data_addr} admin={admin_addr} hosts={n} last={last_addr}",
            args.name
        ),
    }
    let sig = shutdown_signal(term, int).await;
    eprintln!("mg-upstream {}: {sig}, exiting", args.name);
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("mg-upstream: {e}");
            }
            eprintln!(
                "usage: mg-upstream --name NAME --listen IP:PORT --admin IP:PORT\n       \
                 mg-upstream --name NAME --hosts N [--listen 127.0.1.1:PORT] --admin IP:PORT\n       \
                 (either form) [--parent-pid PID]: exit when process PID exits"
            );
            return ExitCode::from(2);
        }
    };
    if let Some(parent) = args.parent_pid {
        // SIGTERM: the same clean exit as a stop from the script.
        if let Err(e) = host_tests::process::die_with_parent(parent, libc::SIGTERM) {
            eprintln!("mg-upstream: --parent-pid: {e}");
            return ExitCode::FAILURE;
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mg-upstream: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(args));
    // Open connections are not waited for: a test upstream has nothing to flush.
    rt.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mg-upstream: {e}");
            ExitCode::FAILURE
        }
    }
}
