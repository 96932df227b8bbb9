//! The config parser and validator: any bytes give a config or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nmt::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = Config::from_json(text) {
            let _ = config.validate();
            let _ = config.model.validate();
        }
    }
});
