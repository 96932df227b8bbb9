//! The corpus reader: any bytes give lines or an error naming the line, never a panic, and the lines
//! are as many as the newlines (plus one without a final newline).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nmt::data::corpus::parse_lines;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(lines) = parse_lines(data, Path::new("fuzz.txt")) {
        let newlines = data.iter().filter(|&&b| b == b'\n').count();
        assert!(lines.len() == newlines || lines.len() == newlines + 1);
        assert!(lines.iter().all(|l| !l.contains('\n')));
    }
});
