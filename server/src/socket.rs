//! The client socket under an open WebSocket: it skips `recv` calls known to
//! block, meters the frames that pass through it, and bounds how much one
//! connection may read in one loop turn.
//!
//! - **Drained.** mio is edge-triggered: once a read returns fewer bytes
//!   than asked for, the kernel buffer was empty at that moment, and any
//!   byte arriving later raises a new readiness event (which calls
//!   [`Socket::readable`]). Until then reads answer `WouldBlock` without
//!   asking the kernel. With one message per wake-up (64 connections × 1 in
//!   flight) this halves the worker's `recv` calls.
//! - **Metered.** tungstenite's `read` loops over the fragments of a message
//!   internally and returns only whole messages, so the worker cannot count
//!   fragments, and a message of empty continuation frames never reaches
//!   the size limit. The [`FrameMeter`] follows frame boundaries in the
//!   bytes read (headers only, a few instructions per frame) and refuses a
//!   message of more than `max_fragments` frames.
//! - **Budgeted.** Each turn ([`Socket::start_turn`]) may read at most
//!   [`TURN_FRAMES`] frames and [`TURN_BYTES`] bytes; past that, reads say
//!   `WouldBlock` and [`Socket::budget_spent`] tells the worker to come back
//!   next turn, so one flooding client cannot hold its worker.
//! - **Queued.** What tungstenite writes goes into the connection's
//!   [`Output`] queue, never straight to the kernel, so the turn's room
//!   frames ([`crate::output`]) can queue behind it in order; the worker's
//!   end-of-turn flush writes the whole queue ([`Socket::write_queued`]).
//! - **Heard.** Any byte read marks the peer as heard from (a flag, no
//!   clock read); the worker's sweep takes the mark
//!   ([`Socket::take_heard`]) to know the peer is alive without a timer
//!   or a timestamp per read.

use std::io::{self, Read, Write};
use std::time::Instant;

use mio::net::TcpStream;

use crate::output::{FrameSpan, Output, TurnFrames};

/// Frames one connection may read per loop turn. A read returns up to a
/// read buffer (2 KiB) of frames at once, so a turn ends at most one
/// buffer's worth past this (≈ 340 empty frames).
pub const TURN_FRAMES: u32 = 256;
/// Bytes one connection may read per loop turn: 256 pipelined messages of
/// ~1 KiB, far more than any real client sends between two turns.
pub const TURN_BYTES: usize = 256 * 1024;

/// Why the meter refused the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// One message arrived in more frames than allowed.
    TooManyFragments,
}

/// Follows WebSocket frame boundaries (RFC 6455 §5.2) in a client's byte
/// stream without touching payloads.
#[derive(Debug)]
pub struct FrameMeter {
    max_fragments: u32,
    /// Header bytes of the frame being read, and how many are here.
    header: [u8; 14],
    header_len: usize,
    /// Payload bytes of the current frame still to come (after its header).
    payload_left: u64,
    /// Frames of the data message in progress (0: none in progress).
    fragments: u32,
    /// Whether the frame being read ends its data message.
    ends_message: bool,
    /// When the input stopped being at a message boundary.
    incomplete_since: Option<Instant>,
    /// Frame headers completed since the counter was last taken.
    frames: u32,
}

impl FrameMeter {
    pub fn new(max_fragments: u32) -> Self {
        FrameMeter {
            max_fragments,
            header: [0; 14],
            header_len: 0,
            payload_left: 0,
            fragments: 0,
            ends_message: false,
            incomplete_since: None,
            frames: 0,
        }
    }

