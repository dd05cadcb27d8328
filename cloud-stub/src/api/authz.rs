//! The one authorization table of the control plane: every route with the scope a key
//! needs, the minimum role a session (or a key's creator) needs, which environment it acts
//! on, and which budget a call spends. [`authorize`] enforces it for every request after
//! routing and before any handler; `docs/control-plane-api.md` holds the same table, checked
//! by a test against [`markdown_table`].

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::error::ApiError;
use crate::extract::{Auth, Ctx, Principal, bearer};
use crate::limits::Surface;
use crate::scope::{Role, Scope};
use crate::store::Environment;

/// 403 for a key of the other environment (an `edg_test_` key on live data, or back).
pub const WRONG_ENVIRONMENT: &str = "wrong_environment";

/// 403 for any call once the organization is deleted (devices included).
pub const ORG_DELETED: &str = "org_deleted";

pub fn org_deleted() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        ORG_DELETED,
        "the organization is deleted; every call is refused",
    )
}

/// Which principals a route admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No bearer: the body carries the credential (bootstrap token, refresh token,
    /// password), which the handler checks and charges for.
    Public,
    /// A dashboard session of any role (API and device keys are refused).
    Session,
    /// A dashboard session, including one limited to TOTP enrolment (which every other
    /// route refuses with 403 `mfa_enrolment_required`).
    Enrolment,
    /// An API key with `scope` whose effective role reaches `min_role`, a session of at
    /// least `min_role`, or a device key on a `models:read` route.
    Bearer { scope: Scope, min_role: Role },
}

/// Which data a route acts on, for the sandbox/live split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Env {
    /// Organization administration (members, settings, API keys, billing, metrics): a key
    /// of the other environment than the organization's is refused (403
    /// `wrong_environment`), so an `edg_test_` key of a live organization administers nothing.
    Org,
    /// Data that carries an environment (devices, bootstrap tokens, resources, audit): a key
    /// or device key sees and changes only its own environment's records (another's answer
    /// 404 as if absent); a session sees both. The handlers filter (see
    /// [`crate::api::env_scope`]).
    Own,
    /// Stateless calls (inference): any environment.
    Any,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub method: &'static str,
    /// The route as the router names it, below `/api/v1`.
    pub path: &'static str,
    pub access: Access,
    pub env: Env,
    /// The budget a call spends once its caller is authenticated: `ControlPlane` is per
    /// device (API keys and sessions do not spend it), `Inference` per caller.
    pub budget: Option<Surface>,
}

const fn row(
    method: &'static str,
    path: &'static str,
    access: Access,
    env: Env,
    budget: Option<Surface>,
) -> Row {
    Row {
        method,
        path,
        access,
        env,
        budget,
    }
}

const fn bearer_rule(scope: Scope, min_role: Role) -> Access {
    Access::Bearer { scope, min_role }
}

use Role::{Admin, Member, Owner};
use Scope::*;
const CP: Option<Surface> = Some(Surface::ControlPlane);

