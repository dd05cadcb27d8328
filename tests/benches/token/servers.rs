//! The servers the daemon is compared with: nginx with a generated config, and a bare hyper
//! server (this benchmark's own binary again, in a child process).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the environment of the child that runs the bare hyper server.
const HYPER_REF_SOCKET: &str = "OCTOMIL_BENCH_HYPER_SOCKET";
const HYPER_REF_BODY: &str = "OCTOMIL_BENCH_HYPER_BODY";
const HYPER_REF_WORKERS: &str = "OCTOMIL_BENCH_HYPER_WORKERS";

/// In the child started by `HyperRef::start`: serves until killed and returns true. In the
/// benchmark itself: returns false at once.
pub fn run_hyper_ref_if_child() -> bool {
    let Some(socket) = std::env::var_os(HYPER_REF_SOCKET) else {
        return false;
    };
    let body = std::env::var(HYPER_REF_BODY).unwrap();
    let workers = std::env::var(HYPER_REF_WORKERS)
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(2);
    hyper_ref::serve(PathBuf::from(socket), body, workers);
    true
}

/// nginx on PATH (or Debian's /usr/sbin), installed with apt-get once if missing.
pub fn nginx_binary() -> Result<PathBuf, String> {
    fn find() -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin")])
            .map(|d| d.join("nginx"))
            .find(|p| p.is_file())
    }
    if let Some(p) = find() {
        return Ok(p);
    }
    println!("nginx not found; trying `apt-get install -y nginx` once");
    let status = Command::new("apt-get")
        .args(["install", "-y", "nginx"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if !status.success() {
        return Err(format!("`apt-get install -y nginx` failed ({status})"));
    }
    find().ok_or_else(|| "apt-get succeeded but no nginx binary was found".to_owned())
}

/// Waits until something accepts connections on `socket`; an error if `child` exits first or
/// nothing listens within 10 s.
fn wait_listening(
    child: &mut Child,
    socket: &Path,
    what: &str,
    log: Option<&Path>,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = log.map(std::fs::read_to_string).and_then(Result::ok);
            return Err(format!(
                "{what} exited with {status}: {}",
                log.unwrap_or_default().trim()
            ));
        }
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{what} did not listen on {} within 10 s",
                socket.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One foreground nginx process (no master, one worker) on a Unix socket in its own temp dir.
#[derive(Debug)]
pub struct Nginx {
    pub child: Child,
    pub socket: PathBuf,
}

impl Nginx {
    /// Writes the config into `dir` and starts nginx on `dir/nginx.sock`, answering every
    /// request with `body` (which must need no escaping inside single quotes).
    pub fn start(bin: &Path, dir: &Path, body: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let d = dir.display();
        let socket = dir.join("nginx.sock");
        let s = socket.display();
        // keepalive_requests: by default nginx closes a connection after 1000 requests. The
        // temp paths keep nginx out of /var/lib/nginx.
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 128; }}
http {{
    access_log off;
    server_tokens off;
    default_type application/json;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen unix:{s};
        location / {{ return 200 '{body}'; }}
    }}
}}
"#
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| format!("{}: {e}", conf_path.display()))?;
        let log = dir.join("error.log");
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(&log)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut me = Self { child, socket };
        wait_listening(&mut me.child, &me.socket, "nginx", Some(&log))?;
        Ok(me)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bare hyper server, in a child process (this binary again) so that it does not share the
/// client's thread.
#[derive(Debug)]
pub struct HyperRef {
    pub child: Child,
    pub socket: PathBuf,
}

impl HyperRef {
    pub fn start(socket: &Path, body: &str, workers: usize) -> Self {
        let child = Command::new(std::env::current_exe().unwrap())
            .env(HYPER_REF_SOCKET, socket)
            .env(HYPER_REF_BODY, body)
            .env(HYPER_REF_WORKERS, workers.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut me = Self {
            child,
            socket: socket.to_owned(),
        };
        wait_listening(&mut me.child, socket, "the hyper reference server", None).unwrap();
        me
    }
}

impl Drop for HyperRef {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What is left when the daemon's own layers are taken away: the same tokio runtime shape
/// (current_thread unless told otherwise), hyper's HTTP/1.1 server on a Unix socket, one fixed
/// answer, nothing else.
mod hyper_ref {
    use std::convert::Infallible;
    use std::path::PathBuf;

    use axum::body::{Body, Bytes};
    use http::{HeaderValue, Request, Response, header};
    use hyper::body::Incoming;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::UnixListener;

    pub fn serve(socket: PathBuf, body: String, workers: usize) {
        let mut builder = match workers {
            0 => tokio::runtime::Builder::new_current_thread(),
            w => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(w);
                b
            }
        };
        let rt = builder.enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = UnixListener::bind(&socket).unwrap();
            let body = Bytes::from(body);
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let body = body.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<Incoming>| {
                        let mut res = Response::new(Body::from(body.clone()));
                        res.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                        async move { Ok::<_, Infallible>(res) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }
}