    /// Follows `bytes`, the next bytes of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Violation> {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= n;
                bytes = &bytes[n as usize..];
                if self.payload_left == 0 {
                    self.frame_done();
                }
                continue;
            }
            // Header bytes.
            let need = self.header_needed();
            let take = (need - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes[..take]);
            self.header_len += take;
            bytes = &bytes[take..];
            if self.header_len == self.header_needed() {
                self.header_done()?;
            }
        }
        // The clock is read only when a read ends inside a message; whole
        // messages in one read (the common case) never pay for it.
        if self.at_boundary() {
            self.incomplete_since = None;
        } else if self.incomplete_since.is_none() {
            self.incomplete_since = Some(Instant::now());
        }
        Ok(())
    }

    /// How many header bytes the current frame has, as far as known.
    fn header_needed(&self) -> usize {
        if self.header_len < 2 {
            return 2;
        }
        let masked = self.header[1] & 0x80 != 0;
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + extended + if masked { 4 } else { 0 }
    }

    fn header_done(&mut self) -> Result<(), Violation> {
        let h = &self.header;
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0f;
        let len = match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => u64::from(n),
        };
        self.frames = self.frames.saturating_add(1);
        self.header_len = 0;
        self.payload_left = len;
        // Control frames (opcode ≥ 8) may sit between fragments and do not
        // count as fragments; tungstenite rejects bad opcodes itself.
        let is_data = opcode < 8;
        if is_data {
            self.fragments = self.fragments.saturating_add(1);
            if self.fragments > self.max_fragments {
                return Err(Violation::TooManyFragments);
            }
        }
        self.ends_message = is_data && fin;
        if len == 0 {
            self.frame_done();
        }
        Ok(())
    }

    fn frame_done(&mut self) {
        if self.ends_message {
            self.fragments = 0;
            self.ends_message = false;
        }
    }

    /// Between frames, with no fragmented message open.
    fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0 && self.fragments == 0
    }

    /// Since when a message has been arriving without completing, if one is.
    pub fn incomplete_since(&self) -> Option<Instant> {
        self.incomplete_since
    }

    /// Frame headers seen since the last call.
    pub fn take_frames(&mut self) -> u32 {
        std::mem::take(&mut self.frames)
    }
}

pub struct Socket {
    stream: TcpStream,
    drained: bool,
    meter: FrameMeter,
    /// What this turn has read so far.
    turn_frames: u32,
    turn_bytes: usize,
    budget_spent: bool,
    violation: Option<Violation>,
    /// Bytes arrived since the last [`Socket::take_heard`].
    heard: bool,
    /// Output not yet written, in order.
    output: Output,
    /// Past this much queued output the peer is a slow reader.
    max_queued: usize,
}

impl Socket {
    pub fn new(stream: TcpStream, max_fragments: u32, max_queued: usize) -> Self {
        Socket {
            stream,
            drained: false,
            meter: FrameMeter::new(max_fragments),
            turn_frames: 0,
            turn_bytes: 0,
            budget_spent: false,
            violation: None,
            heard: false,
            output: Output::default(),
            max_queued,
        }
    }

    /// More output is queued than the peer may leave unread.
    pub fn over_bound(&self) -> bool {
        self.output.queued() > self.max_queued
    }

    /// Queues one of the turn's room frames behind what is queued.
    pub fn queue_frame(&mut self, span: FrameSpan) {
        self.output.push_frame(span);
    }

    /// Writes the queue to the kernel: `Ok(true)` once all of it is out,
    /// `Ok(false)` if the socket filled first.
    pub fn write_queued(&mut self, turn: &TurnFrames) -> io::Result<bool> {
        self.output.write_to(&mut self.stream, turn)
    }

    /// The turn ends with output queued: keep it without the turn's
    /// frames (`false`: it was already broken).
    pub fn keep_past_turn(&mut self, turn: &TurnFrames) -> bool {
        self.output.keep_past_turn(turn)
    }

    /// A readiness event: bytes (or EOF) may be waiting again.
    pub fn readable(&mut self) {
        self.drained = false;
    }

    /// A new loop turn: the read budget is whole again.
    pub fn start_turn(&mut self) {
        self.turn_frames = 0;
        self.turn_bytes = 0;
        self.budget_spent = false;
    }

    /// The last `WouldBlock` came from the budget, not the kernel: there
    /// may be more to read next turn, and no readiness event will say so.
    pub fn budget_spent(&self) -> bool {
        self.budget_spent
    }

    /// Whether anything arrived since the last call.
    pub fn take_heard(&mut self) -> bool {
        std::mem::take(&mut self.heard)
    }

