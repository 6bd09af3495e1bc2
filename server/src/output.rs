//! A connection's output on its way to the kernel, and the turn's room
//! frames it points into.
//!
//! Issue 14 profiled the broadcast path: per recipient, tungstenite framed
//! the shared text again (header, then a copy of the payload into the
//! connection's buffer), and the shared `Bytes` was cloned and dropped
//! once per recipient (`shared_drop` alone took 16–18% of the server's
//! CPU in a 1,000-connection fan-out). Now a worker frames each room frame
//! once per loop turn into [`TurnFrames`] (one buffer, reused every turn:
//! no allocation per frame), and a member's [`Output`] records only where
//! that frame lies; the end-of-turn flush hands the kernel every queued
//! piece of a connection in one `writev`. Frames tungstenite writes itself
//! (acks, errors, pongs, closes) are copied into the same queue in order,
//! so nothing overtakes anything.
//!
//! A piece of the turn's buffer is only valid until the turn ends: what a
//! connection could not write by then (the peer is not reading) is copied
//! into the connection's own bytes ([`Output::keep_past_turn`]) before the
//! buffer is cleared.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

/// At most this many pieces go into one `writev` (the kernel's `IOV_MAX`
/// is 1,024; a turn rarely queues more than a few dozen per connection).
const PIECES_PER_WRITE: usize = 64;

/// The room frames of one loop turn, each framed once (an unmasked
/// server text frame: header and payload).
#[derive(Default)]
pub struct TurnFrames {
    bytes: Vec<u8>,
    /// Counts the turns: a span of an earlier turn is refused, never read
    /// as whatever the buffer holds now.
    turn: u32,
}

/// Where one frame lies in the turn's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSpan {
    start: u32,
    len: u32,
    turn: u32,
}

impl TurnFrames {
    /// Frames `text` as a final, unmasked text frame (RFC 6455 §5.2) and
    /// returns where it lies.
    pub fn push_text(&mut self, text: &str) -> FrameSpan {
        let start = self.bytes.len();
        let payload = text.len();
        self.bytes.push(0x81);
        match payload {
            n if n < 126 => self.bytes.push(n as u8),
            n if n <= usize::from(u16::MAX) => {
                self.bytes.push(126);
                self.bytes.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                self.bytes.push(127);
                self.bytes.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        self.bytes.extend_from_slice(text.as_bytes());
        FrameSpan {
            start: start as u32,
            len: (self.bytes.len() - start) as u32,
            turn: self.turn,
        }
    }

    /// The frame's bytes, if `span` is of this turn.
    fn get(&self, span: FrameSpan) -> Option<&[u8]> {
        (span.turn == self.turn)
            .then(|| {
                self.bytes
                    .get(span.start as usize..(span.start + span.len) as usize)
            })
            .flatten()
    }

    /// The turn is over: every span handed out is void.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.turn = self.turn.wrapping_add(1);
    }
}

/// One queued piece of output.
#[derive(Debug)]
enum Piece {
    /// Bytes of the connection's own (tungstenite's frames, or turn frames
    /// kept past their turn).
    Owned(Vec<u8>),
    /// A frame in this turn's [`TurnFrames`].
    Turn(FrameSpan),
}

impl Piece {
    fn len(&self) -> usize {
        match self {
            Piece::Owned(bytes) => bytes.len(),
            Piece::Turn(span) => span.len as usize,
        }
    }

    /// `None`: a frame of an earlier turn (a bug: the worker must keep
    /// every connection's output past its turn).
    fn bytes<'a>(&'a self, turn: &'a TurnFrames) -> Option<&'a [u8]> {
        match self {
            Piece::Owned(bytes) => Some(bytes),
            Piece::Turn(span) => turn.get(*span),
        }
    }
}

/// What a connection has queued and not yet written, in order.
#[derive(Debug, Default)]
pub struct Output {
    pieces: VecDeque<Piece>,
    /// Bytes of the front piece already written.
    front_written: usize,
    /// Bytes queued and not yet written.
    queued: usize,
}

impl Output {
    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Queues a copy of `bytes` (a frame tungstenite wrote).
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.queued += bytes.len();
        // Acks of one turn land in one piece (one iovec).
        if let Some(Piece::Owned(last)) = self.pieces.back_mut() {
            // Also right for a partly written front piece: only its start
            // is out.
            last.extend_from_slice(bytes);
            return;
        }
        self.pieces.push_back(Piece::Owned(bytes.to_vec()));
    }

