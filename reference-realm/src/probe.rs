//! `mtor-realm health`: a health probe for container engines.
//!
//! A FROM-scratch image has no shell and no curl, so the image's HEALTHCHECK runs the realm binary
//! itself: one HTTP/1.1 GET of `/v1/health` over plain TCP with a deadline, healthy when the
//! realm answers 2xx. Plain std networking keeps it free of any HTTP client dependency.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Why the probe did not find the realm healthy.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The URL is not `http://HOST:PORT/PATH`.
    #[error("`{0}` is not http://HOST:PORT/PATH")]
    Url(String),
    /// No connection, or no complete status line, within the deadline.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The realm answered, but not with 2xx.
    #[error("{url} answered {status_line}")]
    Unhealthy {
        /// The URL probed.
        url: String,
        /// The status line as received.
        status_line: String,
    },
}

/// The default URL: the port of `MTOR_LISTEN` (as the image sets it) on loopback, else 7700.
pub fn default_url() -> String {
    let port = std::env::var("MTOR_LISTEN")
        .ok()
        .and_then(|l| l.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()))
        .unwrap_or(7700);
    format!("http://127.0.0.1:{port}/v1/health")
}

/// GETs `url` and returns the status line when it is 2xx.
pub fn probe(url: &str, within: Duration) -> Result<String, ProbeError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ProbeError::Url(url.to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let io = |e: std::io::Error| ProbeError::Io(url.to_owned(), e);
    let addr: SocketAddr = authority
        .to_socket_addrs()
        .map_err(|_| ProbeError::Url(url.to_owned()))?
        .next()
        .ok_or_else(|| ProbeError::Url(url.to_owned()))?;
    let deadline = Instant::now() + within;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut stream = TcpStream::connect_timeout(&addr, left()).map_err(io)?;
    stream.set_write_timeout(Some(left())).map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: mtor-realm-health\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    // Only the status line matters; read until its end or the deadline.
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        stream.set_read_timeout(Some(left())).map_err(io)?;
        let n = stream.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or_default().trim().to_owned();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if status_line.starts_with("HTTP/1.") && code.len() == 3 && code.starts_with('2') {
        Ok(status_line)
    } else {
        Err(ProbeError::Unhealthy {
            url: url.to_owned(),
            status_line: if status_line.is_empty() {
                "nothing".into()
            } else {
                status_line
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer.as_bytes());
            }
        });
        format!("http://{addr}/v1/health")
    }

    #[test]
    fn healthy_on_2xx_only() {
        let ok = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
        assert_eq!(
            probe(&ok, Duration::from_secs(3)).expect("healthy"),
            "HTTP/1.1 200 OK"
        );
        let down = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let e = probe(&down, Duration::from_secs(3)).expect_err("503");
        assert!(e.to_string().contains("503"), "{e}");
    }

    #[test]
    fn refuses_bad_urls_and_dead_ports() {
        assert!(matches!(
            probe("https://x:1/", Duration::from_secs(1)),
            Err(ProbeError::Url(_))
        ));
        // Bind then drop: nothing listens there any more.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let e = probe(
            &format!("http://127.0.0.1:{port}/v1/health"),
            Duration::from_secs(1),
        )
        .expect_err("refused");
        assert!(matches!(e, ProbeError::Io(..)), "{e}");
    }
}
