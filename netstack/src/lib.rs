//! A userspace TCP/IP stack for Postern nodes.
//!
//! This crate wraps smoltcp behind an IP-packet seam: IP packets go in and come out, and
//! applications get async `TcpListener`, `TcpStream` and `UdpSocket` types that implement
//! tokio's traits. It is what lets a node accept and open connections on its tailnet
//! addresses without root and without a TUN device.
//!
//! It must never know about WireGuard, peers or policy: it sees only IP packets. It must
//! never busy-poll: the stack sleeps until a packet, an application call or its own timer
//! needs it.
