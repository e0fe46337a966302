#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sideload_fuzz::device_answers(data));
