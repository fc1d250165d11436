//! The storage layer on every backend: migrations, tenants, the plugin key-value store's
//! quotas and tenant/install isolation.

use postdog_host::ids::InstallId;
use postdog_host::storage::testing::{self, TestDatabase};
use postdog_host::storage::{KvError, KvQuota};

async fn backends() -> Vec<TestDatabase> {
    testing::all_backends().await.expect("test databases")
}

#[tokio::test]
async fn migrations_are_idempotent_and_tenants_round_trip() {
    for db in backends().await {
        db.storage
            .migrate()
            .await
            .expect("a second migrate is a no-op");
        let created = db
            .storage
            .create_tenant("Acme", "pro")
            .await
            .expect("create");
        let read = db
            .storage
            .get_tenant(&created.id)
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(read, created, "{}", db.label);
        assert_eq!(read.status, "active");
        let missing = postdog_host::ids::TenantId::new("no-such-tenant");
        assert!(
            db.storage
                .get_tenant(&missing)
                .await
                .expect("read")
                .is_none()
        );
        let other = db
            .storage
            .create_tenant("Globex", "starter")
            .await
            .expect("create");
        let names: Vec<String> = db
            .storage
            .list_tenants()
            .await
            .expect("list")
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names.len(), 2, "{}", db.label);
        assert!(names.contains(&"Acme".to_string()) && names.contains(&other.name));
        db.storage.ping().await.expect("ping");
    }
}

#[tokio::test]
async fn kv_round_trips_binary_values_and_lists_by_literal_prefix() {
    for db in backends().await {
        let tenant = db
            .storage
            .create_tenant("T", "pro")
            .await
            .expect("tenant")
            .id;
        let kv = db
            .storage
            .tenant(&tenant)
            .plugin_kv(&InstallId::new("i"), KvQuota::default());
        let binary: Vec<u8> = (0..=255).collect();
        kv.set("bin", &binary).await.expect("set");
        assert_eq!(
            kv.get("bin").await.expect("get"),
            Some(binary),
            "{}",
            db.label
        );
        kv.set("bin", b"replaced").await.expect("replace");
        assert_eq!(
            kv.get("bin").await.expect("get").as_deref(),
            Some(&b"replaced"[..])
        );
        for key in ["a%b", "a_b", "axb", "a%c", "b", "é-1", "é-2"] {
            kv.set(key, b"v").await.expect("set");
        }
        assert_eq!(
            kv.list_keys("a%", 100).await.expect("list"),
            ["a%b", "a%c"],
            "{}: % is literal",
            db.label
        );
        assert_eq!(
            kv.list_keys("a_", 100).await.expect("list"),
            ["a_b"],
            "{}: _ is literal",
            db.label
        );
        assert_eq!(
            kv.list_keys("é", 100).await.expect("list"),
            ["é-1", "é-2"],
            "{}",
            db.label
        );
        assert_eq!(
            kv.list_keys("", 3).await.expect("list"),
            ["a%b", "a%c", "a_b"],
            "{}: byte order",
            db.label
        );
        assert!(kv.delete("b").await.expect("delete"));
        assert!(!kv.delete("b").await.expect("delete again"));
        assert!(matches!(kv.get("").await, Err(KvError::InvalidKey { .. })));
    }
}

#[tokio::test]
async fn kv_quotas_refuse_without_touching_stored_data() {
    let quota = KvQuota {
        max_key_bytes: 8,
        max_value_bytes: 100,
        max_total_bytes: 300,
        max_keys: 4,
    };
    for db in backends().await {
        let tenant = db
            .storage
            .create_tenant("T", "pro")
            .await
            .expect("tenant")
            .id;
        let kv = db
            .storage
            .tenant(&tenant)
            .plugin_kv(&InstallId::new("i"), quota);
        assert!(matches!(
            kv.set("123456789", b"v").await,
            Err(KvError::KeyTooLarge { len: 9, max: 8 })
        ));
        assert!(matches!(
            kv.set("k", &[0; 101]).await,
            Err(KvError::ValueTooLarge { len: 101, max: 100 })
        ));
        // 2 keys of 1 + 99 bytes = 200 bytes.
        kv.set("a", &[1; 99]).await.expect("set a");
        kv.set("b", &[2; 99]).await.expect("set b");
        // Replacing `a` with a bigger value counts the difference only: 200 - 100 + 100.
        kv.set("a", &[3; 99]).await.expect("replace a within quota");
        let error = kv.set("c", &[4; 100]).await.unwrap_err();
        assert!(
            matches!(
                error,
                KvError::QuotaExceeded {
                    unit: "bytes",
                    would_use: 301,
                    max: 300
                }
            ),
            "{}: {error}",
            db.label
        );
        assert!(error.to_string().contains("delete keys or store less"));
        kv.set("c", &[4; 99])
            .await
            .expect("exactly at the byte quota");
        assert_eq!(kv.usage().await.expect("usage"), (3, 300), "{}", db.label);
        kv.delete("c").await.expect("delete");
        kv.set("c", b"").await.expect("c");
        kv.set("d", b"").await.expect("d");
        assert!(matches!(
            kv.set("e", b"").await,
            Err(KvError::QuotaExceeded {
                unit: "keys",
                would_use: 5,
                max: 4
            })
        ));
        assert_eq!(
            kv.get("a").await.expect("get"),
            Some(vec![3; 99]),
            "{}: refusals changed nothing",
            db.label
        );
        assert_eq!(
            kv.list_keys("", 10).await.expect("list"),
            ["a", "b", "c", "d"]
        );
    }
}

