//! Any text as a `--config` file: read as flags and validated as the server does;
//! an error or a config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ringbeat::config::check_toml(text);
    }
});
