//! A proxy-wasm host on wasmtime that runs the built `meshguard.wasm`
//! natively, with a virtual clock, several VMs sharing state like Envoy's
//! workers, and a scenario DSL on top.
//!
//! Layers, bottom up:
//! - [`abi`]: status codes, enums and the header-map wire format of the
//!   proxy-wasm ABI 0.2.1;
//! - [`imports`]: every host function the SDK imports (`env.proxy_*`) and
//!   the WASI preview1 functions a `wasm32-wasip1` module needs; unknown
//!   imports answer `Unimplemented`, nothing aborts the test process;
//! - [`props`]: properties with Envoy's names and encodings, including
//!   protobuf `Metadata` for `xds.route_metadata`;
//! - [`shared`]: shared data with Envoy's CAS rules, shared queues,
//!   metrics, the log and the clocks, shared by all VMs;
//! - [`vm`]: one instance (one Envoy worker) and its contexts' state;
//! - [`proxy`]: N VMs, ticks on a virtual clock, the stream API;
//! - [`scenario`]: simulated services with failure patterns, a load
//!   balancer that honours the steering header, and a recorder;
//! - [`fuzz`]: the never-trap property-test driver.
//!
//! ```no_run
//! use host_tests::wasm_host::{abi::headers, props::Answer, PluginModule, Proxy};
//! let module = PluginModule::from_env();
//! let mut proxy = Proxy::new(&module, 2, "{}").unwrap();
//! let mut stream = proxy.http(0).unwrap();
//! stream.request_headers(headers(&[(":path", "/")]), true).unwrap();
//! stream
//!     .property("upstream.address", Answer::string("10.0.0.1:80"))
//!     .property("response.code", Answer::int(503))
//!     .property("xds.cluster_name", Answer::string("demo"));
//! stream.response_headers(headers(&[(":status", "503")]), true).unwrap();
//! stream.finish().unwrap();
//! ```

pub mod abi;
pub mod fuzz;
pub mod imports;
pub mod module;
pub mod props;
pub mod proxy;
pub mod rng;
pub mod scenario;
pub mod shared;
pub mod vm;

pub use abi::{headers, Action, HeaderMap, LogLevel, Status};
pub use imports::Call;
pub use module::PluginModule;
pub use props::{Answer, Metadata, Properties};
pub use proxy::{Exchange, HttpStream, Proxy, ProxyOptions, StreamRef};
pub use rng::Rng;
pub use shared::{LogRecord, Shared};
pub use vm::{LocalReply, StreamState, Vm, VmError, VmOptions};
