//! A client socket that remembers when it has been drained, so tungstenite
//! does not pay a `recv` syscall just to learn `WouldBlock`.
//!
//! mio is edge-triggered: once a read returns fewer bytes than asked for,
//! the kernel buffer was empty at that moment, and any byte arriving later
//! raises a new readiness event (which calls [`Socket::readable`]). Until
//! then further reads can answer `WouldBlock` without asking the kernel.
//! With one message per wake-up (64 connections × 1 in flight) this halves
//! the worker's `recv` calls.

use std::io::{self, Read, Write};

use mio::net::TcpStream;

pub struct Socket {
    stream: TcpStream,
    drained: bool,
}

impl Socket {
    pub fn new(stream: TcpStream) -> Self {
        Socket {
            stream,
            drained: false,
        }
    }

    /// A readiness event: bytes (or EOF) may be waiting again.
    pub fn readable(&mut self) {
        self.drained = false;
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match self.stream.read(buf) {
            Ok(n) if n > 0 && n < buf.len() => {
                self.drained = true;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.drained = true;
                Err(e)
            }
            other => other,
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.stream.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
