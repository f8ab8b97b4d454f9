//! Sender-side SACK scoreboard (Postern patch, see `PATCHES.md` at the crate root).
//!
//! Upstream smoltcp 0.14 generates SACK blocks as a receiver but ignores the ones it
//! receives as a sender. This module keeps what the peer has reported: the ranges of
//! sequence space above the cumulative ACK (SND.UNA) that have arrived. The socket uses it
//! during loss recovery (RFC 6675 in spirit) to retransmit only the holes, and to count the
//! data that has left the network ("pipe") rather than everything sent since SND.UNA.
//!
//! SACK information is advisory (RFC 2018: the receiver may renege), so nothing here ever
//! frees data from the transmit buffer: only the cumulative ACK does that. The scoreboard
//! is cleared on a retransmission timeout, which falls back to go-back-N.

use crate::wire::TcpSeqNumber;

/// Ranges kept. With one hole per lost segment, 8 covers the holes of a window with eight
/// losses; when more arrive, the lowest range is forgotten, which at worst causes one
/// needless retransmission.
const MAX_RANGES: usize = 8;

/// Disjoint, non-adjacent, ascending `[left, right)` ranges of SACKed sequence space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(super) struct Scoreboard {
    ranges: [(TcpSeqNumber, TcpSeqNumber); MAX_RANGES],
    len: usize,
}

impl Scoreboard {
    /// Forgets every range.
    pub(super) fn clear(&mut self) {
        self.len = 0;
    }

    /// True when no range is recorded.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records the SACK blocks of one incoming ACK. Blocks are untrusted input: each is
    /// clipped to `(una, snd_nxt]` (what we have sent and not had cumulatively
    /// acknowledged); empty, inverted or out-of-window blocks are ignored.
    pub(super) fn add_blocks(
        &mut self,
        una: TcpSeqNumber,
        snd_nxt: TcpSeqNumber,
        blocks: &[Option<(u32, u32)>],
    ) {
        for &(left, right) in blocks.iter().flatten() {
            let left = TcpSeqNumber(left as i32);
            let right = TcpSeqNumber(right as i32);
            // A block more than 2^31 away from SND.UNA compares the wrong way; the window
            // checks below reject it, as they reject any block outside what is in flight.
            if !(left < right) || right <= una || left >= snd_nxt {
                continue;
            }
            self.add(left.max(una), right.min(snd_nxt));
        }
    }

    /// Drops what the cumulative ACK `una` now covers.
    pub(super) fn prune(&mut self, una: TcpSeqNumber) {
        let mut kept = 0;
        for i in 0..self.len {
            let (left, right) = self.ranges[i];
            if right <= una {
                continue;
            }
            self.ranges[kept] = (left.max(una), right);
            kept += 1;
        }
        self.len = kept;
    }

    /// The highest SACKed sequence number (right edge of the top range), if any.
    pub(super) fn highest(&self) -> Option<TcpSeqNumber> {
        self.len.checked_sub(1).map(|top| self.ranges[top].1)
    }

    /// Bytes SACKed in total.
    pub(super) fn sacked_bytes(&self) -> usize {
        self.ranges[..self.len]
            .iter()
            .map(|&(left, right)| right - left)
            .sum()
    }

    /// Bytes SACKed inside `[from, to)`.
    pub(super) fn sacked_between(&self, from: TcpSeqNumber, to: TcpSeqNumber) -> usize {
        self.ranges[..self.len]
            .iter()
            .map(|&(left, right)| {
                let (left, right) = (left.max(from), right.min(to));
                if left < right { right - left } else { 0 }
            })
            .sum()
    }

    /// The first range inside `[from, limit)` that is not SACKed, as `(start, end)`.
    pub(super) fn next_hole(
        &self,
        from: TcpSeqNumber,
        limit: TcpSeqNumber,
    ) -> Option<(TcpSeqNumber, TcpSeqNumber)> {
        let mut cursor = from;
        for &(left, right) in &self.ranges[..self.len] {
            if cursor >= limit {
                return None;
            }
            if right <= cursor {
                continue;
            }
            if left > cursor {
                return Some((cursor, left.min(limit)));
            }
            cursor = right;
        }
        (cursor < limit).then_some((cursor, limit))
    }

