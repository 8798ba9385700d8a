//! AOTInductor packages through volt's C++ shim (csrc/volt_aoti.cpp):
//! `AOTIModelPackageLoader` with one runner per worker thread.
use crate::ExportError;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn volt_aoti_free_error(message: *mut c_char);
    fn volt_aoti_torch_version() -> *const c_char;
    fn volt_aoti_load(
        path: *const c_char,
        model_name: *const c_char,
        num_runners: i64,
        device_index: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn volt_aoti_free(loader: *mut c_void);
    fn volt_aoti_run(
        loader: *mut c_void,
        inputs: *const *mut C_tensor,
        n: i64,
        outputs: *mut *mut *mut C_tensor,
        n_outputs: *mut i64,
    ) -> *mut c_char;
    fn volt_aoti_free_outputs(outputs: *mut *mut C_tensor);
}

/// The libtorch version this process runs (`2.11.0`).
pub fn torch_version() -> String {
    // SAFETY: the shim returns a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(volt_aoti_torch_version()) }.to_string_lossy().into_owned()
}

/// The shim's error message, freed.
fn take_error(message: *mut c_char) -> Option<String> {
    if message.is_null() {
        return None;
    }
    // SAFETY: a non-null result is a NUL-terminated string malloc'd by the shim.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
    unsafe { volt_aoti_free_error(message) };
    Some(text)
}

/// A loaded package: `runners` threads may run it at once.
pub struct AotiLoader {
    handle: *mut c_void,
}

// SAFETY: AOTIModelPackageLoader::run hands each call to a free runner of its container
// (it has one per worker thread, `num_runners`), under the container's own lock.
unsafe impl Send for AotiLoader {}
unsafe impl Sync for AotiLoader {}

impl AotiLoader {
    /// Loads `model_name` from the package at `path`, with `runners` runners, on the
    /// CUDA device `cuda` (or the CPU).
    pub fn load(
        path: &Path,
        model_name: &str,
        runners: usize,
        cuda: Option<usize>,
    ) -> Result<Self, ExportError> {
        let c_path = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| ExportError::Package(format!("{}: the path has a NUL byte", path.display())))?;
        let c_name =
            CString::new(model_name).map_err(|_| ExportError::Package("model name has a NUL byte".into()))?;
        let mut handle = std::ptr::null_mut();
        let device = cuda.map_or(-1, |n| n as i64);
        // SAFETY: valid C strings; `handle` receives the loader on success.
        let err = unsafe {
            volt_aoti_load(c_path.as_ptr(), c_name.as_ptr(), runners.max(1) as i64, device, &mut handle)
        };
        match take_error(err) {
            Some(e) => Err(ExportError::Package(format!(
                "{}: AOTInductor cannot load the package: {e}",
                path.display()
            ))),
            None => Ok(AotiLoader { handle }),
        }
    }

    /// Runs the model.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        let ptrs: Vec<*mut C_tensor> = inputs.iter().map(|t| t.as_ptr() as *mut C_tensor).collect();
        let mut outputs: *mut *mut C_tensor = std::ptr::null_mut();
        let mut n = 0i64;
        // SAFETY: `ptrs` point at live tensors for the call; on success the shim fills
        // `outputs` with `n` new tensors that we take over one by one.
        let err =
            unsafe { volt_aoti_run(self.handle, ptrs.as_ptr(), ptrs.len() as i64, &mut outputs, &mut n) };
        if let Some(e) = take_error(err) {
            return Err(e);
        }
        let taken = (0..n as usize)
            // SAFETY: each entry is a tensor the shim new'd for us.
            .map(|i| unsafe { Tensor::from_ptr(*outputs.add(i)) })
            .collect();
        // SAFETY: the array itself was malloc'd by the shim.
        unsafe { volt_aoti_free_outputs(outputs) };
        Ok(taken)
    }
}

impl Drop for AotiLoader {
    fn drop(&mut self) {
        // SAFETY: the handle came from volt_aoti_load and is freed once.
        unsafe { volt_aoti_free(self.handle) }
    }
}
