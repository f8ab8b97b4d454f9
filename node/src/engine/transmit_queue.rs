//! The engine's outgoing datagrams, back to back in one buffer.
//!
//! Every datagram the engine produces is written (encrypted, for data) straight into the end
//! of one growing buffer, and described by its destination and length. A caller that sends
//! one datagram at a time takes them with [`TransmitQueue::pop`]; a caller with UDP
//! segmentation offload takes a run of them with [`TransmitQueue::pop_run`]: consecutive
//! datagrams to one destination, all of one size but a shorter last one, which already lie
//! next to each other and leave as one `sendmsg` without being copied together. Both split
//! the bytes off the buffer without copying them.
//!
//! Before, each sealed datagram was copied out of a scratch buffer into its own allocation,
//! and each run copied again into one more; on a bulk transfer those two copies and
//! allocations per packet were about 6 % of the sending thread's time (see
//! docs/benchmarks.md, run 15).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::{PathId, Transmit};

/// Most bytes one run may carry (the kernel's limit for a UDP GSO super-datagram).
pub const MAX_RUN_BYTES: usize = 65_000;

/// Capacity the buffer starts with and asks for when it must grow: room for a full run.
const BUFFER_CHUNK: usize = 128 << 10;

/// Datagrams waiting to be sent, in order; see the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct TransmitQueue {
    /// The datagrams' bytes, back to back, oldest first.
    bytes: BytesMut,
    /// Each datagram's destination and length, in the same order.
    datagrams: VecDeque<(PathId, usize)>,
}

/// Space at the end of the queue for one datagram that is being written; see
/// [`TransmitQueue::reserve`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reservation {
    start: usize,
}

impl TransmitQueue {
    /// Queues a copy of `datagram` for `dst` (handshakes, cookies, keepalives: the rare
    /// datagrams that are not written in place).
    pub(crate) fn push_copy(&mut self, dst: PathId, datagram: &[u8]) {
        self.make_room(datagram.len());
        self.bytes.extend_from_slice(datagram);
        self.datagrams.push_back((dst, datagram.len()));
    }

    /// Makes `len` zeroed bytes at the end of the queue for a datagram to be written into,
    /// and returns them with the reservation to [`Self::commit`] or [`Self::abandon`].
    pub(crate) fn reserve(&mut self, len: usize) -> (Reservation, &mut [u8]) {
        self.make_room(len);
        let start = self.bytes.len();
        self.bytes.resize(start + len, 0);
        let space = self.bytes.get_mut(start..).unwrap_or_default();
        (Reservation { start }, space)
    }

    /// Queues the first `len` bytes of the reserved space as a datagram for `dst`.
    pub(crate) fn commit(&mut self, reservation: Reservation, dst: PathId, len: usize) {
        let room = self.bytes.len().saturating_sub(reservation.start);
        let end = reservation.start + len.min(room);
        self.bytes.truncate(end);
        self.datagrams.push_back((dst, end - reservation.start));
    }

    /// Gives the reserved space back: nothing is queued.
    pub(crate) fn abandon(&mut self, reservation: Reservation) {
        self.bytes.truncate(reservation.start);
    }

    /// Takes the oldest datagram.
    pub(crate) fn pop(&mut self) -> Option<Transmit> {
        let (dst, len) = self.datagrams.pop_front()?;
        let payload = self.bytes.split_to(len).freeze();
        Some(Transmit { dst, payload })
    }

    /// Takes the oldest datagram and those after it that can leave with it in one
    /// segmented send: the same destination, the same size (a shorter one ends the run),
    /// at most `max_segments` of them and [`MAX_RUN_BYTES`] in all.
    pub(crate) fn pop_run(&mut self, max_segments: usize) -> Option<TransmitRun> {
        let &(dst, size) = self.datagrams.front()?;
        let max_segments = max_segments.max(1);
        let mut count = 1;
        let mut bytes = size;
        for &(next_dst, len) in self.datagrams.iter().skip(1) {
            if count >= max_segments
                || next_dst != dst
                || len > size
                || len == 0
                || bytes + len > MAX_RUN_BYTES
            {
                break;
            }
            count += 1;
            bytes += len;
            if len < size {
                break; // a shorter datagram ends the run
            }
        }
        self.datagrams.drain(..count);
        let contents = self.bytes.split_to(bytes).freeze();
        Some(TransmitRun {
            dst,
            contents,
            segment_size: (count > 1).then_some(size),
            count,
        })
    }

    /// Before a datagram of `len` bytes is added: when the buffer is full, a new one is
    /// started (the datagrams already split off keep the old one alive until they are
    /// sent), so that adding never moves the queued bytes more than once.
    fn make_room(&mut self, len: usize) {
        if self.bytes.capacity() - self.bytes.len() < len {
            self.bytes.reserve(len.max(BUFFER_CHUNK));
        }
    }
}

