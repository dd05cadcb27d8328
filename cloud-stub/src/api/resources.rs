//! Thin resource endpoints, one per scope, so that scopes guard something real: models and
//! their versions, device groups, rollouts, federations, training rounds and experiments.
//! Each stores `{name, spec}` objects and lists them, a page at a time. A resource carries
//! the environment of the key or session that made it, and a key sees only its own
//! environment's (a model of the other environment is 404 as its versions' parent).

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use octomil_common::token;
use octomil_common::wire::codes;
use serde::{Deserialize, Serialize};

use super::env_scope;
use super::page::{self, Cursors, Page};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Body};
use crate::store::{Change, Environment, Model, ResourceRecord};

const MAX_NAME_LEN: usize = 200;

/// A top-level kind: its path and its kind name. Who may list and create each is in the
/// table of [`super::authz`].
struct Kind {
    path: &'static str,
    kind: &'static str,
}

const KINDS: &[Kind] = &[
    Kind {
        path: "/models",
        kind: "model",
    },
    Kind {
        path: "/device-groups",
        kind: "device_group",
    },
    Kind {
        path: "/rollouts",
        kind: "rollout",
    },
    Kind {
        path: "/federations",
        kind: "federation",
    },
    Kind {
        path: "/training/rounds",
        kind: "training_round",
    },
    Kind {
        path: "/experiments",
        kind: "experiment",
    },
];

const VERSIONS: Kind = Kind {
    path: "/models/{id}/versions",
    kind: "model_version",
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateResource {
    pub name: String,
    #[serde(default)]
    pub spec: Option<serde_json::Value>,
    /// `live` or `test`: a key's own when absent (naming the other is 403
    /// `wrong_environment`); for a session, the organization's when absent.
    #[serde(default)]
    pub environment: Option<Environment>,
}

#[derive(Debug, Serialize)]
pub struct ResourceView {
    pub id: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub name: String,
    pub spec: serde_json::Value,
    pub created_at: u64,
    pub environment: Environment,
}

#[derive(Debug, Serialize)]
pub struct ResourceList {
    pub items: Vec<ResourceView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Resources per page when `limit` is not given, and the most a page may hold.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// A resource list's query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
    /// `live` or `test`: a session's narrowing (a key sees only its own environment).
    pub environment: Option<String>,
}

impl ResourceView {
    fn of(r: &ResourceRecord) -> Self {
        Self {
            id: r.id.clone(),
            kind: r.kind.clone(),
            parent: r.parent.clone(),
            name: r.name.clone(),
            spec: serde_json::from_str(&r.spec_json).unwrap_or(serde_json::Value::Null),
            created_at: r.created_at,
            environment: r.environment,
        }
    }
}

pub fn routes() -> Router<AppState> {
    let mut r = Router::new();
    for k in KINDS {
        let kind = k.kind;
        r = r.route(
            k.path,
            get(
                move |s: State<AppState>,
                      a: Auth,
                      q: Result<Query<ResourceQuery>, QueryRejection>| {
                    list(s, a, kind, None, q)
                },
            )
            .post(
                move |s: State<AppState>, a: Auth, b: Body<CreateResource>| {
                    create(s, a, kind, None, b)
                },
            ),
        );
    }
    let kind = VERSIONS.kind;
    r.route(
        VERSIONS.path,
        get(
            move |s: State<AppState>,
                  a: Auth,
                  Path(id): Path<String>,
                  q: Result<Query<ResourceQuery>, QueryRejection>| {
                list(s, a, kind, Some(id), q)
            },
        )
        .post(
            move |s: State<AppState>, a: Auth, Path(id): Path<String>, b: Body<CreateResource>| {
                create(s, a, kind, Some(id), b)
            },
        ),
    )
}

/// Whether the model `id` exists in an environment `scope` sees.
fn model_visible(m: &Model, scope: env_scope::Scope, id: &str) -> bool {
    m.resources
        .get(&Model::resource_key("model", None, id))
        .is_some_and(|r| scope.sees(r.environment))
}

/// One page of resources of `kind` (under `parent`) that `scope` sees, in id order after
/// the resource key `after`: the list logic the API and the dashboard share.
pub fn list_page(
    m: &Model,
    kind: &str,
    parent: Option<&str>,
    scope: env_scope::Scope,
    after: Option<&str>,
    limit: usize,
) -> Page<ResourceView> {
    let prefix = Model::resource_key(kind, parent, "");
    let start = after.map_or(prefix.clone(), str::to_owned);
    let entries = m
        .resources
        .range(start.clone()..)
        .skip_while(|(k, _)| after.is_some() && **k == start)
        .take_while(|(k, _)| k.starts_with(&prefix));
    Page::collect(entries, limit, |r| {
        scope.sees(r.environment).then(|| ResourceView::of(r))
    })
}

async fn list(
    State(state): State<AppState>,
    auth: Auth,
    kind: &'static str,
    parent: Option<String>,
    query: Result<Query<ResourceQuery>, QueryRejection>,
) -> ApiResult<Json<ResourceList>> {
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(
            codes::INVALID_ARGUMENT,
            format!("query parameter is not valid: {}", e.body_text()),
        )
    })?;
    let limit = page::limit(q.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?;
    let scope = env_scope::scope(&auth, env_scope::parse(q.environment.as_deref())?)?;
    let list = format!("{kind}/{}", parent.as_deref().unwrap_or(""));
    let filter = format!("{scope:?}");
    let cursors = Cursors::of(&state);
    let after = cursors.open_opt(&list, &filter, q.cursor.as_deref())?;
    let p = state.store.read(|m| {
        if let Some(p) = &parent
            && !model_visible(m, scope, p)
        {
            return Err(ApiError::not_found("model"));
        }
        Ok(list_page(
            m,
            kind,
            parent.as_deref(),
            scope,
            after.as_deref(),
            limit,
        ))
    })?;
    Ok(Json(ResourceList {
        items: p.items,
        next_cursor: p.next.map(|pos| cursors.seal(&list, &filter, &pos)),
    }))
}

