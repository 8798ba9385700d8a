//! A safe handle on libtorch's c10d process group (TCPStore + Gloo) through volt's C++
//! shim (`csrc/volt_dist.cpp`).
use crate::error::{Error, Result};
use crate::ffi::check;
use crate::strategy::ReduceOp;
use std::ffi::{c_char, c_int, c_void, CString};
use std::time::Duration;
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn volt_dist_new(
        addr: *const c_char,
        port: c_int,
        rank: c_int,
        world_size: c_int,
        timeout_ms: i64,
        store_is_external: c_int,
        iface: *const c_char,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn volt_dist_free(group: *mut c_void);
    fn volt_dist_all_reduce(group: *mut c_void, t: *const C_tensor, op: c_int) -> *mut c_char;
    fn volt_dist_broadcast(group: *mut c_void, t: *const C_tensor, root: c_int) -> *mut c_char;
    fn volt_dist_all_gather(group: *mut c_void, out: *const C_tensor, input: *const C_tensor) -> *mut c_char;
    fn volt_dist_barrier(group: *mut c_void) -> *mut c_char;
    fn volt_dist_store_set(
        group: *mut c_void,
        key: *const c_char,
        value: *const c_char,
        timeout_ms: i64,
    ) -> *mut c_char;
    fn volt_dist_store_check(
        group: *mut c_void,
        key: *const c_char,
        timeout_ms: i64,
        found: *mut c_int,
    ) -> *mut c_char;
}

/// Where and how to rendezvous.
#[derive(Clone, Debug)]
pub(crate) struct Rendezvous<'a> {
    pub addr: &'a str,
    pub port: u16,
    pub rank: usize,
    pub world_size: usize,
    pub timeout: Duration,
    /// The store is hosted by a launcher (torchrun's agent), not by rank 0.
    pub store_is_external: bool,
    /// Network interface for Gloo (`GLOO_SOCKET_IFNAME`).
    pub iface: Option<&'a str>,
}

/// One rank's membership of a Gloo process group; collectives block until done.
pub(crate) struct ProcessGroup {
    raw: *mut c_void,
}

// SAFETY: the c10d objects behind `raw` are thread-safe, and volt calls into one group
// from one thread at a time (`&mut`/`&self` on the owning strategy).
unsafe impl Send for ProcessGroup {}

fn cstring(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Config(format!("{what} contains a NUL byte: {s:?}")))
}

/// c10d's message without the C++ backtrace libtorch appends to it.
fn dist_err(e: Error) -> Error {
    match e {
        Error::Torch(tch::TchError::Torch(m)) => {
            let head = m.split("\nException raised from").next().unwrap_or_default();
            Error::Distributed(head.trim_end().to_owned())
        }
        other => other,
    }
}

impl ProcessGroup {
    /// Joins (rank 0: hosts) the rendezvous; returns once every rank has joined.
    pub fn join(r: &Rendezvous) -> Result<Self> {
        let addr = cstring("MASTER_ADDR", r.addr)?;
        let iface = r.iface.map(|i| cstring("GLOO_SOCKET_IFNAME", i)).transpose()?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: valid C strings for the call's duration; `raw` receives an owned handle.
        check(unsafe {
            volt_dist_new(
                addr.as_ptr(),
                c_int::from(r.port),
                r.rank as c_int,
                r.world_size as c_int,
                r.timeout.as_millis() as i64,
                c_int::from(r.store_is_external),
                iface.as_ref().map_or(std::ptr::null(), |i| i.as_ptr()),
                &mut raw,
            )
        })
        .map_err(|e| {
            Error::Distributed(format!(
                "rank {} of {} could not join the rendezvous at {}:{}: {}",
                r.rank,
                r.world_size,
                r.addr,
                r.port,
                dist_err(e)
            ))
        })?;
        Ok(ProcessGroup { raw })
    }

    /// Reduces `t` in place on every rank (`Mean` is not a c10d op: sum, then divide).
    pub fn all_reduce_(&self, t: &Tensor, op: ReduceOp) -> Result<()> {
        let code = match op {
            ReduceOp::Sum | ReduceOp::Mean => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        };
        // SAFETY: `t` is a live tensor; the call blocks until the collective is done.
        check(unsafe { volt_dist_all_reduce(self.raw, t.as_ptr(), code) }).map_err(dist_err)
    }

    /// Overwrites `t` with rank `root`'s `t`.
    pub fn broadcast_(&self, t: &Tensor, root: usize) -> Result<()> {
        // SAFETY: as in all_reduce_.
        check(unsafe { volt_dist_broadcast(self.raw, t.as_ptr(), root as c_int) }).map_err(dist_err)
    }

    /// Fills `out` (every rank's `input` concatenated along dim 0, in rank order).
    pub fn all_gather_into(&self, out: &Tensor, input: &Tensor) -> Result<()> {
        // SAFETY: as in all_reduce_.
        check(unsafe { volt_dist_all_gather(self.raw, out.as_ptr(), input.as_ptr()) }).map_err(dist_err)
    }

    /// Blocks until every rank calls it.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: the handle is live.
        check(unsafe { volt_dist_barrier(self.raw) }).map_err(dist_err)
    }

    /// Sets `key` in the rendezvous store.
    pub fn store_set(&self, key: &str, value: &str, timeout: Duration) -> Result<()> {
        let (k, v) = (cstring("store key", key)?, cstring("store value", value)?);
        // SAFETY: valid C strings for the call's duration.
        check(unsafe { volt_dist_store_set(self.raw, k.as_ptr(), v.as_ptr(), timeout.as_millis() as i64) })
            .map_err(dist_err)
    }

    /// Whether `key` is in the rendezvous store.
    pub fn store_has(&self, key: &str, timeout: Duration) -> Result<bool> {
        let k = cstring("store key", key)?;
        let mut found: c_int = 0;
        // SAFETY: valid C string; `found` outlives the call.
        check(unsafe { volt_dist_store_check(self.raw, k.as_ptr(), timeout.as_millis() as i64, &mut found) })
            .map_err(dist_err)?;
        Ok(found != 0)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `raw` came from volt_dist_new and is freed once.
        unsafe { volt_dist_free(self.raw) }
    }
}
