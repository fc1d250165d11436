//! Tenant isolation as a property: random sequences of API operations by several tenants
//! — two ordinary tenants, a reseller and its sub-tenant reached through
//! `PostDog-Act-As` — against a running `postdog serve` (SQLite and PostgreSQL). A model
//! tracks who owns which contact; after every operation the API must agree with it: no
//! caller ever reads, lists, finds, exports, changes or deletes another tenant's contact,
//! and a refused change leaves the owner's contact untouched.

use std::collections::{BTreeMap, BTreeSet};

use postdog_tests::{Api, PostdogServer};
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
enum Op {
    Create {
        actor: usize,
        phone: u8,
        name: u8,
    },
    Get {
        actor: usize,
        target: usize,
    },
    Patch {
        actor: usize,
        target: usize,
        name: u8,
    },
    Delete {
        actor: usize,
        target: usize,
    },
    Note {
        actor: usize,
        target: usize,
    },
    Merge {
        actor: usize,
        target: usize,
        source: usize,
    },
    List {
        actor: usize,
    },
    Search {
        actor: usize,
        phone: u8,
    },
    Export {
        actor: usize,
    },
}

const ACTORS: usize = 4;

fn op() -> impl Strategy<Value = Op> {
    let actor = 0..ACTORS;
    let target = 0..64_usize;
    prop_oneof![
        3 => (actor.clone(), 0..6_u8, any::<u8>()).prop_map(|(actor, phone, name)| Op::Create { actor, phone, name }),
        2 => (actor.clone(), target.clone()).prop_map(|(actor, target)| Op::Get { actor, target }),
        2 => (actor.clone(), target.clone(), any::<u8>()).prop_map(|(actor, target, name)| Op::Patch { actor, target, name }),
        1 => (actor.clone(), target.clone()).prop_map(|(actor, target)| Op::Delete { actor, target }),
        1 => (actor.clone(), target.clone()).prop_map(|(actor, target)| Op::Note { actor, target }),
        1 => (actor.clone(), target.clone(), target.clone()).prop_map(|(actor, target, source)| Op::Merge { actor, target, source }),
        1 => actor.clone().prop_map(|actor| Op::List { actor }),
        1 => (actor.clone(), 0..6_u8).prop_map(|(actor, phone)| Op::Search { actor, phone }),
        1 => actor.prop_map(|actor| Op::Export { actor }),
    ]
}

/// A contact the model knows: its owner and its current name (`None` once deleted).
struct Known {
    id: String,
    owner: usize,
    phone: String,
    name: Option<String>,
}

fn phone(seed: u8) -> String {
    format!("+1212555{:04}", 100 + u16::from(seed))
}

