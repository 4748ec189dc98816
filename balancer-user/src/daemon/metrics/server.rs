//! The read-only HTTP/1.1 server of `GET /metrics` (and of the status page), on hyper.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{HeaderValue, ALLOW, CONTENT_TYPE as CONTENT_TYPE_HEADER},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};

/// Content type of the exposition served: OpenMetrics text, which is what the
/// `prometheus-client` encoder writes (counter families named without `_total`,
/// the `# EOF` end marker).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Longest request head accepted; a scraper's is a few hundred bytes. (hyper's read
/// buffer limit: requests whose head does not fit get 431.)
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client gets to send its request head, and to take the response.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// Renders a dynamic page, or says why it cannot (answered with 503). It runs on the
/// blocking pool, since reading the pinned maps takes the instance lock and makes
/// syscalls.
pub type Render = Arc<dyn Fn() -> std::result::Result<String, String> + Send + Sync>;

/// What one path answers.
#[derive(Clone)]
pub enum Page {
    /// Text built into the binary (the status page's HTML, CSS and script).
    Static(&'static str),
    Dynamic(Render),
}

/// One path the server answers, with its content type.
#[derive(Clone)]
pub struct Endpoint {
    pub path: &'static str,
    pub content_type: &'static str,
    pub page: Page,
}

impl Endpoint {
    /// `GET /metrics`, rendered by `snapshot`.
    pub fn metrics(
        snapshot: impl Fn() -> std::result::Result<String, String> + Send + Sync + 'static,
    ) -> Endpoint {
        Endpoint {
            path: "/metrics",
            content_type: CONTENT_TYPE,
            page: Page::Dynamic(Arc::new(snapshot)),
        }
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped. `snapshot` renders
/// the exposition text, or says why it cannot (answered with 503).
pub async fn serve(
    listener: TcpListener,
    snapshot: impl Fn() -> std::result::Result<String, String> + Send + Sync + 'static,
) {
    serve_endpoints(listener, vec![Endpoint::metrics(snapshot)], IO_TIMEOUT).await
}

/// Serves `endpoints` on `listener` until the task is dropped, with `io_timeout` for
/// the request head and for the response (the tests' is short).
pub async fn serve_endpoints(
    listener: TcpListener,
    endpoints: Vec<Endpoint>,
    io_timeout: Duration,
) {
    let endpoints: Arc<[Endpoint]> = endpoints.into();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // never closed
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: retrying at once would spin.
                warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let endpoints = endpoints.clone();
                async move { Ok::<_, Infallible>(respond(&request, &endpoints).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                // One deadline for the whole head, not per read: a client trickling a
                // byte at a time cannot keep the connection.
                .header_read_timeout(io_timeout)
                .max_buf_size(MAX_HEAD)
                // One request per connection, as scrapers and the page's polls need.
                .keep_alive(false)
                .title_case_headers(true)
                .serve_connection(TokioIo::new(stream), service);
            // hyper has no write timeout: the whole exchange gets the head's time, the
            // response's time and the snapshot's, so a client that never takes the
            // response cannot hold its slot.
            match tokio::time::timeout(3 * io_timeout, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!("metrics endpoint: {peer}: {e}"),
                Err(_) => debug!("metrics endpoint: {peer}: timed out"),
            }
            drop(slot);
        });
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut body = body.into();
    body.push('\n');
    page(status, "text/plain; charset=utf-8", body.into())
}

fn page(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(content_type));
    response
}

/// The response to a request; hyper leaves out the body of an answer to HEAD.
async fn respond(request: &Request<Incoming>, endpoints: &[Endpoint]) -> Response<Full<Bytes>> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the metrics endpoint is read-only",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let Some(endpoint) = endpoints.iter().find(|e| e.path == request.uri().path()) else {
        return text(StatusCode::NOT_FOUND, "metrics are at /metrics");
    };
    match &endpoint.page {
        Page::Static(body) => page(
            StatusCode::OK,
            endpoint.content_type,
            Bytes::from_static(body.as_bytes()),
        ),
        Page::Dynamic(render) => {
            let render = render.clone();
            match tokio::task::spawn_blocking(move || render()).await {
                Ok(Ok(body)) => page(StatusCode::OK, endpoint.content_type, body.into()),
                Ok(Err(reason)) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
                Err(e) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("metrics snapshot failed: {e}"),
                ),
            }
        }
    }
}
