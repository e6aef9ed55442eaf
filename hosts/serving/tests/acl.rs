//! Redis ACLs: each tenant's user reaches only its feature groups' keys, through the
//! serving path and directly.

mod common;

use common::*;
use lockstep_abi::{Value, ValueType};
use lockstep_cache::{CacheEntry, RedisCache, cache_key, tenant_acl};
use lockstep_client::api::{FeatureRequest, Source};
use lockstep_online::OnlineStore;
use lockstep_sdk::ManifestBuilder;
use lockstep_serving::{FeatureServer, ServedGroup};
use lockstep_testkit::Redis;
use std::sync::Arc;
use std::time::Duration;

/// Another tenant's group.
fn fraud_group() -> ServedGroup {
    let manifest = ManifestBuilder::new("fraud_score", "2.0.0")
        .field("card", ValueType::String, "card id")
        .field("ts", ValueType::Timestamp, "event time")
        .entity_key("card")
        .event_time("ts")
        .feature("score", ValueType::Float64, "score", Value::Float64(-1.0))
        .build();
    ServedGroup::new(&manifest, "f00d")
}

fn secret_entry(entity: &str) -> CacheEntry {
    CacheEntry {
        key: cache_key("fraud_score@2.0.0", entity),
        event_time: T0,
        value: serde_json::json!({"event_time": T0, "plugin_hash": "f00d", "row": {"card": entity, "score": 0.97}})
            .to_string(),
    }
}

#[test]
fn a_tenant_reads_its_groups_and_nothing_of_another_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn OnlineStore> = Arc::new(embedded(dir.path(), 20));
    let redis = Redis::start(&[]);
    let rt = runtime();
    rt.block_on(async {
        let admin = redis::Client::open(redis.url()).unwrap();
        let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
        for (user, password, group) in [
            ("cards", "cards-pw", "card_stats@1.2.0"),
            ("fraud", "fraud-pw", "fraud_score@2.0.0"),
        ] {
            let mut setuser = redis::cmd("ACL");
            setuser.arg("SETUSER");
            for rule in tenant_acl(user, password, &[group.to_owned()], true) {
                setuser.arg(rule);
            }
            let _: () = setuser.query_async(&mut admin).await.unwrap();
        }
        let url = |user: &str, password: &str| {
            redis
                .url()
                .replace("redis://", &format!("redis://{user}:{password}@"))
        };
        let connect = |user: &str, password: &str| {
            let url = url(user, password);
            async move { RedisCache::connect(&url, None, Duration::from_secs(2)).await }
        };

        // The fraud tenant writes its secret scores.
        let fraud = connect("fraud", "fraud-pw").await.unwrap();
        fraud
            .put(&[secret_entry("card-1"), secret_entry("card-2")])
            .await
            .unwrap();

        // The cards tenant serves its own group from the cache…
        let cards = connect("cards", "cards-pw").await.unwrap();
        // A server of the cards tenant, serving `group` through its cache user.
        let server_of = |group: ServedGroup| {
            FeatureServer::new(vec![group], store.clone(), Some(cards.clone()), generous()).unwrap()
        };
        let server = server_of(served());
        let request = FeatureRequest::new("card_stats", ["card-1", "card-2"]);
        assert!(
            server
                .get(&request)
                .await
                .unwrap()
                .entities
                .iter()
                .all(|e| e.source == Source::Store)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            server
                .get(&request)
                .await
                .unwrap()
                .entities
                .iter()
                .all(|e| e.source == Source::Cache)
        );

        // …and cannot read, write or delete the fraud tenant's keys.
        let secret = vec![cache_key("fraud_score@2.0.0", "card-1")];
        for err in [
            cards.get(&secret).await.unwrap_err().to_string(),
            cards
                .put(&[secret_entry("card-1")])
                .await
                .unwrap_err()
                .to_string(),
            cards.delete(&secret).await.unwrap_err().to_string(),
        ] {
            assert!(
                err.contains("NOPERM") || err.contains("no permissions"),
                "{err}"
            );
            assert!(!err.contains("cards-pw"), "{err}");
        }
        // A server of the cards tenant misconfigured with the fraud group serves
        // defaults, degraded: never the other tenant's values.
        let leaky = server_of(fraud_group());
        let answer = leaky
            .get(&FeatureRequest::new("fraud_score", ["card-1"]))
            .await
            .unwrap()
            .parsed();
        assert!(answer.degraded);
        assert_eq!(answer.entities[0].source, Source::Default);
        assert_eq!(answer.entities[0].values, vec![serde_json::json!(-1.0)]);

        // Directly: no key listing, no other commands, no other keys.
        let raw = redis::Client::open(url("cards", "cards-pw")).unwrap();
        let mut raw = raw.get_multiplexed_async_connection().await.unwrap();
        for command in [
            redis::cmd("KEYS").arg("*").clone(),
            redis::cmd("SCAN").arg(0).clone(),
            redis::cmd("FLUSHALL").clone(),
            redis::cmd("HGETALL").arg(&secret[0]).clone(),
            redis::cmd("SET")
                .arg(cache_key("card_stats@1.2.0", "x"))
                .arg("v")
                .clone(),
            redis::cmd("CONFIG").arg("GET").arg("*").clone(),
            redis::cmd("ACL").arg("LIST").clone(),
        ] {
            let err = command
                .query_async::<redis::Value>(&mut raw)
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("NOPERM") || err.to_string().contains("no permissions"),
                "{err}"
            );
        }
        // The secret is intact, and a wrong password gets nothing.
        let scores: Vec<Option<(i64, String)>> = fraud.get(&secret).await.unwrap();
        assert!(scores[0].as_ref().is_some_and(|(_, v)| v.contains("0.97")));
        let wrong = connect("cards", "guess")
            .await
            .err()
            .expect("a wrong password is refused");
        assert!(!wrong.to_string().contains("guess"), "{wrong}");
    });
}
