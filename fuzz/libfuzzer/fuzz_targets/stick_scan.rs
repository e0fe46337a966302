#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sideload_fuzz::stick_scan(data));