    /// Queues a frame of this turn.
    pub fn push_frame(&mut self, span: FrameSpan) {
        self.queued += span.len as usize;
        self.pieces.push_back(Piece::Turn(span));
    }

    /// Writes as much as the kernel takes. `Ok(true)`: everything is out;
    /// `Ok(false)`: the socket is full (the rest stays queued).
    pub fn write_to(&mut self, sink: &mut impl Write, turn: &TurnFrames) -> io::Result<bool> {
        while !self.pieces.is_empty() {
            let written = {
                let mut slices = [IoSlice::new(&[]); PIECES_PER_WRITE];
                let mut count = 0;
                for (i, piece) in self.pieces.iter().take(PIECES_PER_WRITE).enumerate() {
                    let Some(bytes) = piece.bytes(turn) else {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "a room frame outlived its loop turn",
                        ));
                    };
                    slices[i] = IoSlice::new(if i == 0 {
                        &bytes[self.front_written..]
                    } else {
                        bytes
                    });
                    count += 1;
                }
                match sink.write_vectored(&slices[..count]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            self.advance(written);
        }
        Ok(true)
    }

    /// Drops `written` bytes from the front.
    fn advance(&mut self, mut written: usize) {
        self.queued -= written;
        while written > 0 {
            let Some(front) = self.pieces.front() else {
                break;
            };
            let left = front.len() - self.front_written;
            if written < left {
                self.front_written += written;
                return;
            }
            written -= left;
            self.pieces.pop_front();
            self.front_written = 0;
        }
    }

