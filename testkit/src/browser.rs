//! A real headless Chromium for the dashboard's browser tests: Debian's `chromium` driven by
//! its `chromedriver` over WebDriver, started per test on a free loopback port with a fresh
//! profile, and stopped on drop. Screenshots go to `$OCTOMIL_SCREENSHOTS` when it is set, and
//! always to `target/browser-failures/` when the test fails inside [`Browser::guard`].

use std::future::Future;
use std::os::unix::process::CommandExt as _;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use futures_util::FutureExt as _;
use serde_json::json;

/// Set to a directory to save every screenshot a test names (README images come from here).
pub const SCREENSHOTS_VAR: &str = "OCTOMIL_SCREENSHOTS";
/// How long a page condition may take on a loaded 2-core CI machine.
pub const WAIT: Duration = Duration::from_secs(5);

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROME_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
];

/// A headless Chromium session and the chromedriver serving it.
#[derive(Debug)]
pub struct Browser {
    pub client: Client,
    driver: Child,
    test: String,
    _profile: tempfile::TempDir,
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Browser {
    /// Starts chromedriver and a fresh headless Chromium, 1280x900. `None` (after
    /// [`crate::skip::missing_dependency`], which fails in CI) when either is not installed.
    #[allow(clippy::unwrap_used)]
    pub async fn start(test: &str) -> Option<Self> {
        let Some(driver_bin) = which("chromedriver") else {
            crate::skip::missing_dependency(
                test,
                "chromedriver (Debian chromium-driver) is not installed",
            );
            return None;
        };
        if !Path::new(CHROMIUM).is_file() {
            crate::skip::missing_dependency(test, "chromium is not installed");
            return None;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = CHROME_ARGS.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.push("--window-size=1280,900".into());
        let caps: serde_json::Map<String, serde_json::Value> = json!({
            "browserName": "chrome",
            // The cloud's certificate is signed by its own test CA.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        })
        .as_object()
        .unwrap()
        .clone();
        // The port is free when picked; if another process takes it first, chromedriver
        // exits and we pick again.
        for _ in 0..5 {
            let port = free_port().unwrap();
            // Its own process group, so Drop can stop Chromium with it.
            let mut driver = Command::new(&driver_bin)
                .process_group(0)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let url = format!("http://127.0.0.1:{port}");
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let client = loop {
                let mut b =
                    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
                b.capabilities(caps.clone());
                match b.connect(&url).await {
                    Ok(c) => break Some(c),
                    Err(e) => {
                        if driver.try_wait().ok().flatten().is_some() {
                            break None;
                        }
                        assert!(
                            std::time::Instant::now() < deadline,
                            "chromedriver on port {port} did not start a session: {e}"
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            };
            if let Some(client) = client {
                return Some(Self {
                    client,
                    driver,
                    test: test.to_owned(),
                    _profile: profile,
                });
            }
            let _ = driver.wait();
        }
        panic!("chromedriver could not start on a free port");
    }

    /// Runs `body`; if it panics, saves a screenshot of the page under
    /// `target/browser-failures/TEST.png` first, then lets the panic go on.
    pub async fn guard<F: Future>(&self, body: F) -> F::Output {
        match AssertUnwindSafe(body).catch_unwind().await {
            Ok(v) => v,
            Err(panic) => {
                let dir = target_dir().join("browser-failures");
                let path = dir.join(format!("{}.png", self.test));
                if std::fs::create_dir_all(&dir).is_ok()
                    && let Ok(png) = self.client.screenshot().await
                    && std::fs::write(&path, png).is_ok()
                {
                    eprintln!("screenshot of the failed page: {}", path.display());
                }
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Saves a screenshot as `$OCTOMIL_SCREENSHOTS/NAME.png` when that variable is set.
    #[allow(clippy::unwrap_used)]
    pub async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os(SCREENSHOTS_VAR) else {
            return;
        };
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Emulates `prefers-color-scheme: dark` (or light) through the DevTools protocol.
    #[allow(clippy::unwrap_used)]
    pub async fn color_scheme(&self, dark: bool) {
        let value = if dark { "dark" } else { "light" };
        self.client
            .issue_cmd(Cdp {
                cmd: "Emulation.setEmulatedMedia",
                params: json!({"features": [{"name": "prefers-color-scheme", "value": value}]}),
            })
            .await
            .unwrap();
    }

    /// Sets the viewport's width (and a phone- or laptop-like height).
    #[allow(clippy::unwrap_used)]
    pub async fn width(&self, width: u32) {
        let height = if width < 600 { 844 } else { 900 };
        self.client.set_window_size(width, height).await.unwrap();
    }
}

impl Browser {
    /// Ends the WebDriver session (Chromium quits), then the driver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium and its helpers are in chromedriver's process group: stop them all, also
        // when a test panicked before `close`.
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The workspace's `target/` (tests run with the crate directory as working directory).
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let mut dir = std::env::current_dir().unwrap_or_default();
    loop {
        if dir.join("target").is_dir() {
            return dir.join("target");
        }
        if !dir.pop() {
            return PathBuf::from("target");
        }
    }
}

/// A Chrome DevTools command through chromedriver's `goog/cdp/execute` endpoint.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: serde_json::Value,
}

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({"cmd": self.cmd, "params": self.params}).to_string();
        (http::Method::POST, Some(body))
    }
}
