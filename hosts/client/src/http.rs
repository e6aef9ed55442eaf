//! [`Client`]: `POST /v1/features` (and its batch form) over HTTP.

use crate::api::{BatchRequest, BatchResponse, ErrorBody, FeatureRequest, FeatureResponse};
use std::time::Duration;
use thiserror::Error;

/// Why a call failed, naming the URL.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The server could not be reached, or the call timed out.
    #[error("{url}: {message}")]
    Http {
        /// The URL called.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The server refused the request.
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        /// The URL called.
        url: String,
        /// The status code.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The answer is not a feature response.
    #[error("{url}: unreadable answer: {message}")]
    Decode {
        /// The URL called.
        url: String,
        /// Why.
        message: String,
    },
}

/// A client of one `lockstep serve`; cheap to clone (connections are pooled).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    features_url: String,
    /// `Bearer <token>` for a server with tenants; never shown by `Debug`.
    authorization: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("features_url", &self.features_url)
            .field("token", &self.authorization.as_ref().map(|_| "<secret>"))
            .finish()
    }
}

impl Client {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:6566`), giving up
    /// on a call after 10 s.
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        Self::with_timeout(base_url, Duration::from_secs(10))
    }

    /// A client that gives up on a call after `timeout`. The server answers within its
    /// own timeout, degraded if need be; this bounds a server that is gone.
    pub fn with_timeout(base_url: &str, timeout: Duration) -> Result<Self, ClientError> {
        let features_url = format!("{}/v1/features", base_url.trim_end_matches('/'));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ClientError::Http {
                url: features_url.clone(),
                message: e.to_string(),
            })?;
        Ok(Client {
            http,
            features_url,
            authorization: None,
        })
    }

    /// The same client, sending `token` as its tenant's bearer token.
    pub fn with_bearer_token(mut self, token: &str) -> Self {
        self.authorization = Some(format!("Bearer {token}"));
        self
    }

    /// Reads features.
    pub async fn get_features(
        &self,
        request: &FeatureRequest,
    ) -> Result<FeatureResponse, ClientError> {
        self.post(&self.features_url, request).await
    }

    /// Reads features of several groups in one call (`POST /v1/features/batch`):
    /// one answer per request, in order.
    pub async fn get_features_batch(
        &self,
        requests: &[FeatureRequest],
    ) -> Result<BatchResponse, ClientError> {
        let url = format!("{}/batch", self.features_url);
        let batch = BatchRequest {
            requests: requests.to_vec(),
        };
        self.post(&url, &batch).await
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        request: &impl serde::Serialize,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Decode {
            url: url.to_owned(),
            message: e.to_string(),
        })?;
        let http = |e: reqwest::Error| ClientError::Http {
            url: url.to_owned(),
            message: e.to_string(),
        };
        let mut call = self
            .http
            .post(url)
            .header("content-type", "application/json");
        if let Some(authorization) = &self.authorization {
            call = call.header("authorization", authorization);
        }
        let answer = call.body(body).send().await.map_err(http)?;
        let status = answer.status();
        let bytes = answer.bytes().await.map_err(http)?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: url.to_owned(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_that_is_not_there_is_an_error_naming_its_url() {
        let client = Client::with_timeout("http://127.0.0.1:9/", Duration::from_secs(2)).unwrap();
        let err = client
            .get_features(&FeatureRequest::new("g", ["a"]))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("http://127.0.0.1:9/v1/features: "),
            "{err}"
        );
    }
}
