//! Criterion benchmarks of the peer engine (filled in below).
fn main() {}
