//! `GET /v1/rooms/{room}/presence` (the member list, paged) and
//! `POST /v1/rooms/{room}/signals` (a signal over HTTP), presence.md.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::rest::{client_key, may_publish, read_body_field, within_rates};
use super::{ApiError, AuthQuery, bad_query, identify, room_from_path};
use crate::node::Node;
use crate::protocol::{ErrorCode, MAX_SIGNAL_BYTES};

/// Members per page without `limit`.
pub const DEFAULT_MEMBERS_LIMIT: usize = 100;
/// Most members per page.
pub const MAX_MEMBERS_LIMIT: usize = 1000;

/// Query of a member page.
#[derive(Debug, Deserialize)]
pub(crate) struct MembersQuery {
    after: Option<String>,
    limit: Option<String>,
    #[serde(flatten)]
    auth: AuthQuery,
}

/// One page of a room's members, sorted: `{"room", "count", "members",
/// "next"}`, where `next` is the `after` of the following page, or null
/// when this page is the last.
pub async fn members(
    State(node): State<Arc<Node>>,
    room: Result<Path<String>, PathRejection>,
    headers: axum::http::HeaderMap,
    query: Result<Query<MembersQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(room) = room.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let room = room_from_path(&room)?;
    let Query(query) = query.map_err(|rejection| bad_query(&rejection))?;
    let identity = identify(&node, &headers, &query.auth)?;
    if !identity.may_subscribe(&room) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!("your token does not allow reading {room}"),
        ));
    }
    let limit = match query.limit.as_deref() {
        None => DEFAULT_MEMBERS_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=MAX_MEMBERS_LIMIT).contains(limit))
            .ok_or_else(|| ApiError::bad_request(format!("limit must be an integer from 1 to {MAX_MEMBERS_LIMIT}")))?,
    };
    let after = query.after.as_deref().filter(|after| !after.is_empty());
    let state = node
        .broker
        .presence_members(&room, after, limit)
        .await
        .map_err(|error| ApiError::unavailable(&error))?;
    let next = if state.members.len() == limit {
        state.members.last().cloned()
    } else {
        None
    };
    let reply = serde_json::json!({
        "room": room.as_str(),
        "count": state.count,
        "members": state.members,
        "next": next,
    });
    Ok((StatusCode::OK, axum::Json(reply)).into_response())
}

/// Sends a signal: `{"body": <JSON of at most 1 KiB>}`, answered 202.
pub async fn signal(
    State(node): State<Arc<Node>>,
    room: Result<Path<String>, PathRejection>,
    query: Result<Query<AuthQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Path(room) = room.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let room = room_from_path(&room)?;
    let Query(query) = query.map_err(|rejection| bad_query(&rejection))?;
    let identity = identify(&node, request.headers(), &query)?;
    may_publish(&identity, &room)?;
    let client = client_key(&identity, &request);
    let body = read_body_field(request, MAX_SIGNAL_BYTES, "the signal limit").await?;
    within_rates(&node, &client, body.len())?;
    node.session
        .publisher
        .signal(room, identity.subject(), &body)
        .await
        .map_err(|error| ApiError::unavailable(&error))?;
    Ok((StatusCode::ACCEPTED, axum::Json(serde_json::json!({"sent": true}))).into_response())
}
