//! The dashboard's static files, compiled into the binary: its stylesheet, its small scripts
//! (copy buttons; live updates), and htmx 2.0.11 (Zero-Clause BSD) with its licence.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// (name, content type, bytes).
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/dashboard.css"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard.js"),
    ),
    (
        "enrol.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/enrol.js"),
    ),
    (
        "live.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/live.js"),
    ),
    (
        "htmx-2.0.11.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/htmx-2.0.11.min.js"),
    ),
    (
        "htmx-LICENSE.txt",
        "text/plain; charset=utf-8",
        include_bytes!("../../assets/htmx-LICENSE.txt"),
    ),
];

pub async fn serve(Path(name): Path<String>) -> Response {
    let Some((_, mime, bytes)) = FILES.iter().find(|(n, ..)| *n == name) else {
        return super::page_error(StatusCode::NOT_FOUND, "no such file");
    };
    let mut r = (*bytes).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    // Names change with their content (htmx carries its version), except our own files,
    // which are small: an hour of caching is enough.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}
