//! Sandbox vs live for data that carries an environment (devices, bootstrap tokens,
//! resources, audit records): which records a caller sees, and which environment a record it
//! creates takes. An API key or device key sees only its own environment, and a record of the
//! other one answers 404 exactly as an absent one (never 403, which would tell that it
//! exists). A session sees both, and may narrow a list with `environment=live|test`.

use axum::http::StatusCode;

use crate::error::{ApiError, ApiResult};
use crate::extract::Auth;
use crate::store::Environment;

/// The environments a caller sees: one, or both (`None`, a session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scope(pub Option<Environment>);

impl Scope {
    /// Both environments (a session, or the system).
    pub const ALL: Self = Self(None);

    pub fn only(env: Environment) -> Self {
        Self(Some(env))
    }

    /// Whether a record of `env` is visible.
    pub fn sees(self, env: Environment) -> bool {
        self.0.is_none_or(|e| e == env)
    }
}

/// 403 `wrong_environment`: a key asked for the other environment by name. (A record of the
/// other environment named by id is 404 instead.)
pub fn wrong_environment() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        super::authz::WRONG_ENVIRONMENT,
        "this key sees only its own environment (sandbox vs live)",
    )
}

/// Parses an `environment` query parameter.
pub fn parse(v: Option<&str>) -> ApiResult<Option<Environment>> {
    v.map(|s| {
        Environment::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                octomil_common::wire::codes::INVALID_ARGUMENT,
                "environment must be live or test",
            )
        })
    })
    .transpose()
}

/// What `auth` sees, narrowed by an `environment` it asked for: a key's own environment
/// (asking for the other is 403 `wrong_environment`), or for a session what it asked (both
/// when it asked nothing).
pub fn scope(auth: &Auth, asked: Option<Environment>) -> ApiResult<Scope> {
    match (auth.environment(), asked) {
        (Some(own), Some(a)) if a != own => Err(wrong_environment()),
        (Some(own), _) => Ok(Scope::only(own)),
        (None, a) => Ok(Scope(a)),
    }
}

/// The environment of a record `auth` creates: a key's own (naming the other is 403
/// `wrong_environment`); for a session the one it names, else the organization's (live
/// unless the organization was made with `--sandbox`).
pub fn for_new(auth: &Auth, asked: Option<Environment>) -> ApiResult<Environment> {
    match (auth.environment(), asked) {
        (Some(own), Some(a)) if a != own => Err(wrong_environment()),
        (Some(own), _) => Ok(own),
        (None, a) => Ok(a.unwrap_or(auth.1.environment)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::{Ctx, Principal};
    use crate::scope::{Role, ScopeSet};

    fn key(env: Environment) -> Auth {
        Auth(
            Principal::ApiKey {
                id: "k".into(),
                scopes: ScopeSet::all(),
                role: Role::Owner,
                environment: env,
                owner_email: "o@example.com".into(),
            },
            Ctx {
                environment: env,
                ..Ctx::default()
            },
        )
    }

    fn session(org_env: Environment) -> Auth {
        Auth(
            Principal::Session {
                email: "o@example.com".into(),
                role: Role::Owner,
                jti: "j".into(),
                enrolment_only: false,
            },
            Ctx {
                environment: org_env,
                ..Ctx::default()
            },
        )
    }

    #[test]
    fn keys_see_their_own_environment_and_sessions_both() {
        use Environment::{Live, Test};
        let test_key = key(Test);
        assert_eq!(scope(&test_key, None), Ok(Scope::only(Test)));
        assert_eq!(scope(&test_key, Some(Test)), Ok(Scope::only(Test)));
        assert_eq!(
            scope(&test_key, Some(Live)).map_err(|e| e.code),
            Err("wrong_environment")
        );
        assert!(!Scope::only(Test).sees(Live));
        let s = session(Live);
        assert_eq!(scope(&s, None), Ok(Scope::ALL));
        assert!(Scope::ALL.sees(Test) && Scope::ALL.sees(Live));
        assert_eq!(scope(&s, Some(Test)), Ok(Scope::only(Test)));

        assert_eq!(for_new(&test_key, None), Ok(Test));
        assert_eq!(
            for_new(&test_key, Some(Live)).map_err(|e| e.code),
            Err("wrong_environment")
        );
        assert_eq!(for_new(&s, None), Ok(Live));
        assert_eq!(for_new(&session(Test), None), Ok(Test));
        assert_eq!(for_new(&s, Some(Test)), Ok(Test));
    }
}