/// Every route of `/api/v1`. A route missing here is refused (500 `internal`) before its
/// handler runs.
#[rustfmt::skip]
pub const TABLE: &[Row] = &[
    row("POST", "/devices/register/challenge", Access::Public, Env::Org, None),
    row("POST", "/devices/register", Access::Public, Env::Org, None),
    row("POST", "/devices/refresh", Access::Public, Env::Org, None),
    row("GET", "/devices", bearer_rule(DevicesRead, Member), Env::Own, CP),
    row("GET", "/devices/{id}", bearer_rule(DevicesRead, Member), Env::Own, CP),
    row("DELETE", "/devices/{id}", bearer_rule(DevicesWrite, Admin), Env::Own, CP),
    row("POST", "/devices/{id}/revoke", bearer_rule(DevicesWrite, Admin), Env::Own, CP),
    row("POST", "/bootstrap-tokens", bearer_rule(OrgAdmin, Admin), Env::Own, CP),
    row("GET", "/bootstrap-tokens", bearer_rule(OrgAdmin, Admin), Env::Own, CP),
    row("PATCH", "/bootstrap-tokens/{id}", bearer_rule(OrgAdmin, Admin), Env::Own, CP),
    row("DELETE", "/bootstrap-tokens/{id}", bearer_rule(OrgAdmin, Admin), Env::Own, CP),
    row("POST", "/revocations", bearer_rule(DevicesWrite, Admin), Env::Own, CP),
    row("GET", "/audit", bearer_rule(OrgAdmin, Admin), Env::Own, CP),
    row("GET", "/metrics", bearer_rule(MetricsRead, Admin), Env::Org, CP),
    row("POST", "/api-keys", bearer_rule(OrgAdmin, Admin), Env::Org, CP),
    row("GET", "/api-keys", bearer_rule(OrgAdmin, Admin), Env::Org, CP),
    row("DELETE", "/api-keys/{id}", bearer_rule(OrgAdmin, Admin), Env::Org, CP),
    row("GET", "/org/settings", bearer_rule(OrgAdmin, Member), Env::Org, CP),
    row("PATCH", "/org/settings", bearer_rule(OrgAdmin, Admin), Env::Org, CP),
    row("GET", "/org/members", bearer_rule(OrgAdmin, Admin), Env::Org, CP),
    row("POST", "/org/members", bearer_rule(OrgAdmin, Owner), Env::Org, CP),
    row("PATCH", "/org/members/{email}", bearer_rule(OrgAdmin, Owner), Env::Org, CP),
    row("DELETE", "/org/members/{email}", bearer_rule(OrgAdmin, Owner), Env::Org, CP),
    row("POST", "/org/members/{email}/mfa-reset", bearer_rule(OrgAdmin, Admin), Env::Org, CP),
    row("GET", "/org/billing", bearer_rule(OrgAdmin, Owner), Env::Org, CP),
    row("DELETE", "/org", bearer_rule(OrgAdmin, Owner), Env::Org, CP),
    row("POST", "/auth/login", Access::Public, Env::Org, None),
    row("POST", "/auth/logout", Access::Enrolment, Env::Org, None),
    row("POST", "/auth/password", Access::Session, Env::Org, None),
    row("POST", "/auth/step-up", Access::Session, Env::Org, None),
    row("POST", "/auth/mfa/totp", Access::Enrolment, Env::Org, None),
    row("POST", "/auth/mfa/confirm", Access::Enrolment, Env::Org, None),
    row("POST", "/auth/invitations/totp", Access::Public, Env::Org, None),
    row("POST", "/auth/invitations/accept", Access::Public, Env::Org, None),
    row("GET", "/models", bearer_rule(ModelsRead, Member), Env::Own, CP),
    row("POST", "/models", bearer_rule(ModelsWrite, Admin), Env::Own, CP),
    row("GET", "/models/{id}/versions", bearer_rule(ModelsRead, Member), Env::Own, CP),
    row("POST", "/models/{id}/versions", bearer_rule(ModelsWrite, Admin), Env::Own, CP),
    row("GET", "/device-groups", bearer_rule(DevicesRead, Member), Env::Own, CP),
    row("POST", "/device-groups", bearer_rule(DevicesWrite, Admin), Env::Own, CP),
    row("GET", "/rollouts", bearer_rule(ModelsRead, Member), Env::Own, CP),
    row("POST", "/rollouts", bearer_rule(RolloutsWrite, Admin), Env::Own, CP),
    row("GET", "/federations", bearer_rule(FederationsAdmin, Admin), Env::Own, CP),
    row("POST", "/federations", bearer_rule(FederationsAdmin, Admin), Env::Own, CP),
    row("GET", "/training/rounds", bearer_rule(TrainingWrite, Member), Env::Own, CP),
    row("POST", "/training/rounds", bearer_rule(TrainingWrite, Member), Env::Own, CP),
    row("GET", "/experiments", bearer_rule(ExperimentsWrite, Admin), Env::Own, CP),
    row("POST", "/experiments", bearer_rule(ExperimentsWrite, Admin), Env::Own, CP),
    row("POST", "/inference", bearer_rule(ModelsRead, Member), Env::Any, Some(Surface::Inference)),
    // A broker with the cloud's `mqtt_broker_secret` (checked and rate-limited by the handler).
    row("POST", "/mqtt/auth", Access::Public, Env::Org, None),
    row("POST", "/mqtt/acl", Access::Public, Env::Org, None),
];

/// The row for `method path` (`path` below `/api/v1`).
pub fn lookup(method: &Method, path: &str) -> Option<&'static Row> {
    TABLE
        .iter()
        .find(|r| r.path == path && r.method == method.as_str())
}

/// What the caller is, as far as a decision needs it.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub kind: Kind,
    pub environment: Environment,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An API key: its scopes, and the smaller of its role cap and its creator's current role.
    Key {
        scopes: crate::scope::ScopeSet,
        role: Role,
    },
    Session {
        role: Role,
    },
    Device,
}

/// Why a call is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("this call needs the {} scope", .0.as_str())]
    Scope(Scope),
    #[error("this call needs the {} role or higher", .0.as_str())]
    Role(Role),
    #[error("only a dashboard session may make this call")]
    SessionOnly,
    #[error("device keys may not make this call")]
    NotForDevices,
    #[error("this key belongs to the other environment (sandbox vs live)")]
    Environment,
}