    /// The turn ends with output still queued: copies the turn's frames it
    /// points at into bytes of its own, appended to the piece before them
    /// where that is its own already. Only this turn's frames are copied,
    /// so a reader that stays blocked for many turns costs each byte one
    /// copy, not one per turn. `false` if a piece was already void (a bug;
    /// the output is then broken and the connection must end).
    pub fn keep_past_turn(&mut self, turn: &TurnFrames) -> bool {
        if !self.pieces.iter().any(|p| matches!(p, Piece::Turn(_))) {
            return true;
        }
        let mut kept: VecDeque<Piece> = VecDeque::with_capacity(2);
        for piece in self.pieces.drain(..) {
            // A partly written front piece keeps its offset: appending to
            // it leaves its start where it was.
            match (piece, kept.back_mut()) {
                (Piece::Owned(bytes), Some(Piece::Owned(last))) => last.extend_from_slice(&bytes),
                (Piece::Owned(bytes), _) => kept.push_back(Piece::Owned(bytes)),
                (Piece::Turn(span), last) => {
                    let Some(bytes) = turn.get(span) else {
                        return false;
                    };
                    match last {
                        Some(Piece::Owned(last)) => last.extend_from_slice(bytes),
                        _ => kept.push_back(Piece::Owned(bytes.to_vec())),
                    }
                }
            }
        }
        self.pieces = kept;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes at most `room` bytes per call, then blocks.
    struct Trickle {
        taken: Vec<u8>,
        per_call: usize,
        calls_left: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.calls_left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls_left -= 1;
            let mut n = 0;
            for buf in bufs {
                let take = (self.per_call - n).min(buf.len());
                self.taken.extend_from_slice(&buf[..take]);
                n += take;
                if n == self.per_call {
                    break;
                }
            }
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn frames_are_framed_like_tungstenite_frames_them() {
        let mut turn = TurnFrames::default();
        for len in [0, 1, 125, 126, 65_535, 65_536, 70_000] {
            let text = "x".repeat(len);
            let span = turn.push_text(&text);
            let mut ours = turn.get(span).unwrap().to_vec();
            let mut theirs = Vec::new();
            tungstenite::protocol::frame::Frame::message(
                text.clone(),
                tungstenite::protocol::frame::coding::OpCode::Data(
                    tungstenite::protocol::frame::coding::Data::Text,
                ),
                true,
            )
            .format(&mut theirs)
            .unwrap();
            assert_eq!(ours.len(), theirs.len(), "length {len}");
            assert_eq!(ours, theirs, "length {len}");
            ours.clear();
        }
    }

    #[test]
    fn pieces_come_out_in_order_across_partial_writes_and_the_turn_end() {
        let mut turn = TurnFrames::default();
        let mut out = Output::default();
        out.push_bytes(b"ack-1;");
        out.push_bytes(b"ack-2;");
        let a = turn.push_text("room frame A");
        let b = turn.push_text("room frame B");
        out.push_frame(a);
        out.push_bytes(b"error;");
        out.push_frame(b);
        let expected: Vec<u8> = [
            &b"ack-1;ack-2;"[..],
            turn.get(a).unwrap(),
            b"error;",
            turn.get(b).unwrap(),
        ]
        .concat();
        assert_eq!(out.queued(), expected.len());
        // Seven bytes a call, three calls: a partial piece at the front.
        let mut sink = Trickle {
            taken: Vec::new(),
            per_call: 7,
            calls_left: 3,
        };
        assert!(!out.write_to(&mut sink, &turn).unwrap());
        assert_eq!(sink.taken, expected[..21]);
        assert_eq!(out.queued(), expected.len() - 21);
        // The turn ends: what is left no longer needs the turn's buffer.
        assert!(out.keep_past_turn(&turn));
        turn.clear();
        let c = turn.push_text("next turn");
        out.push_frame(c);
        sink.calls_left = usize::MAX;
        assert!(out.write_to(&mut sink, &turn).unwrap());
        assert_eq!(sink.taken, [&expected[..], turn.get(c).unwrap()].concat());
        assert_eq!(out.queued(), 0);
    }

    #[test]
    fn a_reader_blocked_for_many_turns_keeps_one_piece_in_order() {
        let mut turn = TurnFrames::default();
        let mut out = Output::default();
        let mut expected = Vec::new();
        for i in 0..50 {
            let text = format!("frame {i}");
            let span = turn.push_text(&text);
            expected.extend_from_slice(turn.get(span).unwrap());
            out.push_frame(span);
            out.push_bytes(b"ack;");
            expected.extend_from_slice(b"ack;");
            assert!(out.keep_past_turn(&turn));
            turn.clear();
            assert_eq!(out.pieces.len(), 1, "turn {i}");
        }
        assert_eq!(out.queued(), expected.len());
        let mut sink = Trickle {
            taken: Vec::new(),
            per_call: usize::MAX,
            calls_left: usize::MAX,
        };
        assert!(out.write_to(&mut sink, &turn).unwrap());
        assert_eq!(sink.taken, expected);
    }

    #[test]
    fn a_frame_of_an_earlier_turn_is_refused_not_read() {
        let mut turn = TurnFrames::default();
        let mut out = Output::default();
        out.push_frame(turn.push_text("old"));
        turn.clear();
        // The buffer now holds another frame where the old one was.
        let _ = turn.push_text("new");
        let mut sink = Trickle {
            taken: Vec::new(),
            per_call: usize::MAX,
            calls_left: usize::MAX,
        };
        let error = out.write_to(&mut sink, &turn).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(sink.taken.is_empty());
        assert!(!out.keep_past_turn(&turn));
    }

    #[test]
    fn a_long_queue_takes_several_writes_of_at_most_the_iovec_limit() {
        let mut turn = TurnFrames::default();
        let mut out = Output::default();
        let span = turn.push_text("f");
        for _ in 0..(PIECES_PER_WRITE * 3 + 5) {
            out.push_frame(span);
        }
        let mut sink = Trickle {
            taken: Vec::new(),
            per_call: usize::MAX,
            calls_left: usize::MAX,
        };
        assert!(out.write_to(&mut sink, &turn).unwrap());
        assert_eq!(sink.taken.len(), (PIECES_PER_WRITE * 3 + 5) * 3);
        assert_eq!(sink.calls_left, usize::MAX - 4);
    }
}