    /// Why the input was refused, if it was.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// Since when a message has been arriving without completing.
    pub fn incomplete_since(&self) -> Option<Instant> {
        self.meter.incomplete_since()
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(violation) = self.violation {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{violation:?}"),
            ));
        }
        if self.turn_frames >= TURN_FRAMES || self.turn_bytes >= TURN_BYTES {
            self.budget_spent = true;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self.drained {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = match self.stream.read(buf) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.drained = true;
                }
                return Err(e);
            }
        };
        if n > 0 && n < buf.len() {
            self.drained = true;
        }
        self.heard |= n > 0;
        if let Err(violation) = self.meter.feed(&buf[..n]) {
            // The connection ends: what was read is dropped with it.
            self.violation = Some(violation);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{violation:?}"),
            ));
        }
        self.turn_frames += self.meter.take_frames();
        self.turn_bytes += n;
        Ok(n)
    }
}

/// tungstenite's writes are queued, never refused: the bound on queued
/// output is the connection's (a slow reader), checked at the end-of-turn
/// flush once the kernel took what it would.
impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.push_bytes(buf);
        Ok(buf.len())
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut n = 0;
        for buf in bufs {
            self.output.push_bytes(buf);
            n += buf.len();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame with `payload`.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
        );
        out
    }

    #[test]
    fn whole_messages_count_frames_and_never_start_the_clock() {
        let mut meter = FrameMeter::new(4);
        let mut bytes = frame(true, 1, b"hello");
        bytes.extend(frame(true, 9, b"ping"));
        bytes.extend(frame(true, 1, &[b'x'; 300]));
        meter.feed(&bytes).unwrap();
        assert_eq!(meter.take_frames(), 3);
        assert_eq!(meter.incomplete_since(), None);
        assert_eq!(meter.take_frames(), 0);
    }

    #[test]
    fn a_frame_split_across_reads_is_followed_and_timed() {
        let mut meter = FrameMeter::new(4);
        let bytes = frame(true, 1, &[b'x'; 70_000]);
        for chunk in bytes.chunks(1000) {
            meter.feed(chunk).unwrap();
            if chunk.as_ptr_range().end != bytes.as_ptr_range().end {
                assert!(meter.incomplete_since().is_some());
            }
        }
        assert_eq!(meter.take_frames(), 1);
        assert_eq!(meter.incomplete_since(), None);
        // Byte by byte through a header with a 64-bit length.
        let bytes = frame(true, 2, &[0; 3]);
        for b in &bytes {
            meter.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(meter.take_frames(), 1);
        assert_eq!(meter.incomplete_since(), None);
    }

    #[test]
    fn fragments_past_the_limit_are_refused_but_control_frames_do_not_count() {
        let mut meter = FrameMeter::new(3);
        let mut bytes = frame(false, 1, b"a");
        bytes.extend(frame(true, 9, b""));
        bytes.extend(frame(false, 0, b"b"));
        bytes.extend(frame(true, 10, b""));
        bytes.extend(frame(true, 0, b"c"));
        meter.feed(&bytes).unwrap();
        assert_eq!(meter.incomplete_since(), None, "message complete");
        // A new message may again have three fragments, not four.
        meter.feed(&frame(false, 1, b"")).unwrap();
        assert!(meter.incomplete_since().is_some());
        meter.feed(&frame(false, 0, b"")).unwrap();
        meter.feed(&frame(false, 0, b"")).unwrap();
        assert_eq!(
            meter.feed(&frame(false, 0, b"")),
            Err(Violation::TooManyFragments)
        );
    }

    #[test]
    fn an_empty_continuation_flood_is_stopped_at_the_limit() {
        let mut meter = FrameMeter::new(128);
        let mut bytes = frame(false, 1, b"x");
        for _ in 0..20_000 {
            bytes.extend(frame(false, 0, b""));
        }
        let result = bytes.chunks(2048).try_for_each(|c| meter.feed(c));
        assert_eq!(result, Err(Violation::TooManyFragments));
    }
}
