//! Where and as whom to reach AWS: one set of options for every service, resolved from
//! the standard AWS environment by one set of rules. See the crate README.

use std::fmt;

/// The region used when neither the options nor the environment name one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Endpoint, region and credentials for an AWS service. Unset fields come from the
/// standard AWS environment; see [`AwsOptions::endpoint_for`] and
/// [`AwsOptions::region`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AwsOptions {
    /// Endpoint URL of the service (e.g. a moto server on loopback); AWS's own when
    /// unset and not in the environment.
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Access key id and secret; the AWS credential chain when unset.
    pub credentials: Option<(String, String)>,
}

impl fmt::Debug for AwsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsOptions")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(key, _)| (key, "<secret>")),
            )
            .finish()
    }
}

/// The process environment, as the resolution rules read it.
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The first non-empty value of `names` in `env`.
fn first(env: &impl Fn(&str) -> Option<String>, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|name| env(name).filter(|value| !value.is_empty()))
}

impl AwsOptions {
    /// Options for a service at `endpoint`, the rest from the environment.
    pub fn at(endpoint: impl Into<String>) -> Self {
        AwsOptions {
            endpoint: Some(endpoint.into()),
            ..AwsOptions::default()
        }
    }

    /// The endpoint for `service` (its AWS SDK id in upper case, e.g. `S3`,
    /// `KINESIS`): the explicit one, else `AWS_ENDPOINT_URL_<SERVICE>`, else
    /// `AWS_ENDPOINT_URL`, else none (AWS itself). The AWS SDK resolves the same way.
    pub fn endpoint_for(&self, service: &str) -> Option<String> {
        self.endpoint_in(service, process_env)
    }

    fn endpoint_in(&self, service: &str, env: impl Fn(&str) -> Option<String>) -> Option<String> {
        self.endpoint.clone().or_else(|| {
            first(
                &env,
                &[&format!("AWS_ENDPOINT_URL_{service}"), "AWS_ENDPOINT_URL"],
            )
        })
    }

    /// The region: the explicit one, else `AWS_REGION`, else `AWS_DEFAULT_REGION`,
    /// else [`DEFAULT_REGION`].
    pub fn region(&self) -> String {
        self.region_in(process_env)
    }

    fn region_in(&self, env: impl Fn(&str) -> Option<String>) -> String {
        self.region
            .clone()
            .or_else(|| first(&env, &["AWS_REGION", "AWS_DEFAULT_REGION"]))
            .unwrap_or_else(|| DEFAULT_REGION.to_owned())
    }

    /// The AWS SDK's configuration for these options: what is set here overrides the
    /// environment, what is not comes from it (the SDK's own chain: environment,
    /// profile, instance credentials).
    #[cfg(feature = "sdk")]
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(url) = &self.endpoint {
            loader = loader.endpoint_url(url);
        }
        if let Some(region) = &self.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some((key, secret)) = &self.credentials {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                key, secret, None, None, "lockstep",
            ));
        }
        loader.load().await
    }
}

/// An `object_store` S3 client for `bucket` with `options` (unset fields from the
/// environment, as every AWS client of Lockstep resolves them). The offline store and
/// the audit log reach S3 through it.
#[cfg(feature = "object-store")]
pub fn s3_object_store(
    options: &AwsOptions,
    bucket: &str,
) -> Result<std::sync::Arc<dyn object_store::ObjectStore>, object_store::Error> {
    s3_object_store_encrypted(options, bucket, None)
}

/// `location` — a local directory (created if needed) or `s3://bucket/prefix` — as an
/// object store and the prefix its keys take (empty for a directory, whose store is
/// rooted there). Logs kept beside the offline store (audit, served features) open
/// their location with it.
#[cfg(feature = "object-store")]
pub fn object_store_at(
    location: &str,
    options: &AwsOptions,
) -> Result<
    (std::sync::Arc<dyn object_store::ObjectStore>, String),
    Box<dyn std::error::Error + Send + Sync>,
> {
    if location.starts_with("s3://") || location.starts_with("s3a://") {
        let (bucket, prefix) = parse_s3_url(location).ok_or("expected s3://BUCKET[/PREFIX]")?;
        Ok((s3_object_store(options, &bucket)?, prefix))
    } else {
        std::fs::create_dir_all(location)?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(location)?;
        Ok((std::sync::Arc::new(store), String::new()))
    }
}

/// [`s3_object_store`] whose puts ask S3 to encrypt each object with SSE-KMS under
/// `kms_key_id` (a key id, ARN or alias) when one is given.
#[cfg(feature = "object-store")]
pub fn s3_object_store_encrypted(
    options: &AwsOptions,
    bucket: &str,
    kms_key_id: Option<&str>,
) -> Result<std::sync::Arc<dyn object_store::ObjectStore>, object_store::Error> {
    use object_store::aws::AmazonS3Builder;
    use object_store::{BackoffConfig, RetryConfig};
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_region(options.region());
    if let Some((key, secret)) = &options.credentials {
        builder = builder
            .with_access_key_id(key)
            .with_secret_access_key(secret);
    }
    // A few quick retries, not object_store's default of minutes: an unreachable
    // store should fail the job promptly with its name, not hang it.
    builder = builder.with_retry(RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 4,
        retry_timeout: std::time::Duration::from_secs(30),
    });
    if let Some(endpoint) = options.endpoint_for("S3") {
        builder = builder
            .with_allow_http(endpoint.starts_with("http://"))
            .with_endpoint(endpoint);
    }
    if let Some(key) = kms_key_id {
        builder = builder.with_sse_kms_encryption(key);
    }
    Ok(std::sync::Arc::new(builder.build()?))
}

/// Splits `s3://bucket/prefix` into bucket and prefix (without slashes at the ends).
pub fn parse_s3_url(url: &str) -> Option<(String, String)> {
    let rest = url
        .strip_prefix("s3://")
        .or_else(|| url.strip_prefix("s3a://"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return None;
    }
    Some((bucket.to_owned(), prefix.trim_matches('/').to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_secret() {
        let options = AwsOptions {
            endpoint: Some("http://127.0.0.1:5000".into()),
            region: Some("eu-west-1".into()),
            credentials: Some(("AKIDEXAMPLE".into(), "wJalrXUtnFEMI-very-secret".into())),
        };
        let printed = format!("{options:?}");
        assert!(printed.contains("AKIDEXAMPLE"), "{printed}");
        assert!(!printed.contains("very-secret"), "{printed}");
    }

    #[test]
    fn explicit_settings_win_over_the_environment() {
        // The environment is process-wide: read, never set, so tests stay independent.
        let options = AwsOptions {
            endpoint: Some("http://explicit".into()),
            region: Some("ap-south-1".into()),
            credentials: None,
        };
        assert_eq!(
            options.endpoint_for("S3").as_deref(),
            Some("http://explicit")
        );
        assert_eq!(options.region(), "ap-south-1");
    }
}
