//! A do-nothing proxy-wasm HTTP filter with meshguard's entry points and
//! no SDK: the second floor of `make bench` (issue 14). The SDK's
//! do-nothing filter (`bench/noop-filter`) exports every callback and
//! Envoy enters it seven times per request; this one exports exactly what
//! the shipped module exports (context create, request headers, response
//! headers, response body, response trailers, done, tick; no log, which
//! meshguard records at done instead), so meshguard minus this floor is
//! the price of meshguard's own logic and host calls.
//!
//! With a plugin configuration of words it also makes host calls, to price
//! them against the same entries: `hdr:NAME` reads a response header in
//! the response-headers callback, `prop:a.b` reads a property at done.
//! `host-calls` stands for meshguard's exact healthy path
//! (`hdr::status prop:upstream.address`).

#[cfg(target_arch = "wasm32")]
mod filter {
    use std::cell::RefCell;
    use std::ptr::null_mut;

    /// The data-returning host calls meshguard makes on its healthy path.
    const MESHGUARD_HEALTHY_PATH: &str = "hdr::status prop:upstream.address";

    #[derive(Default)]
    struct Calls {
        response_headers: Vec<Vec<u8>>,
        done_properties: Vec<Vec<u8>>,
    }

    thread_local! {
        static CALLS: RefCell<Calls> = RefCell::new(Calls::default());
    }

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        fn proxy_get_header_map_value(
            map_type: u32,
            key: *const u8,
            key_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        fn proxy_get_property(
            path: *const u8,
            path_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
    }

    /// Takes back a buffer the host allocated with `proxy_on_memory_allocate`.
    fn take(data: *mut u8, size: usize) -> Vec<u8> {
        if data.is_null() {
            return Vec::new();
        }
        // SAFETY: the host filled `size` bytes it got from
        // `proxy_on_memory_allocate`, which boxed exactly `size` bytes.
        unsafe { Vec::from_raw_parts(data, size, size) }
    }

    fn property(path: &[u8]) -> Vec<u8> {
        let (mut data, mut size) = (null_mut(), 0);
        // SAFETY: valid pointers to our own locals.
        unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
        take(data, size)
    }

    fn parse(text: &str) -> Calls {
        let text = if text.trim() == "host-calls" {
            MESHGUARD_HEALTHY_PATH
        } else {
            text
        };
        // Property paths are NUL-separated segments in the ABI.
        let path = |p: &str| p.replace('.', "\0").into_bytes();
        let mut calls = Calls::default();
        for word in text.split_whitespace() {
            if let Some(name) = word.strip_prefix("hdr:") {
                calls.response_headers.push(name.as_bytes().to_vec());
            } else if let Some(p) = word.strip_prefix("prop:") {
                calls.done_properties.push(path(p));
            }
        }
        calls
    }

    #[no_mangle]
    pub extern "C" fn proxy_abi_version_0_2_1() {}

    #[no_mangle]
    pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
        let buffer: Box<[std::mem::MaybeUninit<u8>]> = Box::new_uninit_slice(size);
        Box::into_raw(buffer).cast::<u8>()
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> u32 {
        1
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_configure(_root: u32, size: usize) -> u32 {
        let (mut data, mut len) = (null_mut(), 0);
        // SAFETY: valid pointers to our own locals; 7 is the plugin configuration.
        unsafe { proxy_get_buffer_bytes(7, 0, size, &mut data, &mut len) };
        let text = take(data, len);
        CALLS.with(|c| *c.borrow_mut() = parse(&String::from_utf8_lossy(&text)));
        1
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_context_create(_context: u32, _root: u32) {}

    #[no_mangle]
    pub extern "C" fn proxy_on_request_headers(_context: u32, _headers: usize, _end: u32) -> u32 {
        0
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_response_headers(_context: u32, _headers: usize, _end: u32) -> u32 {
        CALLS.with(|c| {
            for name in &c.borrow().response_headers {
                let (mut data, mut size) = (null_mut(), 0);
                // SAFETY: valid pointers to our own locals; 2 is the response headers.
                unsafe {
                    proxy_get_header_map_value(2, name.as_ptr(), name.len(), &mut data, &mut size)
                };
                drop(take(data, size));
            }
        });
        0
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_response_body(_context: u32, _size: usize, _end: u32) -> u32 {
        0
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_response_trailers(_context: u32, _trailers: usize) -> u32 {
        0
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_done(_context: u32) -> u32 {
        CALLS.with(|c| {
            for p in &c.borrow().done_properties {
                drop(property(p));
            }
        });
        1
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_tick(_root: u32) {}
}
