//! The dashboard seen by a browser-like HTTP client: its own cookie jar, no redirect
//! following, the sign-in form, and the one-line helpers the dashboard's HTTP tests share.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};

use super::{Device, Env};

/// A browser-like client of the dashboard: its own cookie jar, no redirect following.
pub struct Browser {
    pub client: reqwest::Client,
    pub base: String,
    pub cookies: HashMap<String, String>,
}

pub struct Page {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    /// The first CSRF token of a form on the page.
    pub fn csrf(&self) -> String {
        self.attr_after("name=\"csrf\" value=\"")
    }

    /// The text from `marker` up to the next `"` (an attribute value).
    pub fn attr_after(&self, marker: &str) -> String {
        let at = self.body.find(marker).unwrap_or_else(|| {
            panic!("{marker} not in the page: {}", self.body);
        });
        let rest = &self.body[at + marker.len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }

    /// The text of the element whose start tag ends with `id="ID">`, up to the next `<`.
    pub fn text_of(&self, id: &str) -> String {
        let marker = format!("id=\"{id}\">");
        let at = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("#{id} not in the page: {}", self.body));
        let rest = &self.body[at + marker.len()..];
        rest[..rest.find('<').unwrap()].trim().to_owned()
    }

    pub fn location(&self) -> &str {
        self.headers
            .get("location")
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

impl Browser {
    pub fn new(env: &Env) -> Self {
        let ca = reqwest::Certificate::from_pem(env.handle.ca_pem.as_bytes()).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only([ca])
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            client,
            base: env.handle.http_url.clone(),
            cookies: HashMap::new(),
        }
    }

    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        form: Option<&[(&str, &str)]>,
    ) -> Page {
        self.send_as(method, path, form, false).await
    }

    /// [`Self::send`], as htmx sends it when `htmx` (an `HX-Request: true` header).
    pub async fn send_as(
        &mut self,
        method: Method,
        path: &str,
        form: Option<&[(&str, &str)]>,
        htmx: bool,
    ) -> Page {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("cookie", self.cookie_header());
        if htmx {
            req = req.header("hx-request", "true");
        }
        if let Some(form) = form {
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(serde_urlencoded::to_string(form).unwrap());
        }
        let resp = req.send().await.unwrap();
        for c in resp.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (kv, _) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=').unwrap();
            if v.is_empty() || c.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        Page {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        self.send(Method::GET, path, None).await
    }

    /// A GET as htmx makes it (a fragment where the page has one).
    pub async fn get_htmx(&mut self, path: &str) -> Page {
        self.send_as(Method::GET, path, None, true).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        self.send(Method::POST, path, Some(form)).await
    }

    pub async fn post_owned(&mut self, path: &str, form: &[(String, String)]) -> Page {
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.post(path, &pairs).await
    }

    /// Signs in through the login form with `fields` besides the CSRF token.
    pub async fn sign_in_with(&mut self, fields: &[(&str, &str)]) -> Page {
        let login = self.get("/dashboard/login").await;
        assert_eq!(login.status, StatusCode::OK);
        let csrf = login.csrf();
        let mut form = vec![("csrf", csrf.as_str())];
        form.extend_from_slice(fields);
        self.post("/dashboard/login", &form).await
    }

    pub async fn sign_in(&mut self, email: &str, password: &str, code: &str) -> Page {
        self.sign_in_with(&[("email", email), ("password", password), ("mfa_code", code)])
            .await
    }
}

pub async fn owner_browser(env: &Env) -> Browser {
    let mut b = Browser::new(env);
    let secret = env.handle.owner_totp_secret().unwrap();
    let password = env.handle.owner_password().unwrap();
    let answer = b
        .sign_in(
            &env.handle.info.owner_email,
            password.expose(),
            &env.totp_code(&secret),
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    assert_eq!(answer.location(), "/dashboard/devices");
    b
}

/// A member of `role` signed in through the form (the clock moves one TOTP step first, so no
/// code of this step is replayed).
pub async fn member_browser(env: &Env, email: &str, role: &str) -> Browser {
    let (password, totp) = env.add_member(email, role).await;
    env.clock.advance(Duration::from_secs(30));
    let mut b = Browser::new(env);
    let answer = b.sign_in(email, &password, &env.totp_code(&totp)).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
    b
}

/// Registers `id` with `metadata`.
pub async fn register_with(env: &Env, id: &str, metadata: serde_json::Value) {
    let d = Device::new(id);
    let mut body = d.register_body(env, &env.bootstrap_token()).await;
    body["metadata"] = metadata;
    let a = env
        .call(Method::POST, "/devices/register", None, Some(body))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
}

pub async fn device_state(env: &Env, id: &str) -> String {
    let a = env
        .owner(Method::GET, &format!("/devices/{id}"), None)
        .await;
    a.body["state"].as_str().unwrap().to_owned()
}

pub async fn audit_of(env: &Env, action: &str) -> Vec<serde_json::Value> {
    let a = env
        .owner(Method::GET, &format!("/audit?action={action}"), None)
        .await;
    a.body["records"].as_array().unwrap().clone()
}
