//! A stream wrapper that lets a WebSocket connection be handed off at a message boundary.
//!
//! tungstenite reads from its stream in large chunks: bytes of the next frame may already sit in
//! its private buffer when a message is returned, and they would be lost with the connection.
//! `FrameBoundary` reads from the socket into a buffer of its own but gives the WebSocket layer
//! bytes only up to the end of the current frame. So once the WebSocket layer has returned a
//! message and no frame is in progress ([`FrameBoundary::at_boundary`]), everything read but
//! not processed is in this wrapper's buffer ([`FrameBoundary::take_unread`]): the unread bytes
//! of the hand-off.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) struct FrameBoundary<S> {
    inner: S,
    /// Read from `inner`, not yet given to the WebSocket layer.
    buf: Vec<u8>,
    /// Bytes of the current frame (header included) not yet given; 0 between frames.
    frame_left: u64,
    /// A data frame without FIN was given: a fragmented message is in progress.
    in_message: bool,
    /// Before the WebSocket handshake is over: pass bytes through, no framing.
    raw: bool,
}

impl<S> FrameBoundary<S> {
    /// Wraps `inner`; `unread` (bytes handed over with it) comes first.
    pub(crate) fn new(inner: S, unread: Vec<u8>, raw: bool) -> Self {
        FrameBoundary {
            inner,
            buf: unread,
            frame_left: 0,
            in_message: false,
            raw,
        }
    }

    /// From now on, give whole frames only (call once the HTTP upgrade is done).
    pub(crate) fn frames(&mut self) {
        self.raw = false;
    }

    /// No frame is half given and no fragmented message is in progress.
    pub(crate) fn at_boundary(&self) -> bool {
        !self.raw && self.frame_left == 0 && !self.in_message
    }

    /// The stream.
    pub(crate) fn inner(&self) -> &S {
        &self.inner
    }

    /// The stream, mutably (to drain what a transport buffers itself).
    pub(crate) fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The bytes read from the stream that the WebSocket layer has not seen, taken out.
    pub(crate) fn take_unread(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Bytes taken out by [`take_unread`](Self::take_unread) come back (a hand-off failed):
    /// they come first again.
    pub(crate) fn put_back(&mut self, mut unread: Vec<u8>) {
        unread.extend_from_slice(&self.buf);
        self.buf = unread;
    }

    /// If `buf` starts with a complete frame header: the frame's whole length, its FIN bit
    /// and whether it is a control frame.
    fn header(buf: &[u8]) -> Option<(u64, bool, bool)> {
        if buf.len() < 2 {
            return None;
        }
        let fin = buf[0] & 0x80 != 0;
        let control = buf[0] & 0x08 != 0;
        let masked = buf[1] & 0x80 != 0;
        let (ext, len) = match buf[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let head = 2 + ext + if masked { 4 } else { 0 };
        if buf.len() < head {
            return None;
        }
        let len = len.unwrap_or_else(|| {
            buf[2..2 + ext]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        });
        Some((head as u64 + len, fin, control))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameBoundary<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.raw && !this.buf.is_empty() {
                let n = this.buf.len().min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if !this.raw && this.frame_left == 0 {
                if let Some((len, fin, control)) = Self::header(&this.buf) {
                    this.frame_left = len;
                    if !control {
                        this.in_message = !fin;
                    }
                }
            }
            if !this.raw && this.frame_left > 0 && !this.buf.is_empty() {
                let n = (this.buf.len() as u64)
                    .min(this.frame_left)
                    .min(out.remaining() as u64) as usize;
                out.put_slice(&this.buf[..n]);
                this.buf.drain(..n);
                this.frame_left -= n as u64;
                return Poll::Ready(Ok(()));
            }
            // Need more bytes from the socket.
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        // EOF: whatever is left (a partial header) goes as it is.
                        let n = this.buf.len().min(out.remaining());
                        out.put_slice(&this.buf[..n]);
                        this.buf.drain(..n);
                        return Poll::Ready(Ok(()));
                    }
                    this.buf.extend_from_slice(rb.filled());
                }
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameBoundary<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A frame header of `len` payload bytes (masked as a client's are), then the payload.
    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    #[test]
    fn headers_of_every_length_form() {
        for len in [0, 5, 125, 126, 300, 65535, 65536, 70_000] {
            let f = frame(true, 1, len);
            let (whole, fin, control) = FrameBoundary::<()>::header(&f).unwrap();
            assert_eq!(
                (whole as usize, fin, control),
                (f.len(), true, false),
                "{len}"
            );
        }
        assert_eq!(FrameBoundary::<()>::header(&[0x81]), None);
        assert_eq!(FrameBoundary::<()>::header(&[0x81, 0xfe, 0]), None);
        assert!(
            FrameBoundary::<()>::header(&frame(true, 9, 0)).unwrap().2,
            "ping is control"
        );
    }

    /// Two frames arrive in one read: the WebSocket layer is given the first only, and at that
    /// boundary the second is still this layer's, as unread bytes.
    #[tokio::test]
    async fn a_frame_at_a_time_and_the_rest_unread() {
        let (a, b) = (frame(true, 1, 10), frame(true, 1, 20));
        let wire = [a.clone(), b.clone()].concat();
        let mut fb = FrameBoundary::new(std::io::Cursor::new(wire), Vec::new(), false);
        let mut got = vec![0u8; a.len()];
        fb.read_exact(&mut got).await.unwrap();
        assert_eq!(got, a);
        assert!(fb.at_boundary());
        assert_eq!(fb.take_unread(), b);
        fb.put_back(b"back".to_vec());
        assert_eq!(fb.take_unread(), b"back");
    }

    /// Inside a fragmented message (a frame without FIN) there is no boundary, even between
    /// its frames; a control frame in between does not end it.
    #[tokio::test]
    async fn no_boundary_inside_a_fragmented_message() {
        let parts = [frame(false, 1, 3), frame(true, 9, 0), frame(true, 0, 3)];
        let mut fb = FrameBoundary::new(std::io::Cursor::new(parts.concat()), Vec::new(), false);
        for (i, p) in parts.iter().enumerate() {
            let mut got = vec![0u8; p.len()];
            fb.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, p);
            assert_eq!(fb.at_boundary(), i == 2, "after part {i}");
        }
    }
}
