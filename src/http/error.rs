//! The one error type of the HTTP endpoints: a stable code and a sentence
//! for the client, `{"error":{"code","message"}}`, the cause logged here.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::protocol::{ErrorCode, PublishStored};

/// An HTTP error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retry_after: Option<Duration>,
    stored: Option<PublishStored>,
}

impl ApiError {
    /// An error with a status, a code and a message for the client.
    #[must_use]
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            stored: None,
        }
    }

    /// 400 `bad_request`.
    #[must_use]
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    /// 400 `invalid_room`.
    #[must_use]
    pub fn invalid_room(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRoom, message)
    }

    /// 503 `unavailable`: the broker did not answer.
    #[must_use]
    pub fn unavailable(error: &crate::broker::BrokerError) -> Self {
        tracing::warn!(%error, "request failed: broker unavailable");
        let mut api = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "the message store is unavailable; retry shortly",
        );
        api.retry_after = Some(Duration::from_secs(1));
        api
    }

    /// 503 `unavailable` for a publish, saying whether it may have been
    /// stored (`stored` in the body, as in the WebSocket error frame).
    #[must_use]
    pub fn publish_unavailable(error: &crate::broker::BrokerError) -> Self {
        let stored = error.publish_stored();
        tracing::warn!(%error, stored = ?stored, "publish failed: broker unavailable");
        let mut api = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            crate::session::unavailable_publish_message(stored),
        );
        api.retry_after = Some(Duration::from_secs(1));
        api.stored = Some(stored);
        api
    }

    /// 503 `overloaded` while the node drains.
    #[must_use]
    pub fn draining() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Overloaded,
            "this node is shutting down; connect again to reach another node",
        )
    }

    /// Adds a `Retry-After`.
    #[must_use]
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// The protocol code.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}});
        if let Some(wait) = self.retry_after {
            body["error"]["retry_after_ms"] =
                serde_json::Value::from(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1));
        }
        if let Some(stored) = self.stored {
            // In the error object, like the WebSocket frame's field, and at
            // the top level, where protocol.md's sentence may also be read.
            body["error"]["stored"] = stored.to_json();
            body["stored"] = stored.to_json();
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        // For the router's counting layer (`relay_errors_total`).
        response.extensions_mut().insert(self.code);
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
