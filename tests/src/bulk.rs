//! Bulk transfers over a long path: the timed download and upload of a large body on one
//! HTTP connection to `balancer-testsrv` (checked: the download against the `/bytes/N`
//! pattern, the upload against the server's `X-Body-Len` and `X-Body-Fnv`), and the
//! path itself, a [`Topology::two_arm_with_wan`] whose relay delays each direction by
//! [`ONE_WAY_DELAY`]. Shared by the long-path wire tests and the benchmark's
//! `splice_throughput` part, so both measure the same thing.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};

use crate::{
    http::{self, Conn, Fnv64},
    impair::Impairment,
    topology::{Arms, Topology},
};

/// One way through the relay: a 50 ms round trip.
pub const ONE_WAY_DELAY: Duration = Duration::from_millis(25);

/// The long path's impairment: [`ONE_WAY_DELAY`] each way, `loss` of the frames lost
/// (each direction), no reordering.
pub fn long_path(loss: f64, seed: u64) -> Impairment {
    Impairment::new(loss, 0.0, seed).with_delay(ONE_WAY_DELAY)
}

/// A two-arm topology with `n_backends` whose client link is the long path.
pub fn long_path_topology(
    n_backends: usize,
    balancer_bin: PathBuf,
    loss: f64,
    seed: u64,
) -> Result<Topology> {
    Topology::build_with(
        Arms::Two,
        n_backends,
        balancer_bin,
        Some(long_path(loss, seed)),
    )
}

/// A timed transfer of `bytes` in `elapsed`.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    pub bytes: usize,
    pub elapsed: Duration,
}

impl Transfer {
    /// Goodput in Mbit/s (10^6 bits): the application bytes over the time.
    pub fn mbit_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / 1e6 / self.elapsed.as_secs_f64()
    }
}

/// A connection to `addr` (from the calling thread's namespace) with `io_timeout` for
/// reads and writes: long enough for a large body over a slow path.
pub fn connect(addr: SocketAddr, io_timeout: Duration) -> Result<Conn> {
    let c = Conn::connect_timeout(addr, Duration::from_secs(10))?;
    c.stream().set_read_timeout(Some(io_timeout))?;
    c.stream().set_write_timeout(Some(io_timeout))?;
    Ok(c)
}

/// `GET /bytes/{bytes}` on `c` with `headers`, timed from the request to the last byte;
/// fails unless the body is the pattern, whole. Returns the transfer and the name of the
/// backend that answered.
pub fn download(
    c: &mut Conn,
    bytes: usize,
    headers: &[(&str, &str)],
) -> Result<(Transfer, String)> {
    let started = Instant::now();
    let r = c.request("GET", &format!("/bytes/{bytes}"), headers, &[])?;
    let elapsed = started.elapsed();
    ensure!(r.status == 200, "download: status {}", r.status);
    ensure!(
        r.body.len() == bytes,
        "download: {} of {bytes} bytes",
        r.body.len()
    );
    ensure!(http::is_pattern(&r.body), "download: corrupted body");
    let backend = r.header("x-backend").unwrap_or_default().to_string();
    Ok((Transfer { bytes, elapsed }, backend))
}

/// `len` bytes to upload: the `/bytes/N` pattern.
pub fn upload_body(len: usize) -> Vec<u8> {
    let mut body = vec![0u8; len];
    http::fill_pattern(0, &mut body);
    body
}

/// `POST /upload` of `body` on `c` with `headers`, timed from the request to the
/// response; fails unless the server read exactly `body` (length and digest). Returns
/// the transfer and the name of the backend that answered.
pub fn upload(c: &mut Conn, body: &[u8], headers: &[(&str, &str)]) -> Result<(Transfer, String)> {
    let digest = Fnv64::of(body).hex();
    let started = Instant::now();
    let r = c.request("POST", "/upload", headers, body)?;
    let elapsed = started.elapsed();
    ensure!(r.status == 200, "upload: status {}", r.status);
    ensure!(
        r.header("x-body-len") == Some(body.len().to_string().as_str()),
        "upload: the server read {:?} of {} bytes",
        r.header("x-body-len"),
        body.len()
    );
    ensure!(
        r.header("x-body-fnv") == Some(digest.as_str()),
        "upload: the server's digest {:?}, sent {digest}",
        r.header("x-body-fnv")
    );
    let backend = r.header("x-backend").unwrap_or_default().to_string();
    Ok((
        Transfer {
            bytes: body.len(),
            elapsed,
        },
        backend,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goodput_is_bits_over_seconds() {
        let t = Transfer {
            bytes: 100_000_000,
            elapsed: Duration::from_secs(8),
        };
        assert!((t.mbit_s() - 100.0).abs() < 1e-9);
    }

    #[test]
    fn upload_body_is_the_pattern() {
        let b = upload_body(1000);
        assert_eq!(b.len(), 1000);
        assert!(http::is_pattern(&b));
    }
}