#[tokio::test]
async fn kv_is_isolated_by_tenant_and_install() {
    for db in backends().await {
        let a = db
            .storage
            .create_tenant("A", "pro")
            .await
            .expect("tenant")
            .id;
        let b = db
            .storage
            .create_tenant("B", "pro")
            .await
            .expect("tenant")
            .id;
        let quota = KvQuota::default();
        let stores = [
            db.storage
                .tenant(&a)
                .plugin_kv(&InstallId::new("one"), quota),
            db.storage
                .tenant(&a)
                .plugin_kv(&InstallId::new("two"), quota),
            db.storage
                .tenant(&b)
                .plugin_kv(&InstallId::new("one"), quota),
        ];
        for (index, kv) in stores.iter().enumerate() {
            kv.set("shared-key", format!("value-{index}").as_bytes())
                .await
                .expect("set");
        }
        for (index, kv) in stores.iter().enumerate() {
            assert_eq!(
                kv.get("shared-key").await.expect("get"),
                Some(format!("value-{index}").into_bytes()),
                "{}",
                db.label
            );
            assert_eq!(kv.list_keys("", 10).await.expect("list"), ["shared-key"]);
            assert_eq!(kv.usage().await.expect("usage").0, 1);
        }
        assert!(stores[0].delete("shared-key").await.expect("delete"));
        assert!(
            stores[1].get("shared-key").await.expect("get").is_some(),
            "{}",
            db.label
        );
        assert!(
            stores[2].get("shared-key").await.expect("get").is_some(),
            "{}",
            db.label
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_kv_writes_all_succeed() {
    for db in backends().await {
        let tenant = db
            .storage
            .create_tenant("T", "pro")
            .await
            .expect("tenant")
            .id;
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..20 {
            let kv = db
                .storage
                .tenant(&tenant)
                .plugin_kv(&InstallId::new("i"), KvQuota::default());
            tasks.spawn(async move {
                for round in 0..5 {
                    kv.set(&format!("w{writer:02}-{round}"), b"value").await?;
                }
                Ok::<_, KvError>(())
            });
        }
        while let Some(result) = tasks.join_next().await {
            result
                .expect("task")
                .unwrap_or_else(|error| panic!("{}: {error}", db.label));
        }
        let kv = db
            .storage
            .tenant(&tenant)
            .plugin_kv(&InstallId::new("i"), KvQuota::default());
        assert_eq!(kv.usage().await.expect("usage").0, 100, "{}", db.label);
    }
}

/// The authentication cache: a change made through one `Storage` is seen by it at once;
/// another process on the same database (a second `Storage` here) sees it within the
/// cache's one-second lifetime, never later.
#[tokio::test]
async fn cached_keys_and_tenants_follow_changes_on_this_and_other_nodes() {
    use postdog_host::storage::{Role, Storage};
    for db in backends().await {
        let tenant = db
            .storage
            .create_tenant("Cache", "pro")
            .await
            .expect("tenant");
        let tenant_db = db.storage.tenant(&tenant.id);
        let key = tenant_db
            .create_api_key("k", Role::Admin)
            .await
            .expect("key");
        let other_node = Storage::connect(&db.url).await.expect("second handle");
        for node in [&db.storage, &other_node] {
            assert!(
                node.authenticate_key(&key.secret)
                    .await
                    .expect("read")
                    .is_some()
            );
            assert_eq!(
                node.authenticate_tenant(&tenant.id)
                    .await
                    .expect("read")
                    .map(|t| t.plan.clone()),
                Some("pro".to_string())
            );
        }
        // Changes through the first handle: it sees them immediately.
        assert!(tenant_db.revoke_api_key(&key.key.id).await.expect("revoke"));
        db.storage
            .set_tenant_plan(&tenant.id, "business")
            .await
            .expect("plan");
        assert!(
            db.storage
                .authenticate_key(&key.secret)
                .await
                .expect("read")
                .is_none(),
            "{}",
            db.label
        );
        assert_eq!(
            db.storage
                .authenticate_tenant(&tenant.id)
                .await
                .expect("read")
                .map(|t| t.plan.clone()),
            Some("business".to_string())
        );
        // The other handle sees them once its entries expire (at most one second).
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        assert!(
            other_node
                .authenticate_key(&key.secret)
                .await
                .expect("read")
                .is_none(),
            "{}",
            db.label
        );
        assert_eq!(
            other_node
                .authenticate_tenant(&tenant.id)
                .await
                .expect("read")
                .map(|t| t.plan.clone()),
            Some("business".to_string())
        );
        other_node.close().await;
    }
}
