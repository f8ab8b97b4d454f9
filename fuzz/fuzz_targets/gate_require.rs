//! Fuzzes the `require` expression of a funnel (TOML value → gate chain): nothing may
//! panic, whatever the nesting.
//!
//! From the repository root: `cargo +nightly fuzz run gate_require -- -max_total_time=30`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use postern_ingress::config::parse_require;
use postern_ingress::gate::{GateChain, PassThroughGate};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(table) = toml::from_str::<toml::Table>(&format!("require = {text}")) else {
        return;
    };
    let Some(expression) = table.get("require") else {
        return;
    };
    let named: Vec<(String, GateChain)> = ["a", "b", "github"]
        .iter()
        .map(|name| (name.to_string(), GateChain::gate(PassThroughGate)))
        .collect();
    let mut used = vec![false; named.len()];
    let _ = parse_require(expression, &named, &mut used);
});
