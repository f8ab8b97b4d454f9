//! The benchmark's HTTP origin: a tiny, fast HTTP/1.1 server with no dependencies.
//!
//! Built by `bench/funnel/run.sh` with `rustc -O` (a few seconds; it is not part of the
//! workspace). It answers every request with `200 ok` (two body bytes), keeps connections
//! alive unless the client says `Connection: close`, and reads and discards request bodies
//! (`Content-Length` or chunked). A fixed pool of threads each accept and serve one
//! connection at a time, so no thread is spawned per connection (the edge opens one
//! upstream connection per request).
//!
//! Usage: `origin ADDRESS [THREADS]`, e.g. `origin 127.0.0.1:18080 256`. It prints
//! `listening` on stdout once bound and serves until it is killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";

fn main() {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:18080".to_string());
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(256);
    let listener = match TcpListener::bind(&address) {
        Ok(listener) => Arc::new(listener),
        Err(error) => {
            eprintln!("origin: cannot listen on {address}: {error}");
            std::process::exit(1);
        }
    };
    for _ in 0..threads {
        let listener = Arc::clone(&listener);
        std::thread::spawn(move || loop {
            if let Ok((stream, _)) = listener.accept() {
                let _ = stream.set_nodelay(true);
                let _ = serve(stream);
            }
        });
    }
    println!("listening");
    loop {
        std::thread::park();
    }
}

/// Serves requests on one connection until the peer closes it or asks to.
fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut line = String::new();
    loop {
        // Request line; EOF here is the normal end of a connection.
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        let mut content_length = 0u64;
        let mut chunked = false;
        let mut close = line.trim_end().ends_with("HTTP/1.0");
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        if chunked {
            discard_chunked(&mut reader, &mut line)?;
        } else {
            std::io::copy(
                &mut reader.by_ref().take(content_length),
                &mut std::io::sink(),
            )?;
        }
        writer.write_all(RESPONSE)?;
        if close {
            return Ok(());
        }
    }
}

/// Reads and drops a chunked body, trailers included.
fn discard_chunked(reader: &mut BufReader<TcpStream>, line: &mut String) -> std::io::Result<()> {
    loop {
        line.clear();
        reader.read_line(line)?;
        let size = line.trim_end().split(';').next().unwrap_or("0");
        let size = u64::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                if reader.read_line(line)? == 0 || line.trim_end().is_empty() {
                    return Ok(());
                }
            }
        }
        std::io::copy(&mut reader.by_ref().take(size), &mut std::io::sink())?;
        line.clear();
        reader.read_line(line)?; // the CRLF after the chunk
    }
}
