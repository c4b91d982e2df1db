//! The proxy-wasm ABI's entry points, written out rather than taken from
//! the SDK's dispatcher: Envoy skips every callback a module does not
//! export, and each entry into the VM costs about as much as the rest of
//! the filter's work per request (`make bench`). The SDK exports them all,
//! so a do-nothing filter built on it enters the VM seven times per
//! request; meshguard enters four times (context create, request headers,
//! response headers, done), plus once per response body frame and for
//! response trailers when there are any. `context_create` names the
//! request's plugin instance (see `super::roots`: without it a
//! configuration applied again is ignored while the old listener drains).
//! `done` records a request's outcome (and an upstream instance's
//! attempt's, which Envoy never logs) and ends plugin instances Envoy shuts
//! down; `proxy_on_log` is not exported.
//!
//! Every entry point catches a busy state (re-entry) and an unconfigured
//! plugin by passing the request through untouched.

// The ABI layer: the only place the crate allows unsafe code (exports
// and host-call FFI); Cargo.toml denies it everywhere else.
#![allow(unsafe_code)]

use std::cell::RefCell;

use super::roots::Roots;
use super::stream::{Stream, VmCounts, CONTINUE};
use crate::in_flight::InFlight;

#[derive(Default)]
struct Filter {
    roots: Roots,
    streams: InFlight<Stream>,
    /// Whether the full-table warning was logged.
    refused_logged: bool,
}

thread_local! {
    static FILTER: RefCell<Option<Filter>> = const { RefCell::new(None) };
}

/// Runs `f` on the filter's state, or returns `None` when it is already in
/// use (a host call that re-entered the module) rather than panic.
fn with_filter<R>(f: impl FnOnce(&mut Filter) -> R) -> Option<R> {
    FILTER.with(|cell| {
        let mut state = cell.try_borrow_mut().ok()?;
        Some(f(state.get_or_insert_with(Filter::default)))
    })
}

impl Filter {
    /// The request's state and the worker that serves it, creating the
    /// state at the request's first callback when the host did not create
    /// it at `proxy_on_context_create`.
    fn stream(&mut self, context_id: u32) -> Option<(&mut Stream, &mut super::envoy_host::Worker)> {
        let roots = &self.roots;
        let Some(stream) = self.streams.get_or_create(context_id, || roots.clock_ms()) else {
            if !self.refused_logged {
                self.refused_logged = true;
                log::warn!(
                    "meshguard: {} requests in flight on this worker; newer ones pass through unobserved",
                    crate::in_flight::MAX_STREAMS
                );
            }
            return None;
        };
        let worker = self.roots.for_stream(stream)?;
        Some((stream, worker))
    }
}

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// The reactor's initializer (Envoy calls it once per VM).
#[no_mangle]
pub extern "C" fn _initialize() {
    #[cfg(target_os = "wasi")]
    unsafe {
        __wasm_call_ctors();
    }
    super::init();
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// The host's allocations in our memory (returned header values, property
/// values, configuration): a boxed slice of exactly `size` bytes, which
/// `host::take` turns back into a `Vec`.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let buffer: Box<[std::mem::MaybeUninit<u8>]> = Box::new_uninit_slice(size);
    Box::into_raw(buffer).cast::<u8>()
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root_context_id: u32, configuration_size: usize) -> u32 {
    with_filter(|filter| {
        let now = super::host::now_ms().unwrap_or(0);
        super::configure(
            filter.roots.get_or_create(root_context_id, now),
            configuration_size,
        )
    })
    .map_or(0, u32::from)
}

/// A context starts: a request's (or an attempt's) names its plugin
/// instance; a root context's own creation needs nothing (it is known at
/// its configuration).
#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, root_context_id: u32) {
    if root_context_id == 0 {
        return;
    }
    with_filter(|filter| {
        let roots = &mut filter.roots;
        let now = roots.clock_ms();
        if let Some(stream) = filter.streams.get_or_create(context_id, || now) {
            roots.adopt(stream, root_context_id, now);
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root_context_id: u32) {
    with_filter(|filter| {
        let Ok(now) = super::host::now_ms() else {
            return;
        };
        if let Some(worker) = filter
            .roots
            .tick(root_context_id, now)
            .and_then(|root| root.worker.as_mut())
        {
            worker.tick(now);
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(context_id: u32, _headers: usize, _end: u32) -> u32 {
    with_filter(|filter| {
        let vm = VmCounts {
            instances: filter.roots.count(),
            in_flight: filter.streams.len(),
        };
        let (stream, worker) = filter.stream(context_id)?;
        if worker.sees_attempts() {
            return Some(stream.on_attempt_request_headers(worker));
        }
        Some(stream.on_request_headers(worker, vm))
    })
    .flatten()
    .unwrap_or(CONTINUE)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(context_id: u32, _headers: usize, end: u32) -> u32 {
    with_filter(|filter| {
        let (stream, worker) = filter.stream(context_id)?;
        if stream.attempt {
            return Some(stream.on_attempt_response_headers(end != 0));
        }
        Some(stream.on_response_headers(worker, end != 0))
    })
    .flatten()
    .unwrap_or(CONTINUE)
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(context_id: u32, _trailers: usize) -> u32 {
    with_filter(|filter| {
        let (stream, _) = filter.stream(context_id)?;
        Some(stream.on_response_trailers())
    })
    .flatten()
    .unwrap_or(CONTINUE)
}

/// A piece of the response body. Only its end matters: a response that
/// started and never ended was cut off (a reset, a protocol error or a
/// timeout after the headers), and only then does the log read the
/// response flags (see `classify::needs_flags`). This costs one VM entry
/// per body frame Envoy passes on, against a property read (several
/// times a VM entry) on every response with a body.
#[no_mangle]
pub extern "C" fn proxy_on_response_body(context_id: u32, _body_size: usize, end: u32) -> u32 {
    if end != 0 {
        // Never creates the filter's state: a stream without any has
        // nothing to mark.
        FILTER.with(|cell| {
            if let Ok(mut state) = cell.try_borrow_mut() {
                if let Some(stream) = state.as_mut().and_then(|f| f.streams.get_mut(context_id)) {
                    stream.on_response_end();
                }
            }
        });
    }
    CONTINUE
}

/// A context's end: a request's (after its response went out, or the
/// client left) or an attempt's, recorded here rather than at the log,
/// which Envoy delivers only for requests and which would be one more VM
/// entry per request (about 3k Envoy instructions, `make bench`). A plugin
/// instance's end frees its slot at once.
#[no_mangle]
pub extern "C" fn proxy_on_done(context_id: u32) -> u32 {
    with_filter(|filter| {
        let Some(mut stream) = filter.streams.remove(context_id) else {
            filter.roots.remove(context_id);
            return;
        };
        if let Some(worker) = filter.roots.for_stream(&stream) {
            if stream.attempt {
                stream.on_attempt_done(worker);
            } else if !worker.sees_attempts() {
                stream.on_done(worker);
            }
        }
    });
    1
}
