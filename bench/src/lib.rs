//! What the benchmark binaries share. Here: the frame bytes the WebSocket
//! tools write and read by hand (no WebSocket library on their hot path):
//! masked client text frames, and the length of a server frame at the
//! start of a buffer. [`ceiling`]: `brokerceiling`, RabbitMQ alone in the
//! product's topology (a library, so its parts can be tested on their own).

pub mod ceiling;

/// (header length, payload length) of a complete unmasked server frame at
/// the start of `buf`, or `None` if it has not fully arrived.
pub fn frame_len(buf: &[u8]) -> Option<(usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (header, len) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
        127 if buf.len() >= 10 => (10, u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize),
        126 | 127 => return None,
        n => (2, n as usize),
    };
    (buf.len() >= header + len).then_some((header, len))
}

/// A complete masked client text frame.
pub fn masked_text_frame(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0x81];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}
