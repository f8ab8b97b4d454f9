//! Placeholder; the delay forwarder lands with the network lab.
fn main() {}