fn ids(listing: &Value) -> BTreeSet<String> {
    listing["data"]
        .as_array()
        .map(|data| {
            data.iter()
                .filter_map(|contact| contact["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The four callers: tenant A, tenant B, reseller R, and R acting on its sub-tenant S.
async fn actors(server: &PostdogServer) -> Vec<Api> {
    let (a, _) = Api::tenant(server, "pro").await;
    let (b, _) = Api::tenant(server, "pro").await;
    let (reseller, _) = Api::tenant(server, "business").await;
    let (status, sub) = reseller
        .post("/v1/sub-tenants", json!({"name": "S", "plan": "pro"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sub}");
    let mut acting = reseller.clone();
    acting.act_as = Some(
        sub["tenant_id"]
            .as_str()
            .expect("sub-tenant id")
            .to_string(),
    );
    vec![a, b, reseller, acting]
}

async fn run(server: &PostdogServer, ops: Vec<Op>) {
    let actors = actors(server).await;
    let mut known: Vec<Known> = Vec::new();
    let live = |known: &Vec<Known>, actor: usize| -> BTreeSet<String> {
        known
            .iter()
            .filter(|contact| contact.owner == actor && contact.name.is_some())
            .map(|contact| contact.id.clone())
            .collect()
    };
    for op in ops {
        match op {
            Op::Create {
                actor,
                phone: seed,
                name,
            } => {
                let name = format!("C{name}");
                let (status, body) = actors[actor]
                    .post("/v1/contacts", json!({"name": name, "phone": phone(seed)}))
                    .await;
                let clash = known.iter().find(|contact| {
                    contact.owner == actor && contact.name.is_some() && contact.phone == phone(seed)
                });
                match clash {
                    // Uniqueness is per tenant: the 409 names the caller's own contact.
                    Some(existing) => {
                        assert_eq!(status, StatusCode::CONFLICT, "{body}");
                        assert_eq!(body["existing_contact_id"], json!(existing.id));
                    }
                    None => {
                        assert_eq!(status, StatusCode::CREATED, "{body}");
                        known.push(Known {
                            id: body["id"].as_str().expect("id").to_string(),
                            owner: actor,
                            phone: phone(seed),
                            name: Some(name),
                        });
                    }
                }
            }
            Op::Get { actor, target }
            | Op::Note { actor, target }
            | Op::Delete { actor, target }
            | Op::Patch { actor, target, .. }
                if known.is_empty() =>
            {
                let _ = (actor, target);
            }
            Op::Get { actor, target } => {
                let contact = &known[target % known.len()];
                let (status, body) = actors[actor]
                    .get(&format!("/v1/contacts/{}", contact.id))
                    .await;
                if contact.owner == actor && contact.name.is_some() {
                    assert_eq!(status, StatusCode::OK);
                    assert_eq!(body["name"], json!(contact.name));
                } else {
                    assert_eq!(
                        status,
                        StatusCode::NOT_FOUND,
                        "actor {actor} read {}: {body}",
                        contact.id
                    );
                }
            }
            Op::Patch {
                actor,
                target,
                name,
            } => {
                let index = target % known.len();
                let id = known[index].id.clone();
                let (status, _) = actors[actor]
                    .patch(
                        &format!("/v1/contacts/{id}"),
                        json!({"name": format!("P{name}")}),
                    )
                    .await;
                if known[index].owner == actor && known[index].name.is_some() {
                    assert_eq!(status, StatusCode::OK);
                    known[index].name = Some(format!("P{name}"));
                } else {
                    assert_eq!(status, StatusCode::NOT_FOUND);
                }
            }
            Op::Delete { actor, target } => {
                let index = target % known.len();
                let id = known[index].id.clone();
                let (status, _) = actors[actor].delete(&format!("/v1/contacts/{id}")).await;
                if known[index].owner == actor && known[index].name.is_some() {
                    assert_eq!(status, StatusCode::NO_CONTENT);
                    known[index].name = None;
                } else {
                    assert_eq!(status, StatusCode::NOT_FOUND);
                }
            }
            Op::Note { actor, target } => {
                let contact = &known[target % known.len()];
                let (status, _) = actors[actor]
                    .post(
                        &format!("/v1/contacts/{}/notes", contact.id),
                        json!({"body": "hi"}),
                    )
                    .await;
                let expected = if contact.owner == actor && contact.name.is_some() {
                    StatusCode::CREATED
                } else {
                    StatusCode::NOT_FOUND
                };
                assert_eq!(status, expected);
            }
            Op::Merge {
                actor,
                target,
                source,
            } => {
                if known.is_empty() {
                    continue;
                }
                let (t, s) = (target % known.len(), source % known.len());
                let (target_id, source_id) = (known[t].id.clone(), known[s].id.clone());
                let (status, body) = actors[actor]
                    .post(
                        &format!("/v1/contacts/{target_id}/merge"),
                        json!({"from": source_id}),
                    )
                    .await;
                let mine =
                    |index: usize| known[index].owner == actor && known[index].name.is_some();
                if t == s {
                    assert!(status.is_client_error(), "{body}");
                } else if mine(t) && mine(s) {
                    assert_eq!(status, StatusCode::OK, "{body}");
                    known[s].name = None;
                } else {
                    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
                }
            }
            Op::List { actor } => {
                let (status, listing) = actors[actor].get("/v1/contacts?limit=200").await;
                assert_eq!(status, StatusCode::OK);
                assert_eq!(ids(&listing), live(&known, actor));
            }
            Op::Search { actor, phone: seed } => {
                let (status, found) = actors[actor]
                    .post(
                        "/v1/contacts/search",
                        json!({"filter": {"attribute": "phone", "op": "eq", "value": phone(seed)}, "limit": 200}),
                    )
                    .await;
                assert_eq!(status, StatusCode::OK, "{found}");
                let expected: BTreeSet<String> = known
                    .iter()
                    .filter(|contact| {
                        contact.owner == actor
                            && contact.name.is_some()
                            && contact.phone == phone(seed)
                    })
                    .map(|contact| contact.id.clone())
                    .collect();
                assert_eq!(ids(&found), expected);
            }
            Op::Export { actor } => {
                let response = actors[actor]
                    .send(
                        reqwest::Method::GET,
                        "/v1/contacts/export?format=jsonl",
                        None,
                    )
                    .await;
                assert_eq!(response.status(), StatusCode::OK);
                let exported: BTreeSet<String> = response
                    .text()
                    .await
                    .expect("export")
                    .lines()
                    .map(|line| {
                        serde_json::from_str::<Value>(line).expect("JSON")["id"]
                            .as_str()
                            .expect("id")
                            .to_string()
                    })
                    .collect();
                assert_eq!(exported, live(&known, actor));
            }
        }
    }
    // Every owner still sees exactly its contacts, with the values it wrote.
    for (actor, api) in actors.iter().enumerate() {
        let (_, listing) = api.get("/v1/contacts?limit=200").await;
        assert_eq!(ids(&listing), live(&known, actor));
        let names: BTreeMap<String, Value> = listing["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|contact| {
                (
                    contact["id"].as_str().unwrap_or("").to_string(),
                    contact["name"].clone(),
                )
            })
            .collect();
        for contact in known
            .iter()
            .filter(|contact| contact.owner == actor && contact.name.is_some())
        {
            assert_eq!(names[&contact.id], json!(contact.name));
        }
    }
}

#[test]
fn no_operation_crosses_a_tenant_boundary() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let servers = runtime.block_on(postdog_tests::servers_on_every_backend());
    for server in &servers {
        let config = ProptestConfig {
            cases: 12,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        proptest!(config, |(ops in proptest::collection::vec(op(), 5..40))| {
            runtime.block_on(run(server, ops));
        });
    }
    runtime.block_on(async move { drop(servers) });
}