/// Datagrams to one destination that lie back to back: one datagram, or several of
/// `segment_size` bytes (the last may be shorter), for one segmented send (UDP GSO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransmitRun {
    /// Where all of them go.
    pub dst: PathId,
    /// The datagrams, concatenated.
    pub contents: Bytes,
    /// `Some(size)` when `contents` holds more than one datagram.
    pub segment_size: Option<usize>,
    /// How many datagrams.
    pub count: usize,
}

impl TransmitRun {
    /// The datagrams one by one (each shares `contents`' memory).
    pub fn segments(&self) -> impl Iterator<Item = Bytes> + '_ {
        let size = self.segment_size.unwrap_or(self.contents.len()).max(1);
        (0..self.contents.len()).step_by(size).map(move |start| {
            self.contents
                .slice(start..(start + size).min(self.contents.len()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dst(port: u16) -> PathId {
        PathId::Direct(([127, 0, 0, 1], port).into())
    }

    fn queue(datagrams: &[(u16, usize)]) -> TransmitQueue {
        let mut queue = TransmitQueue::default();
        for &(port, len) in datagrams {
            queue.push_copy(dst(port), &vec![port as u8; len]);
        }
        queue
    }

    #[test]
    fn runs_split_on_destination_size_and_limit() {
        let datagrams = [
            (1, 100),
            (1, 100),
            (1, 60), // shorter: ends the run
            (1, 100),
            (2, 100), // new destination
            (2, 100),
            (2, 100),
            (2, 120), // longer: new run
        ];
        let mut q = queue(&datagrams);
        let shape: Vec<(usize, Option<usize>)> = std::iter::from_fn(|| q.pop_run(2))
            .map(|r| (r.count, r.segment_size))
            .collect();
        assert_eq!(
            shape,
            vec![
                (2, Some(100)),
                (1, None),
                (1, None),
                (2, Some(100)),
                (1, None),
                (1, None)
            ]
        );
        assert!(q.pop().is_none());

        let mut q = queue(&datagrams);
        let runs: Vec<TransmitRun> = std::iter::from_fn(|| q.pop_run(64)).collect();
        let counts: Vec<usize> = runs.iter().map(|r| r.count).collect();
        assert_eq!(counts, vec![3, 1, 3, 1]);
        let sizes: Vec<usize> = runs[0].segments().map(|s| s.len()).collect();
        assert_eq!(sizes, vec![100, 100, 60]);
        // Each segment is its own datagram's bytes, in order.
        assert!(runs[2].segments().all(|s| s.iter().all(|&b| b == 2)));
        assert_eq!(runs[3].contents, Bytes::from(vec![2u8; 120]));
    }

    #[test]
    fn a_run_stops_at_the_gso_byte_limit() {
        let mut q = queue(&[(1, 1_400); 60]);
        let run = q.pop_run(64).unwrap();
        assert_eq!(run.count, MAX_RUN_BYTES / 1_400);
        assert_eq!(run.contents.len(), run.count * 1_400);
        let rest: usize = std::iter::from_fn(|| q.pop_run(64)).map(|r| r.count).sum();
        assert_eq!(run.count + rest, 60);
    }

    #[test]
    fn written_in_place_committed_or_abandoned() {
        let mut q = TransmitQueue::default();
        let (kept, space) = q.reserve(200);
        assert!(space.iter().all(|&b| b == 0));
        space[..3].copy_from_slice(b"abc");
        q.commit(kept, dst(1), 3);
        let (dropped, space) = q.reserve(200);
        space[0] = 0xff;
        q.abandon(dropped);
        q.push_copy(dst(1), b"def");
        let (kept, space) = q.reserve(10);
        space[..2].copy_from_slice(b"gh");
        q.commit(kept, dst(2), 2);

        let first = q.pop().unwrap();
        assert_eq!((first.dst, &first.payload[..]), (dst(1), &b"abc"[..]));
        let run = q.pop_run(64).unwrap();
        assert_eq!((run.count, &run.contents[..]), (1, &b"def"[..]));
        let last = q.pop().unwrap();
        assert_eq!((last.dst, &last.payload[..]), (dst(2), &b"gh"[..]));
        assert!(q.pop().is_none() && q.pop_run(64).is_none());
    }

    #[test]
    fn datagrams_survive_the_buffer_growing_under_them() {
        let mut q = TransmitQueue::default();
        let mut taken = Vec::new();
        for i in 0..400u16 {
            q.push_copy(dst(1), &[i as u8; 1_000]);
            if i % 7 == 0 {
                taken.push(q.pop().unwrap());
            }
        }
        taken.extend(std::iter::from_fn(|| q.pop()));
        assert_eq!(taken.len(), 400);
        for (i, t) in taken.iter().enumerate() {
            assert_eq!(t.payload, Bytes::from(vec![i as u8; 1_000]), "datagram {i}");
        }
    }
}
