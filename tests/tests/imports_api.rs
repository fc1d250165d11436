//! CSV import and export through the real HTTP API of a running `postdog serve`, on
//! SQLite and PostgreSQL: BOM, `;` delimiter, CRLF, quoted newlines, automatic and
//! explicit mappings, the skip/update/merge strategies inside the file and against
//! existing contacts, per-row errors with line numbers in a downloadable CSV, re-imports
//! that create nothing, plan limits, clear 4xx for bad uploads, tenant isolation,
//! consent columns (recorded with the import as proof, opt-outs never undone by a
//! list), and exports (CSV and JSON Lines) that import back.

use std::time::Duration;

use postdog_tests::Api;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Uploads `body` as the raw request body with `query`; the status and the answer.
async fn upload(api: &Api, query: &str, body: &[u8]) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/contacts/imports{query}", api.base_url))
        .bearer_auth(&api.key)
        .header("content-type", "text/csv")
        .body(body.to_vec())
        .send()
        .await
        .expect("upload");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls a job until it ends; its final state.
async fn finished(api: &Api, job: &Value) -> Value {
    let id = job["id"].as_str().expect("job id");
    for _ in 0..600 {
        let (status, job) = api.get(&format!("/v1/contacts/imports/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        if job["status"] == "completed" || job["status"] == "failed" {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("import {id} did not finish");
}

async fn import(api: &Api, query: &str, body: &[u8]) -> Value {
    let (status, job) = upload(api, query, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let job = finished(api, &job).await;
    assert_eq!(job["status"], "completed", "{job}");
    job
}

fn counts(job: &Value) -> [u64; 5] {
    ["rows_read", "created", "updated", "skipped", "failed"].map(|key| {
        job[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} in {job}"))
    })
}

async fn all_contacts(api: &Api) -> Vec<Value> {
    let (_, page) = api.get("/v1/contacts?limit=200").await;
    page["data"].as_array().expect("data").clone()
}

fn by_email<'a>(contacts: &'a [Value], email: &str) -> &'a Value {
    contacts
        .iter()
        .find(|contact| contact["email"] == email)
        .unwrap_or_else(|| panic!("no contact with {email}"))
}

/// A file exercising the format: BOM, `;`, CRLF, a quoted cell with a newline and a
/// delimiter, an in-file duplicate, invalid rows, a blank row.
const FILE: &str = "\u{feff}Full Name;Mobile;E-mail;Tags;City;Score\r\n\
Ada Lovelace;(415) 555-0132;;vip;London;\r\n\
\"Bob\r\nBuilder; Jr\";+44 20 7946 0018;bob@example.com;\"a,b\";Paris;3\r\n\
Cy;415.555.0199;cy@example.com;;;abc\r\n\
Di;12345;di@example.com;;;\r\n\
Bob again;+442079460018;;;Rome;\r\n\
;;;;;\r\n\
Eve;;Eve@EXAMPLE.com;;;\r\n\
;;;;Nowhere;\r\n";

#[tokio::test]
async fn csv_imports_apply_strategies_and_report_every_bad_row() {
    for server in postdog_tests::servers_on_every_backend().await {
        let (api, _) = Api::tenant(&server, "pro").await;
        for (key, kind) in [("city", "text"), ("score", "number")] {
            let (status, _) = api
                .put(
                    &format!("/v1/custom-fields/{key}"),
                    json!({"label": key, "kind": kind}),
                )
                .await;
            assert_eq!(status, StatusCode::OK);
        }
        let (status, _) = api
            .post(
                "/v1/contacts",
                json!({"name": "Ada", "phone": "+14155550132", "email": "ada@example.com", "tags": ["old"]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);

        let job = import(&api, "", FILE.as_bytes()).await;
        // read: 7 data rows (the blank one is not a row); created: Bob, Eve; skipped: Ada
        // (existing), Bob again (same phone as Bob); failed: Cy, Di, Nowhere.
        assert_eq!(counts(&job), [7, 2, 0, 2, 3], "{job}");
        assert_eq!(job["duplicates"], "skip");
        assert_eq!(job["mapping"]["Mobile"], "phone");
        assert_eq!(job["mapping"]["City"], "fields.city");
        let contacts = all_contacts(&api).await;
        assert_eq!(contacts.len(), 3);
        let bob = by_email(&contacts, "bob@example.com");
        assert_eq!(bob["name"], "Bob\r\nBuilder; Jr");
        assert_eq!(bob["phone"], "+442079460018");
        assert_eq!(bob["tags"], json!(["a", "b"]));
        assert_eq!(bob["fields"], json!({"city": "Paris", "score": 3}));
        assert_eq!(by_email(&contacts, "eve@example.com")["name"], "Eve");
        assert_eq!(
            by_email(&contacts, "ada@example.com")["tags"],
            json!(["old"])
        );

        // The error CSV: one row per rejected line, with its line number and reason.
        let url = job["errors_url"].as_str().expect("errors_url");
        let response = api.send(Method::GET, url, None).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .expect("type")
                .starts_with("text/csv")
        );
        let text = response.text().await.expect("errors");
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        assert_eq!(
            reader.headers().expect("header").iter().collect::<Vec<_>>(),
            [
                "line",
                "error",
                "Full Name",
                "Mobile",
                "E-mail",
                "Tags",
                "City",
                "Score"
            ]
        );
        let rows: Vec<csv::StringRecord> = reader.records().map(|row| row.expect("row")).collect();
        let lines: Vec<&str> = rows.iter().map(|row| &row[0]).collect();
        assert_eq!(lines, ["5", "6", "10"], "{text}");
        assert!(
            rows[0][1].contains("abc") && rows[0][1].contains("score"),
            "{text}"
        );
        assert!(rows[1][1].contains("12345"), "{text}");
        assert!(rows[2][1].contains("no name, phone or email"), "{text}");
        assert_eq!(&rows[1][2], "Di");

        // The same file again: nothing new.
        let again = import(&api, "", FILE.as_bytes()).await;
        assert_eq!(counts(&again), [7, 0, 0, 4, 3], "{again}");
        assert_eq!(all_contacts(&api).await.len(), 3);

        // update, as a multipart form with an explicit mapping: overwrites, adds tags.
        let form = reqwest::multipart::Form::new()
            .part(
                "file",
                reqwest::multipart::Part::bytes(
                    b"Mobile,Who,Town,Labels\n+1 415 555 0132,Ada L.,Oxford,new\n".to_vec(),
                )
                .file_name("ada.csv"),
            )
            .text("duplicates", "update")
            .text(
                "mapping",
                json!({"Who": "name", "Town": "fields.city", "Labels": "tags"}).to_string(),
            );
        let response = reqwest::Client::new()
            .post(format!("{}/v1/contacts/imports", api.base_url))
            .bearer_auth(&api.key)
            .multipart(form)
            .send()
            .await
            .expect("upload");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let job = finished(&api, &response.json().await.expect("job")).await;
        assert_eq!(counts(&job), [1, 0, 1, 0, 0], "{job}");
        let contacts = all_contacts(&api).await;
        let ada = by_email(&contacts, "ada@example.com");
        assert_eq!(ada["name"], "Ada L.");
        assert_eq!(ada["fields"]["city"], "Oxford");
        assert_eq!(ada["tags"], json!(["new", "old"]));

        // merge: fills only what is empty; a row that changes nothing is skipped.
        let job = import(
            &api,
            "?duplicates=merge",
            b"email,name,city\nbob@example.com,Robert,Berlin\neve@example.com,Other,Berlin\n",
        )
        .await;
        assert_eq!(counts(&job), [2, 0, 1, 1, 0], "{job}");
        let contacts = all_contacts(&api).await;
        assert_eq!(
            by_email(&contacts, "bob@example.com")["fields"]["city"],
            "Paris"
        );
        let eve = by_email(&contacts, "eve@example.com");
        assert_eq!(
            (eve["name"].clone(), eve["fields"]["city"].clone()),
            (json!("Eve"), json!("Berlin"))
        );

        // Bad uploads: a clear 4xx, no job, nothing written.
        for (query, body, needle) in [
            ("?duplicates=replace", &b"name\nX\n"[..], "duplicates"),
            (
                "?mapping=%7B%22Nope%22%3A%22phone%22%7D",
                &b"name\nX\n"[..],
                "Nope",
            ),
            ("?mapping=not-json", &b"name\nX\n"[..], "mapping"),
            ("", &b""[..], "empty"),
            ("", &b"colour,size\nred,9\n"[..], "no column"),
            ("?colour=red", &b"name\nX\n"[..], "colour"),
        ] {
            let (status, problem) = upload(&api, query, body).await;
            assert!(status.is_client_error(), "{query}: {status} {problem}");
            assert!(
                problem["detail"]
                    .as_str()
                    .is_some_and(|detail| detail.contains(needle)),
                "{query}: {problem}"
            );
        }
        let (_, jobs) = api.get("/v1/contacts/imports").await;
        assert_eq!(jobs["data"].as_array().map(Vec::len), Some(4));
        assert_eq!(all_contacts(&api).await.len(), 3);

        // Another tenant sees neither the jobs nor their errors.
        let (other, _) = Api::tenant(&server, "pro").await;
        let id = job["id"].as_str().expect("id");
        for path in [
            format!("/v1/contacts/imports/{id}"),
            format!("/v1/contacts/imports/{id}/errors"),
        ] {
            let (status, _) = other.get(&path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
        let (_, jobs) = other.get("/v1/contacts/imports").await;
        assert_eq!(jobs["data"], json!([]));
    }
}

#[tokio::test]
async fn imports_stop_at_the_plan_contact_limit() {
    for server in postdog_tests::servers_on_every_backend().await {
        let (api, tenant_id) = Api::tenant(&server, "starter").await;
        let storage = server.storage().await;
        let db = storage.tenant(&postdog_host::ids::TenantId::new(&tenant_id));
        for index in 0..998 {
            db.create_contact(&postdog_host::storage::ContactData {
                name: Some(format!("N{index}")),
                fields: json!({}),
                ..Default::default()
            })
            .await
            .expect("insert");
        }
        storage.close().await;
        let job = import(
            &api,
            "",
            b"email\na@example.com\nb@example.com\nc@example.com\nd@example.com\n",
        )
        .await;
        assert_eq!(counts(&job), [4, 2, 0, 0, 2], "{job}");
        let response = api
            .send(Method::GET, job["errors_url"].as_str().expect("url"), None)
            .await;
        let text = response.text().await.expect("errors");
        assert_eq!(text.matches("contact limit").count(), 2, "{text}");
    }
}

/// A contact's id by phone.
async fn id_of(api: &Api, phone: &str) -> String {
    let (_, found) = api
        .get(&format!("/v1/contacts?q={}", phone.replace('+', "%2B")))
        .await;
    found["data"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no contact {phone}: {found}"))
        .to_string()
}

/// A contact's consent history for `channel`: (status, source, proof) oldest first.
async fn consent_history(api: &Api, id: &str, channel: &str) -> Vec<(String, String, String)> {
    let (status, history) = api.get(&format!("/v1/contacts/{id}/consent")).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    history["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter(|entry| entry["channel"] == channel)
        .map(|entry| {
            let text = |key: &str| entry[key].as_str().unwrap_or_default().to_string();
            (text("status"), text("source"), text("proof"))
        })
        .collect()
}

#[tokio::test]
async fn csv_consent_columns_record_consent_and_never_undo_an_opt_out() {
    for server in postdog_tests::servers_on_every_backend().await {
        let (api, _) = Api::tenant(&server, "pro").await;
        let job = import(
            &api,
            "",
            b"Name,Mobile,WhatsApp consent,Email consent,Email\n\
Ada,+14155550132,yes,,ada@example.com\n\
Bob,+14155550133,Opted-Out,opted_in,bob@example.com\n\
Cy,+14155550134,,,\n\
Dee,+14155550135,maybe,,\n",
        )
        .await;
        assert_eq!(counts(&job), [4, 3, 0, 0, 1], "{job}");
        assert_eq!(job["opt_ins_refused"], 0, "{job}");
        assert_eq!(
            job["mapping"]["WhatsApp consent"], "consent.whatsapp",
            "{job}"
        );
        assert_eq!(job["mapping"]["Email consent"], "consent.email", "{job}");
        let import_id = job["id"].as_str().expect("id").to_string();
        let response = api
            .send(Method::GET, job["errors_url"].as_str().expect("url"), None)
            .await;
        let errors = response.text().await.expect("errors");
        assert!(
            errors.contains("5,\"`maybe` is not a whatsapp consent value"),
            "{errors}"
        );

        let [ada, bob, cy] = [
            id_of(&api, "+14155550132").await,
            id_of(&api, "+14155550133").await,
            id_of(&api, "+14155550134").await,
        ];
        assert_eq!(
            consent_history(&api, &ada, "whatsapp").await,
            [(
                "opted_in".to_string(),
                "import".to_string(),
                format!("import {import_id} line 2")
            )]
        );
        assert_eq!(
            consent_history(&api, &bob, "whatsapp").await[0].0,
            "opted_out"
        );
        assert_eq!(consent_history(&api, &bob, "email").await[0].0, "opted_in");
        assert!(consent_history(&api, &cy, "whatsapp").await.is_empty());
        let (_, contact) = api.get(&format!("/v1/contacts/{ada}")).await;
        assert_eq!(
            contact["consent"]["whatsapp"]["status"], "opted_in",
            "{contact}"
        );

        // An update: Ada opts out, Cy in; Bob's opt-out stands against the list's "yes".
        let job = import(
            &api,
            "?duplicates=update",
            b"Mobile,whatsapp_opt_in\n+14155550132,no\n+14155550133,yes\n+14155550134,yes\n",
        )
        .await;
        assert_eq!(counts(&job), [3, 0, 2, 1, 0], "{job}");
        assert_eq!(job["opt_ins_refused"], 1, "{job}: Bob's");
        let statuses = |history: Vec<(String, String, String)>| {
            history
                .into_iter()
                .map(|(status, ..)| status)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            statuses(consent_history(&api, &ada, "whatsapp").await),
            ["opted_in", "opted_out"]
        );
        assert_eq!(
            statuses(consent_history(&api, &bob, "whatsapp").await),
            ["opted_out"],
            "a list import never re-subscribes an opt-out"
        );
        assert_eq!(
            statuses(consent_history(&api, &cy, "whatsapp").await),
            ["opted_in"]
        );

        // `skip` leaves contacts alone but still records opt-outs; a re-run adds nothing.
        let skip_file = b"Mobile,WhatsApp consent\n+14155550132,yes\n+14155550134,no\n";
        let job = import(&api, "?duplicates=skip", skip_file).await;
        assert_eq!(counts(&job), [2, 0, 1, 1, 0], "{job}");
        assert_eq!(job["opt_ins_refused"], 1, "{job}: Ada's");
        let job = import(&api, "?duplicates=skip", skip_file).await;
        assert_eq!(counts(&job), [2, 0, 0, 2, 0], "{job}");
        assert_eq!(
            statuses(consent_history(&api, &ada, "whatsapp").await),
            ["opted_in", "opted_out"]
        );
        assert_eq!(
            statuses(consent_history(&api, &cy, "whatsapp").await),
            ["opted_in", "opted_out"]
        );
        let (_, opted_in) = api.get("/v1/contacts?consent.email=opted_in").await;
        assert_eq!(
            opted_in["data"].as_array().map(Vec::len),
            Some(1),
            "{opted_in}"
        );

        // A mapping to an unknown channel is refused before anything is read.
        let (status, problem) = upload(
            &api,
            "?mapping=%7B%22Opt%22%3A%22consent.fax%22%7D",
            b"Name,Opt\nAda,yes\n",
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|detail| detail.contains("`fax` is not a consent channel")),
            "{problem}"
        );
    }
}

#[tokio::test]
async fn exports_stream_csv_and_json_lines_that_import_back() {
    for server in postdog_tests::servers_on_every_backend().await {
        let (api, _) = Api::tenant(&server, "pro").await;
        let (status, _) = api
            .put(
                "/v1/custom-fields/city",
                json!({"label": "City", "kind": "text"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let mut csv = String::from("name,phone,email,tags,city\n");
        for index in 0..1_203 {
            csv.push_str(&format!(
                "\"Person, {index}\",+1 212 555 {:04},p{index}@example.com,{},Town {}\n",
                index,
                if index % 3 == 0 {
                    "\"vip, lead\""
                } else {
                    "lead"
                },
                index % 7
            ));
        }
        let job = import(&api, "", csv.as_bytes()).await;
        assert_eq!(counts(&job), [1_203, 1_203, 0, 0, 0], "{job}");
        let (_, consented) = api.get("/v1/contacts?limit=1").await;
        let first = consented["data"][0]["id"].as_str().expect("id").to_string();
        api.post(
            &format!("/v1/contacts/{first}/consent"),
            json!({"channel": "email", "status": "opted_in"}),
        )
        .await;

        let response = api
            .send(Method::GET, "/v1/contacts/export?format=csv", None)
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-disposition"]
                .to_str()
                .expect("cd")
                .contains("contacts.csv")
        );
        let exported = response.text().await.expect("csv");
        let mut reader = csv::Reader::from_reader(exported.as_bytes());
        let headers = reader.headers().expect("header").clone();
        assert_eq!(&headers[0], "id");
        assert!(headers.iter().any(|header| header == "city"));
        assert!(headers.iter().any(|header| header == "consent_email"));
        let rows: Vec<csv::StringRecord> = reader.records().map(|row| row.expect("row")).collect();
        assert_eq!(rows.len(), 1_203);
        let consent_column = headers
            .iter()
            .position(|header| header == "consent_email")
            .expect("column");
        assert_eq!(
            rows.iter()
                .filter(|row| &row[consent_column] == "opted_in")
                .count(),
            1
        );

        let response = api
            .send(
                Method::GET,
                "/v1/contacts/export?format=jsonl&tag=vip",
                None,
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let lines: Vec<Value> = response
            .text()
            .await
            .expect("jsonl")
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON object per line"))
            .collect();
        assert_eq!(lines.len(), 401);
        assert!(lines.iter().all(|contact| {
            contact["tags"]
                .as_array()
                .is_some_and(|tags| tags.contains(&json!("vip")))
        }));
        let (status, problem) = api.get("/v1/contacts/export?format=xml").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");

        // The CSV export imports into another tenant as the same contacts.
        let (copy, _) = Api::tenant(&server, "pro").await;
        copy.put(
            "/v1/custom-fields/city",
            json!({"label": "City", "kind": "text"}),
        )
        .await;
        let job = import(&copy, "", exported.as_bytes()).await;
        assert_eq!(counts(&job), [1_203, 1_203, 0, 0, 0], "{job}");
        let (_, found) = copy.get("/v1/contacts?q=p42@example.com").await;
        let original = lines
            .iter()
            .find(|contact| contact["email"] == "p42@example.com")
            .expect("p42 is vip");
        assert_eq!(found["data"][0]["name"], original["name"]);
        assert_eq!(found["data"][0]["phone"], original["phone"]);
        assert_eq!(found["data"][0]["tags"], original["tags"]);
        assert_eq!(found["data"][0]["fields"], original["fields"]);
        // Consent comes along, recorded as the import's.
        let (_, opted_in) = copy.get("/v1/contacts?consent.email=opted_in").await;
        assert_eq!(
            opted_in["data"].as_array().map(Vec::len),
            Some(1),
            "{opted_in}"
        );
        let id = opted_in["data"][0]["id"].as_str().expect("id");
        assert_eq!(consent_history(&copy, id, "email").await[0].1, "import");
    }
}
