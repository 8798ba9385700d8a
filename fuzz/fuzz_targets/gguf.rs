#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| volt_fuzz::gguf_file(data));
