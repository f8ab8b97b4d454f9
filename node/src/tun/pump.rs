//! The two tasks between the TUN device and the engine's packet channels.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tun_rs::{AsyncDevice, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// Largest packet one device read returns (a TSO super-packet, or one plain packet).
const MAX_READ: usize = 65_535;
/// Most packets handed to the engine in one batch.
const MAX_OUT_BATCH: usize = 2 * IDEAL_BATCH_SIZE;
/// Most packets written to the device in one `send_multiple` (one GRO pass).
const MAX_IN_BATCH: usize = IDEAL_BATCH_SIZE;
/// Room at the front of each write buffer for the virtio header, and room behind for GRO to
/// coalesce a flow's segments into it without reallocating.
const WRITE_BUFFER: usize = VIRTIO_NET_HDR_LEN * 2 + MAX_READ;

/// Reads packets from the device and hands them to the engine in batches, until the
/// engine's channel closes, the device fails or `cancel` fires.
pub(super) async fn device_to_engine(
    device: Arc<AsyncDevice>,
    outbound: mpsc::Sender<Vec<Bytes>>,
    mtu: usize,
    cancel: CancellationToken,
) {
    let mut raw = vec![0u8; VIRTIO_NET_HDR_LEN + MAX_READ];
    // Without offload a read lands whole in bufs[0]; with offload the segments of one
    // super-packet are each at most an MTU.
    let mut bufs: Vec<Vec<u8>> = (0..IDEAL_BATCH_SIZE)
        .map(|i| vec![0u8; if i == 0 { MAX_READ } else { mtu.max(1280) }])
        .collect();
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    loop {
        let read = tokio::select! {
            () = cancel.cancelled() => return,
            read = device.recv_multiple(&mut raw, &mut bufs, &mut sizes, 0) => read,
        };
        let mut batch = Vec::new();
        match read {
            Ok(count) => collect(&bufs, &sizes, count, &mut batch),
            Err(e) if is_fatal(&e) => {
                tracing::warn!(error = %e, "reading the TUN device failed; stopping");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "dropped a packet the TUN device handed over");
                continue;
            }
        }
        // Take what else is already queued, without waiting, so the engine gets big batches.
        while batch.len() + IDEAL_BATCH_SIZE <= MAX_OUT_BATCH {
            match device.try_recv_multiple(&mut raw, &mut bufs, &mut sizes, 0) {
                Ok(count) => collect(&bufs, &sizes, count, &mut batch),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if is_fatal(&e) => {
                    tracing::warn!(error = %e, "reading the TUN device failed; stopping");
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "dropped a packet the TUN device handed over");
                    break;
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            sent = outbound.send(batch) => if sent.is_err() { return },
        }
    }
}

/// Writes the engine's decrypted packets to the device, coalescing TCP and UDP flows where
/// offload allows, until the engine's channel closes, the device fails or `cancel` fires.
pub(super) async fn engine_to_device(
    device: Arc<AsyncDevice>,
    mut inbound: mpsc::Receiver<Vec<Bytes>>,
    cancel: CancellationToken,
) {
    let mut gro = GROTable::new();
    // Reused write buffers: packet at VIRTIO_NET_HDR_LEN, header room in front.
    let mut bufs: Vec<BytesMut> = Vec::with_capacity(MAX_IN_BATCH);
    let mut pending: Vec<Bytes> = Vec::new();
    loop {
        if pending.is_empty() {
            let batch = tokio::select! {
                () = cancel.cancelled() => return,
                batch = inbound.recv() => batch,
            };
            let Some(batch) = batch else { return };
            pending = batch;
            while pending.len() < MAX_IN_BATCH {
                let Ok(more) = inbound.try_recv() else { break };
                pending.extend(more);
            }
        }
        let take = pending.len().min(MAX_IN_BATCH);
        let mut used = 0;
        for packet in pending.drain(..take).filter(|p| !p.is_empty()) {
            if bufs.len() <= used {
                bufs.push(BytesMut::with_capacity(WRITE_BUFFER));
            }
            if let Some(buf) = bufs.get_mut(used) {
                buf.clear();
                buf.resize(VIRTIO_NET_HDR_LEN, 0);
                buf.extend_from_slice(&packet);
                used += 1;
            }
        }
        let Some(batch) = bufs.get_mut(..used) else {
            continue;
        };
        if batch.is_empty() {
            continue;
        }
        let written = tokio::select! {
            () = cancel.cancelled() => return,
            written = device.send_multiple(&mut gro, batch, VIRTIO_NET_HDR_LEN) => written,
        };
        if let Err(e) = written {
            if is_fatal(&e) {
                tracing::warn!(error = %e, "writing to the TUN device failed; stopping");
                return;
            }
            // One bad packet (or a coalescing the kernel refused) loses this batch only.
            tracing::debug!(error = %e, packets = used, "TUN write failed");
        }
    }
}

/// Appends the first `count` packets of `bufs` to `batch`, copied into one shared
/// allocation (the segments of a super-packet are freed together, after encryption).
fn collect(bufs: &[Vec<u8>], sizes: &[usize], count: usize, batch: &mut Vec<Bytes>) {
    let packets = || {
        bufs.iter()
            .zip(sizes)
            .take(count)
            .filter_map(|(buf, &size)| buf.get(..size))
            .filter(|p| !p.is_empty())
    };
    let mut block = BytesMut::with_capacity(packets().map(<[u8]>::len).sum());
    for packet in packets() {
        block.extend_from_slice(packet);
        batch.push(block.split().freeze());
    }
}

/// Errors after which the device is gone (closed, or the interface deleted).
fn is_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::EBADFD | libc::ENODEV)
    )
}
