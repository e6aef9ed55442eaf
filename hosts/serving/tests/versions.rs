//! Versions of one group served side by side: semantic-version order, where a
//! pre-release is its own version and comes before its release.

mod common;

use common::*;
use lockstep_online::{EmbeddedStore, OnlineStore};
use lockstep_serving::{FeatureServer, ServeConfig, ServedGroup};
use std::sync::Arc;

fn version(v: &str) -> ServedGroup {
    let mut m = manifest();
    m.version = v.into();
    ServedGroup::new(&m, HASH)
}

#[test]
fn a_pre_release_and_its_release_are_two_versions_and_the_release_is_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn OnlineStore> = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
    let served = ["1.2.0-rc1", "1.10.0", "1.2.0", "1.9.3"]
        .map(version)
        .to_vec();
    let server =
        FeatureServer::new(served, store.clone(), None, ServeConfig::default()).expect("served");
    let got = |v: Option<&str>| {
        server
            .group("card_stats", v)
            .unwrap_or_else(|e| panic!("{v:?}: {e}"))
            .group
            .version
            .clone()
    };
    assert_eq!(got(None), "1.10.0", "the highest release, numerically");
    assert_eq!(got(Some("1.2.0-rc1")), "1.2.0-rc1");
    assert_eq!(got(Some("1.2.0")), "1.2.0");

    // The same version twice is still refused, and so is one that is not a version.
    let twice = FeatureServer::new(
        vec![version("1.2.0"), version("1.2.0")],
        store.clone(),
        None,
        ServeConfig::default(),
    );
    assert!(twice.is_err_and(|e| e.to_string().contains("served twice")));
    let not_a_version =
        FeatureServer::new(vec![version("1.2")], store, None, ServeConfig::default());
    assert!(not_a_version.is_err_and(|e| e.to_string().contains("not a semantic version")));
}
