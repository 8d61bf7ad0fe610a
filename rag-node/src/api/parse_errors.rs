//! JSON bodies for the answers hyper writes by itself.
//!
//! When a request cannot be parsed (a head over the buffer limit, too many headers, conflicting
//! `Content-Length`, TLS or other bytes that are not HTTP/1.1), hyper answers 400, 414 or 431
//! with an empty body and closes the connection; no handler or middleware ever sees the
//! request, and hyper has no hook for that answer. This wrapper around the connection's socket
//! recognises that answer as it is written — a status of 4xx with `content-length: 0`, which
//! our own handlers never produce (every error of ours carries a `{code, message}` body) — and
//! writes it again with the JSON body every other error has.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct JsonParseErrors<S> {
    inner: S,
    /// A rewritten answer still to be written, and how much of it has been.
    pending: Option<(Vec<u8>, usize)>,
}

impl<S> JsonParseErrors<S> {
    pub fn new(inner: S) -> Self {
        JsonParseErrors {
            inner,
            pending: None,
        }
    }
}

impl<S: AsyncWrite + Unpin> JsonParseErrors<S> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((buf, done)) = &mut self.pending {
            if *done == buf.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` in place of the caller's write when it is hyper's bare error answer.
    fn intercept(&mut self, buf: &[u8], cx: &mut Context<'_>) -> Option<Poll<io::Result<usize>>> {
        let rewritten = rewrite(buf)?;
        self.pending = Some((rewritten, 0));
        // Report the original bytes as written; the replacement goes out now or on the flush
        // hyper does next.
        Some(match self.poll_pending(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(buf.len())),
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonParseErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(p) = self.intercept(buf, cx) {
            return p;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        // hyper's bare answer is a head alone, written as the first (and only) slice.
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if bufs.iter().filter(|b| !b.is_empty()).count() == 1 {
                if let Some(p) = self.intercept(first, cx) {
                    return p;
                }
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// hyper's answer to an unparsable request, written again with a JSON body; `None` for any
/// other write.
fn rewrite(buf: &[u8]) -> Option<Vec<u8>> {
    if !(buf.starts_with(b"HTTP/1.1 4") || buf.starts_with(b"HTTP/1.0 4")) {
        return None;
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != buf.len() {
        return None;
    }
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let headers: Vec<&str> = lines.collect();
    if !headers
        .iter()
        .any(|h| h.eq_ignore_ascii_case("content-length: 0"))
    {
        return None;
    }
    let status: u16 = status_line.get(9..12)?.parse().ok()?;
    let (code, message) = match status {
        431 => (
            "headers_too_large",
            "the request's headers are too large or too many",
        ),
        414 => ("uri_too_long", "the request's URI is too long"),
        _ => (
            "invalid_request",
            "the request is not valid HTTP/1.1 (a malformed request line or header, \
             conflicting Content-Length or Transfer-Encoding, or not HTTP at all, such as TLS \
             sent to a plain-text port)",
        ),
    };
    let body = serde_json::to_vec(&rag_api::ErrorBody {
        code: code.into(),
        message: message.into(),
    })
    .ok()?;
    let mut out = Vec::with_capacity(end + body.len() + 96);
    out.extend_from_slice(status_line.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in headers {
        if !h.to_ascii_lowercase().starts_with("content-length:") {
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"content-type: application/json\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_error_heads_are_rewritten() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(rewrite(bare).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(
            head.contains("connection: close") && head.contains("content-type: application/json")
        );
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let e: rag_api::ErrorBody = serde_json::from_str(body).unwrap();
        assert_eq!(e.code, "headers_too_large");
        // Our own answers (with a body), successes and partial heads pass untouched.
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 30\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}").is_none());
        assert!(rewrite(b"{\"code\":\"x\"}").is_none());
    }
}