impl From<Denial> for ApiError {
    fn from(d: Denial) -> Self {
        match d {
            Denial::Scope(s) => ApiError::insufficient_scope(s.as_str()),
            Denial::Environment => {
                ApiError::new(StatusCode::FORBIDDEN, WRONG_ENVIRONMENT, d.to_string())
            }
            Denial::Role(_) | Denial::SessionOnly | Denial::NotForDevices => {
                ApiError::forbidden(d.to_string())
            }
        }
    }
}

/// Decides one authenticated call against its row: environment, then scope (403
/// `insufficient_scope`), then role (403 `forbidden`). Public rows admit anyone.
pub fn decide(facts: Facts, row: &Row, org_env: Environment) -> Result<(), Denial> {
    let (scope, min_role) = match row.access {
        Access::Public => return Ok(()),
        Access::Session | Access::Enrolment => {
            return match facts.kind {
                Kind::Session { .. } => Ok(()),
                _ => Err(Denial::SessionOnly),
            };
        }
        Access::Bearer { scope, min_role } => (scope, min_role),
    };
    if row.env == Env::Org && facts.environment != org_env {
        return Err(Denial::Environment);
    }
    let role = match facts.kind {
        Kind::Key { scopes, role } => {
            if !scopes.contains(scope) {
                return Err(Denial::Scope(scope));
            }
            role
        }
        Kind::Session { role } => role,
        // A device key carries `models:read` and acts as a Member there, nowhere else.
        Kind::Device if scope == ModelsRead => Member,
        Kind::Device => return Err(Denial::Scope(scope)),
    };
    if role < min_role {
        return Err(Denial::Role(min_role));
    }
    Ok(())
}

/// Middleware on the `/api/v1` routes: finds the row of the matched route, authenticates
/// the bearer, decides, charges the budget, and hands the handler an [`Auth`] in the
/// request extensions. No handler of a bearer route runs without it.
pub async fn authorize(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().trim_start_matches("/api/v1").to_owned());
    let Some(path) = matched else {
        return next.run(req).await;
    };
    let request_id = octomil_common::token::random_base62(16).expose().clone();
    let org_env = state.store.read(|m| m.environment());
    let ctx = Ctx {
        source: crate::proxy::source(&state.trusted_proxies, &req),
        request_id: Some(request_id.clone()),
        environment: org_env,
        origin: None,
    };
    req.extensions_mut().insert(ctx.clone());
    let route = format!("{} {path}", req.method());
    let mut resp = decide_and_run(&state, &path, ctx, req, next).await;
    state.metrics.answered(&route, resp.status().as_u16());
    if let Ok(v) = axum::http::HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

async fn decide_and_run(
    state: &AppState,
    path: &str,
    ctx: Ctx,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(row) = lookup(req.method(), path) else {
        if TABLE.iter().any(|r| r.path == path) {
            // Another method of a known route: let the router answer 405.
            return next.run(req).await;
        }
        return ApiError::internal(format!("route {path} has no authorization rule"))
            .into_response();
    };
    if row.access == Access::Public {
        return next.run(req).await;
    }
    let principal = match bearer(req.headers()) {
        Ok(b) => crate::extract::authenticate(state, b).await,
        Err(e) => Err(e),
    };
    let principal = match principal {
        Ok(p) => p,
        // Failures are charged to the source address, never to a key or a device.
        Err(e) => {
            crate::api::metrics::Metrics::add(&state.metrics.auth_failures, 1);
            return state
                .charge_failure(ctx.source.as_deref(), e)
                .into_response();
        }
    };
    if matches!(
        principal,
        Principal::Session {
            enrolment_only: true,
            ..
        }
    ) && row.access != Access::Enrolment
    {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            crate::session::MFA_ENROLMENT_REQUIRED,
            "this session may only enrol TOTP: POST /api/v1/auth/mfa/totp, then /auth/mfa/confirm",
        )
        .into_response();
    }
    let org_env = ctx.environment;
    if let Err(d) = decide(principal.facts(org_env), row, org_env) {
        return ApiError::from(d).into_response();
    }
    let charged = match (row.budget, &principal) {
        (Some(Surface::ControlPlane), Principal::Device { device_id, .. }) => {
            state.take_permit(Surface::ControlPlane, device_id)
        }
        (Some(Surface::Inference), p) => state.take_permit(Surface::Inference, &p.subject()),
        _ => Ok(()),
    };
    if let Err(e) = charged {
        return e.into_response();
    }
    let ctx = Ctx {
        environment: principal.facts(org_env).environment,
        ..ctx
    };
    req.extensions_mut().insert(ctx.clone());
    req.extensions_mut().insert(Auth(principal, ctx));
    next.run(req).await
}

fn access_cells(a: Access) -> (String, &'static str) {
    match a {
        Access::Public => ("- (no bearer)".into(), "-"),
        Access::Session => ("- (session only)".into(), "any"),
        Access::Enrolment => ("- (session, enrolment too)".into(), "any"),
        Access::Bearer { scope, min_role } => (scope.as_str().into(), min_role.as_str()),
    }
}