async fn create(
    State(state): State<AppState>,
    auth: Auth,
    kind: &'static str,
    parent: Option<String>,
    Body(req): Body<CreateResource>,
) -> ApiResult<(StatusCode, Json<ResourceView>)> {
    let name = req.name.trim();
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ApiError::bad_request(
            codes::INVALID_ARGUMENT,
            format!("name must be 1-{MAX_NAME_LEN} characters"),
        ));
    }
    let mut environment = env_scope::for_new(&auth, req.environment)?;
    // A session that names no environment puts a version beside its model.
    if let (Some(p), None, None) = (&parent, auth.environment(), req.environment) {
        environment = state
            .store
            .read(|m| {
                m.resources
                    .get(&Model::resource_key("model", None, p))
                    .map(|r| r.environment)
            })
            .unwrap_or(environment);
    }
    let rec = ResourceRecord {
        id: format!(
            "{}_{}",
            kind.split('_').next().unwrap_or(kind),
            token::random_base62(12).expose()
        ),
        kind: kind.to_owned(),
        parent: parent.clone(),
        name: name.to_owned(),
        spec_json: req.spec.unwrap_or(serde_json::Value::Null).to_string(),
        created_at: state.clock.now_secs(),
        environment,
    };
    let view = ResourceView::of(&rec);
    // The step runs on the writer thread: it owns what it uses.
    let owned = state.clone();
    let pending = state.store.write(move |m| {
        let state = owned;
        // A version lives in its model's environment.
        if let Some(p) = &parent
            && !model_visible(m, env_scope::Scope::only(environment), p)
        {
            return Err(ApiError::not_found("model"));
        }
        let audit = super::audit::change_in(
            &auth,
            environment,
            state.clock.now_ms(),
            &format!("{kind}.create"),
            rec.id.clone(),
            None,
        );
        Ok(((), vec![Change::Resource(rec), audit]))
    });
    pending.await?;
    Ok((StatusCode::CREATED, Json(view)))
}
