//! Length-prefixed frames, shared by the control channel and the relay protocol.
//!
//! On the wire a frame is:
//!
//! ```text
//! +----------------------+-----------+------------------------+
//! | length: u32 (BE)     | type: u8  | payload (length-1 B)   |
//! +----------------------+-----------+------------------------+
//! ```
//!
//! `length` counts the type byte and the payload, so it is at least 1. A receiver refuses a
//! length above its maximum before buffering the payload, so a peer cannot make it allocate
//! more than `max_frame_len + 4` bytes per frame.
//!
//! [`FrameDecoder`] takes bytes as they arrive, in pieces of any size, and yields whole
//! frames. It never panics. After an error the stream is out of sync and unrecoverable: the
//! decoder keeps returning that error and the caller should close the connection.

/// Length of the big-endian length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Default largest frame (type byte plus payload) accepted or produced: 4 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// One frame: a type byte and its payload. What the type means depends on the protocol
/// (see [`crate::control`] and [`crate::relay`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame's type byte.
    pub frame_type: u8,
    /// The bytes after the type byte.
    pub payload: Vec<u8>,
}

/// Why bytes could not be framed or a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A length prefix announced more bytes than the receiver accepts.
    #[error(
        "frame of {len} bytes exceeds the limit of {max} bytes; the peer is misbehaving or speaks another protocol"
    )]
    TooLarge {
        /// The announced or attempted length (type byte plus payload).
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A length prefix of zero: every frame has at least a type byte.
    #[error("frame with length 0 has no type byte; the peer speaks another protocol")]
    Empty,
}

impl Frame {
    /// Builds a frame.
    pub fn new(frame_type: u8, payload: Vec<u8>) -> Self {
        Self {
            frame_type,
            payload,
        }
    }

    /// Appends this frame's wire form to `out`. Fails if the frame (type byte plus payload)
    /// is longer than `max_frame_len`; `out` is unchanged then.
    pub fn encode(&self, max_frame_len: usize, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let len = self.payload.len().saturating_add(1);
        let too_large = FrameError::TooLarge {
            len,
            max: max_frame_len,
        };
        if len > max_frame_len {
            return Err(too_large);
        }
        let prefix = u32::try_from(len).map_err(|_| too_large)?;
        out.reserve(LENGTH_PREFIX_LEN + len);
        out.extend_from_slice(&prefix.to_be_bytes());
        out.push(self.frame_type);
        out.extend_from_slice(&self.payload);
        Ok(())
    }

    /// This frame's wire form as a new vector; see [`Frame::encode`].
    pub fn to_bytes(&self, max_frame_len: usize) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        self.encode(max_frame_len, &mut out)?;
        Ok(out)
    }
}

/// Splits an incoming byte stream into [`Frame`]s.
///
/// Call [`FrameDecoder::push`] with every chunk read from the connection, then call
/// [`FrameDecoder::next_frame`] until it returns `Ok(None)` (more bytes needed).
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    /// Bytes of `buffer` before this index were already returned as frames.
    start: usize,
    max_frame_len: usize,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder accepting frames up to `max_frame_len` bytes (type byte plus payload).
    pub fn new(max_frame_len: usize) -> Self {
        Self {
            buffer: Vec::new(),
            start: 0,
            max_frame_len,
            failed: None,
        }
    }

    /// Appends bytes read from the connection. Never fails; errors surface from
    /// [`FrameDecoder::next_frame`].
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 && self.start >= self.buffer.len() / 2 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or an error if the stream
    /// is malformed (then every later call returns the same error; close the connection).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let pending = self.buffer.get(self.start..).unwrap_or_default();
        let Some(prefix) = pending.first_chunk::<LENGTH_PREFIX_LEN>() else {
            return Ok(None);
        };
        let announced = u32::from_be_bytes(*prefix);
        let len = usize::try_from(announced).unwrap_or(usize::MAX);
        if len == 0 {
            return Err(self.fail(FrameError::Empty));
        }
        if len > self.max_frame_len {
            return Err(self.fail(FrameError::TooLarge {
                len,
                max: self.max_frame_len,
            }));
        }
        let Some(body) = pending.get(LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN.saturating_add(len))
        else {
            return Ok(None);
        };
        let Some((&frame_type, payload)) = body.split_first() else {
            return Err(self.fail(FrameError::Empty));
        };
        let frame = Frame {
            frame_type,
            payload: payload.to_vec(),
        };
        self.start = self.start.saturating_add(LENGTH_PREFIX_LEN + len);
        if self.start >= self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
        Ok(Some(frame))
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len().saturating_sub(self.start)
    }

    fn fail(&mut self, err: FrameError) -> FrameError {
        self.failed = Some(err.clone());
        self.buffer = Vec::new();
        self.start = 0;
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_split_across_pushes() {
        let mut wire = Vec::new();
        Frame::new(1, b"hello".to_vec())
            .encode(64, &mut wire)
            .unwrap();
        Frame::new(2, vec![]).encode(64, &mut wire).unwrap();
        assert_eq!(&wire[..5], &[0, 0, 0, 6, 1]);
        let mut decoder = FrameDecoder::new(64);
        for byte in &wire[..7] {
            decoder.push(&[*byte]);
            assert_eq!(decoder.next_frame().unwrap(), None);
        }
        decoder.push(&wire[7..]);
        assert_eq!(
            decoder.next_frame().unwrap(),
            Some(Frame::new(1, b"hello".to_vec()))
        );
        assert_eq!(decoder.next_frame().unwrap(), Some(Frame::new(2, vec![])));
        assert_eq!(decoder.next_frame().unwrap(), None);
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn oversized_and_empty_frames_are_refused_with_clear_errors() {
        let mut decoder = FrameDecoder::new(16);
        decoder.push(&[0, 0, 1, 0]);
        let err = decoder.next_frame().unwrap_err();
        assert_eq!(
            err.to_string(),
            "frame of 256 bytes exceeds the limit of 16 bytes; the peer is misbehaving or speaks another protocol"
        );
        decoder.push(&[0, 0, 0, 1, 1]);
        assert_eq!(
            decoder.next_frame().unwrap_err(),
            err,
            "the decoder stays failed"
        );

        let mut decoder = FrameDecoder::new(16);
        decoder.push(&[0, 0, 0, 0]);
        assert_eq!(
            decoder.next_frame().unwrap_err().to_string(),
            "frame with length 0 has no type byte; the peer speaks another protocol"
        );

        let err = Frame::new(1, vec![0; 16]).to_bytes(16).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { len: 17, max: 16 });
    }

    proptest! {
        #[test]
        fn any_frames_round_trip_in_any_chunking(
            frames in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..8),
            chunk in 1usize..64,
        ) {
            let mut wire = Vec::new();
            for (t, p) in &frames {
                Frame::new(*t, p.clone()).encode(1024, &mut wire).unwrap();
            }
            let mut decoder = FrameDecoder::new(1024);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                decoder.push(piece);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    got.push((frame.frame_type, frame.payload));
                }
            }
            prop_assert_eq!(got, frames);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut decoder = FrameDecoder::new(128);
            decoder.push(&bytes);
            for _ in 0..bytes.len() + 1 {
                match decoder.next_frame() {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