/// The table as the Markdown rows of `docs/control-plane-api.md`.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| method & path | key scope | min role | environment | budget |\n|---|---|---|---|---|\n",
    );
    for r in TABLE {
        let (scope, role) = access_cells(r.access);
        let env = match (r.access, r.env) {
            (Access::Public | Access::Session | Access::Enrolment, _) => "-",
            (_, Env::Org) => "org's",
            (_, Env::Own) => "caller's",
            (_, Env::Any) => "any",
        };
        let budget = match r.budget {
            None => "-",
            Some(Surface::ControlPlane) => "device control plane",
            Some(Surface::Inference) => "inference, per caller",
        };
        out.push_str(&format!(
            "| {} {} | {scope} | {role} | {env} | {budget} |\n",
            r.method, r.path
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::ScopeSet;

    const LIVE: Environment = Environment::Live;

    fn key(scopes: &[Scope], role: Role) -> Facts {
        Facts {
            kind: Kind::Key {
                scopes: ScopeSet::of(scopes.iter().copied()),
                role,
            },
            environment: LIVE,
        }
    }

    fn get(method: &str, path: &str) -> &'static Row {
        lookup(&method.parse().unwrap(), path).unwrap()
    }

    #[test]
    fn a_models_read_key_cannot_administer_the_org() {
        let k = key(&[ModelsRead], Owner);
        for (m, p) in [
            ("POST", "/org/members"),
            ("PATCH", "/org/settings"),
            ("POST", "/api-keys"),
            ("DELETE", "/org"),
            ("POST", "/bootstrap-tokens"),
        ] {
            assert_eq!(
                decide(k, get(m, p), LIVE),
                Err(Denial::Scope(OrgAdmin)),
                "{m} {p}"
            );
        }
        assert_eq!(decide(k, get("GET", "/models"), LIVE), Ok(()));
    }

    #[test]
    fn a_key_acts_with_the_smaller_of_scope_and_role() {
        let admin_key = key(&Scope::ALL, Admin);
        assert_eq!(
            decide(admin_key, get("POST", "/org/members"), LIVE),
            Err(Denial::Role(Owner))
        );
        assert_eq!(
            decide(admin_key, get("PATCH", "/org/settings"), LIVE),
            Ok(())
        );
        let member_key = key(&Scope::ALL, Member);
        assert_eq!(
            decide(member_key, get("POST", "/models"), LIVE),
            Err(Denial::Role(Admin))
        );
    }

    #[test]
    fn sessions_devices_and_environments() {
        let member = Facts {
            kind: Kind::Session { role: Member },
            environment: LIVE,
        };
        assert_eq!(decide(member, get("GET", "/devices"), LIVE), Ok(()));
        assert_eq!(
            decide(member, get("GET", "/api-keys"), LIVE),
            Err(Denial::Role(Admin))
        );
        assert_eq!(decide(member, get("POST", "/auth/logout"), LIVE), Ok(()));
        let device = Facts {
            kind: Kind::Device,
            environment: LIVE,
        };
        assert_eq!(decide(device, get("GET", "/models"), LIVE), Ok(()));
        assert_eq!(
            decide(device, get("GET", "/devices"), LIVE),
            Err(Denial::Scope(DevicesRead))
        );
        assert_eq!(
            decide(device, get("POST", "/auth/logout"), LIVE),
            Err(Denial::SessionOnly)
        );
        let test_key = Facts {
            environment: Environment::Test,
            ..key(&Scope::ALL, Owner)
        };
        // Organization administration belongs to the org's environment.
        assert_eq!(
            decide(test_key, get("GET", "/api-keys"), LIVE),
            Err(Denial::Environment)
        );
        assert_eq!(
            decide(test_key, get("GET", "/api-keys"), Environment::Test),
            Ok(())
        );
        // Data that carries an environment admits both; the handler shows the key its own.
        assert_eq!(decide(test_key, get("GET", "/devices"), LIVE), Ok(()));
        assert_eq!(decide(test_key, get("POST", "/revocations"), LIVE), Ok(()));
        assert_eq!(decide(test_key, get("POST", "/inference"), LIVE), Ok(()));
    }

    #[test]
    fn rows_are_unique() {
        for (i, a) in TABLE.iter().enumerate() {
            for b in &TABLE[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {}",
                    a.method,
                    a.path
                );
            }
        }
    }

    #[test]
    fn the_docs_hold_the_same_table() {
        let doc = include_str!("../../../docs/control-plane-api.md");
        assert!(
            doc.contains(&markdown_table()),
            "docs/control-plane-api.md must contain this table verbatim:\n{}",
            markdown_table()
        );
    }
}
