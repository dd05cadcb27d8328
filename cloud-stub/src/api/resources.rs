//! Thin resource endpoints, one per scope, so that scopes guard something real: models and
//! their versions, device groups, rollouts, federations, training rounds and experiments.
//! Each stores `{name, spec}` objects and lists them.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use octomil_common::token;
use octomil_common::wire::codes;
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Body};
use crate::store::{Change, Model, ResourceRecord};

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
}

#[derive(Debug, Serialize)]
pub struct ResourceList {
    pub items: Vec<ResourceView>,
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
        }
    }
}

pub fn routes() -> Router<AppState> {
    let mut r = Router::new();
    for k in KINDS {
        let kind = k.kind;
        r = r.route(
            k.path,
            get(move |s: State<AppState>, _: Auth| list(s, kind, None)).post(
                move |s: State<AppState>, a: Auth, b: Body<CreateResource>| {
                    create(s, a, kind, None, b)
                },
            ),
        );
    }
    let kind = VERSIONS.kind;
    r.route(
        VERSIONS.path,
        get(move |s: State<AppState>, _: Auth, Path(id): Path<String>| list(s, kind, Some(id)))
            .post(
                move |s: State<AppState>,
                      a: Auth,
                      Path(id): Path<String>,
                      b: Body<CreateResource>| { create(s, a, kind, Some(id), b) },
            ),
    )
}

async fn list(
    State(state): State<AppState>,
    kind: &'static str,
    parent: Option<String>,
) -> ApiResult<Json<ResourceList>> {
    let prefix = Model::resource_key(kind, parent.as_deref(), "");
    let items = state.store.read(|m| {
        if let Some(p) = &parent
            && !m
                .resources
                .contains_key(&Model::resource_key("model", None, p))
        {
            return Err(ApiError::not_found("model"));
        }
        Ok(m.resources
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, r)| ResourceView::of(r))
            .collect())
    })?;
    Ok(Json(ResourceList { items }))
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
    };
    let view = ResourceView::of(&rec);
    // The step runs on the writer thread: it owns what it uses.
    let owned = state.clone();
    let pending = state.store.write(move |m| {
        let state = owned;
        if let Some(p) = &parent
            && !m
                .resources
                .contains_key(&Model::resource_key("model", None, p))
        {
            return Err(ApiError::not_found("model"));
        }
        let audit = super::audit::change(
            &auth,
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
