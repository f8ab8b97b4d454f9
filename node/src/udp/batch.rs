//! Grouping datagrams for GSO: consecutive datagrams to one destination, all of one size
//! except a shorter last one, become one `sendmsg` with a segment size.

use bytes::{Bytes, BytesMut};

use crate::engine::{PathId, Transmit};

/// Most bytes one GSO send may carry (the kernel's limit for a UDP GSO super-datagram).
const GSO_MAX_BYTES: usize = 65_000;

/// One send: a single datagram, or several of `segment_size` bytes (the last may be
/// shorter) back to back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GsoRun {
    /// Where all of them go.
    pub dst: PathId,
    /// The datagrams, concatenated.
    pub contents: Bytes,
    /// `Some(size)` when `contents` holds more than one datagram.
    pub segment_size: Option<usize>,
    /// How many datagrams.
    pub count: usize,
}

impl GsoRun {
    /// The datagrams one by one.
    pub fn segments(&self) -> impl Iterator<Item = &[u8]> {
        let size = self.segment_size.unwrap_or(self.contents.len()).max(1);
        self.contents.chunks(size)
    }
}

/// Splits `transmits` (in order) into runs of at most `max_segments` datagrams each.
pub fn gso_runs(transmits: &[Transmit], max_segments: usize) -> Vec<GsoRun> {
    let max_segments = max_segments.max(1);
    let mut runs = Vec::new();
    let mut rest = transmits;
    while let Some((first, tail)) = rest.split_first() {
        let size = first.payload.len();
        let mut taken = 1;
        let mut bytes = size;
        for next in tail {
            let len = next.payload.len();
            if taken >= max_segments
                || next.dst != first.dst
                || len > size
                || len == 0
                || bytes + len > GSO_MAX_BYTES
            {
                break;
            }
            taken += 1;
            bytes += len;
            if len < size {
                break; // a shorter datagram ends the run
            }
        }
        let (run, tail) = rest.split_at(taken.min(rest.len()));
        let contents = if let [only] = run {
            only.payload.clone()
        } else {
            let mut joined = BytesMut::with_capacity(bytes);
            for t in run {
                joined.extend_from_slice(&t.payload);
            }
            joined.freeze()
        };
        runs.push(GsoRun {
            dst: first.dst,
            contents,
            segment_size: (run.len() > 1).then_some(size),
            count: run.len(),
        });
        rest = tail;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(port: u16, len: usize) -> Transmit {
        Transmit {
            dst: PathId::Direct(([127, 0, 0, 1], port).into()),
            payload: Bytes::from(vec![port as u8; len]),
        }
    }

    #[test]
    fn runs_split_on_destination_size_and_limit() {
        let ts = vec![
            t(1, 100),
            t(1, 100),
            t(1, 60), // shorter: ends the run
            t(1, 100),
            t(2, 100), // new destination
            t(2, 100),
            t(2, 100),
            t(2, 120), // longer: new run
        ];
        let runs = gso_runs(&ts, 2);
        let shape: Vec<(usize, Option<usize>)> =
            runs.iter().map(|r| (r.count, r.segment_size)).collect();
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
        let runs = gso_runs(&ts, 64);
        let shape: Vec<usize> = runs.iter().map(|r| r.count).collect();
        assert_eq!(shape, vec![3, 1, 3, 1]);
        assert_eq!(
            runs[0].segments().map(<[u8]>::len).collect::<Vec<_>>(),
            vec![100, 100, 60]
        );
        let total: usize = runs.iter().map(|r| r.count).sum();
        assert_eq!(total, ts.len());
    }
}