    /// Adds `[left, right)` (non-empty), merging it with the ranges it touches.
    fn add(&mut self, mut left: TcpSeqNumber, mut right: TcpSeqNumber) {
        let mut merged = [(TcpSeqNumber::default(), TcpSeqNumber::default()); MAX_RANGES + 1];
        let mut n = 0;
        let mut placed = false;
        for i in 0..self.len {
            let (l, r) = self.ranges[i];
            if r < left {
                // Entirely below the new range.
                merged[n] = (l, r);
                n += 1;
            } else if l > right {
                // Entirely above: the new range goes first.
                if !placed {
                    merged[n] = (left, right);
                    n += 1;
                    placed = true;
                }
                merged[n] = (l, r);
                n += 1;
            } else {
                // Overlapping or adjacent: absorb it.
                left = left.min(l);
                right = right.max(r);
            }
        }
        if !placed {
            merged[n] = (left, right);
            n += 1;
        }
        // Too many ranges: forget the lowest (at worst it is retransmitted needlessly).
        let skip = n.saturating_sub(MAX_RANGES);
        self.len = n - skip;
        self.ranges[..self.len].copy_from_slice(&merged[skip..n]);
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn seq(n: i32) -> TcpSeqNumber {
        TcpSeqNumber(n)
    }

    fn board(blocks: &[(u32, u32)]) -> Scoreboard {
        let mut b = Scoreboard::default();
        for &block in blocks {
            b.add_blocks(seq(1000), seq(10_000), &[Some(block)]);
        }
        b
    }

    #[test]
    fn blocks_merge_and_stay_sorted() {
        let b = board(&[(5000, 6000), (2000, 3000), (3000, 4000), (5500, 7000)]);
        assert_eq!(
            &b.ranges[..b.len],
            &[(seq(2000), seq(4000)), (seq(5000), seq(7000))]
        );
        assert_eq!(b.sacked_bytes(), 4000);
        assert_eq!(b.highest(), Some(seq(7000)));
    }

    #[test]
    fn blocks_outside_the_flight_are_ignored_or_clipped() {
        let b = board(&[(500, 900), (9000, 12_000), (4000, 3000), (10_000, 10_100)]);
        assert_eq!(&b.ranges[..b.len], &[(seq(9000), seq(10_000))]);
        let b = board(&[(800, 1500)]);
        assert_eq!(&b.ranges[..b.len], &[(seq(1000), seq(1500))]);
    }

    #[test]
    fn holes_are_found_below_the_limit() {
        let b = board(&[(2000, 3000), (5000, 6000)]);
        assert_eq!(
            b.next_hole(seq(1000), seq(6000)),
            Some((seq(1000), seq(2000)))
        );
        assert_eq!(
            b.next_hole(seq(1500), seq(6000)),
            Some((seq(1500), seq(2000)))
        );
        assert_eq!(
            b.next_hole(seq(2000), seq(6000)),
            Some((seq(3000), seq(5000)))
        );
        assert_eq!(b.next_hole(seq(5000), seq(6000)), None);
        assert_eq!(
            b.next_hole(seq(1000), seq(1200)),
            Some((seq(1000), seq(1200)))
        );
        assert_eq!(Scoreboard::default().next_hole(seq(1000), seq(1000)), None);
        assert_eq!(
            Scoreboard::default().next_hole(seq(1000), seq(1500)),
            Some((seq(1000), seq(1500)))
        );
    }

    #[test]
    fn the_cumulative_ack_prunes() {
        let mut b = board(&[(2000, 3000), (5000, 6000)]);
        b.prune(seq(2500));
        assert_eq!(
            &b.ranges[..b.len],
            &[(seq(2500), seq(3000)), (seq(5000), seq(6000))]
        );
        assert_eq!(b.sacked_between(seq(2000), seq(5500)), 1000);
        b.prune(seq(6000));
        assert!(b.is_empty());
        assert_eq!(b.highest(), None);
    }

    #[test]
    fn a_full_board_forgets_its_lowest_range() {
        let blocks: Vec<(u32, u32)> = (0..10).map(|i| (2000 + i * 200, 2100 + i * 200)).collect();
        let b = board(&blocks);
        assert_eq!(b.len, MAX_RANGES);
        assert_eq!(b.ranges[0], (seq(2400), seq(2500)));
        assert_eq!(b.highest(), Some(seq(3900)));
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut b = Scoreboard::default();
        let una = seq(i32::MAX - 1000);
        b.add_blocks(
            una,
            una + 5000,
            &[Some(((una + 2000).0 as u32, (una + 3000).0 as u32))],
        );
        assert_eq!(b.sacked_bytes(), 1000);
        assert_eq!(b.next_hole(una, una + 3000), Some((una, una + 2000)));
    }
}
