//! S3 in a host built without the `s3` feature: the same types, with no client behind them.
//! Nothing reaches them in practice, since the settings refuse every `s3://` location at
//! start-up ([`super::s3_available`]); a source built anyway fails each fetch with that reason.

use super::{ModelSource, S3Settings, SourceError, SourceFuture, s3_available};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug)]
pub struct S3Connector;

impl S3Connector {
    pub fn new(_settings: S3Settings) -> Arc<Self> {
        Arc::new(Self)
    }

    pub async fn forget(&self) {}

    pub async fn reconnect(&self) {}
}

#[derive(Clone, Debug)]
pub struct S3Source {
    connector: Arc<S3Connector>,
}

impl S3Source {
    pub fn new(connector: Arc<S3Connector>, _name: &str, _bucket: &str, _prefix: &str, _sha256: BTreeMap<String, String>) -> Self {
        Self { connector }
    }

    pub fn single_object(connector: Arc<S3Connector>, _name: &str, _bucket: &str, _key: &str) -> Self {
        Self { connector }
    }

    pub fn connector(&self) -> &Arc<S3Connector> {
        &self.connector
    }
}

impl ModelSource for S3Source {
    fn fetch(&self) -> SourceFuture<'_> {
        let reason = s3_available().err().unwrap_or("S3 is not built in");
        Box::pin(async move { Err(SourceError::Unavailable(reason.to_string())) })
    }
}
