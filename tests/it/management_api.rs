//! The Tickstem management API (spec section 3) in standalone mode, driven by the real
//! Tickstem Python SDK and by plain HTTP for what the SDK does not cover.

use std::process::Command;

use crate::helpers::{InProcess, app_manifest, heartbeat_manifest};
use serde_json::{Value, json};

fn manifests() -> Vec<(&'static str, String)> {
    let team_a = "apiVersion: hartslag.dev/v1alpha1\nkind: Application\nmetadata:\n  name: team-a\nspec:\n  limits:\n    heartbeats: 3\n".to_string();
    vec![
        ("a.yaml", team_a),
        ("b.yaml", app_manifest("team-b", "UTC")),
        (
            "hb.yaml",
            heartbeat_manifest(
                "from-file",
                "1h",
                "5m",
                "  applicationRef:\n    name: team-a\n",
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickstem_python_sdk_works_unchanged() {
    let s = InProcess::start(&manifests()).await;
    let (a, b) = (s.app_token("team-a"), s.app_token("team-b"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/tickstem_flow.py");
    let base = s.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &base, &a, &b, "from-file"])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'tickstem'"),
        "the Tickstem SDK is missing: pip install tickstem (tests/run-all.sh installs it)"
    );
    assert!(
        out.status.success(),
        "SDK flow failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_monitors_persist_and_are_validated() {
    let s = InProcess::start(&manifests()).await;
    let key = s.app_token("team-b");
    let c = reqwest::Client::new();
    let api = format!("{}/v1/heartbeats", s.base);
    let r = c
        .post(&api)
        .bearer_auth(&key)
        .json(&json!({"name": "Nightly ETL"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let hb: Value = r.json().await.unwrap();
    assert_eq!(
        (hb["interval_secs"].as_u64(), hb["grace_secs"].as_u64()),
        (Some(3600), Some(300)),
        "defaults"
    );
    assert_eq!(hb["resource"], "nightly-etl");
    // Token and ping URL files exist like the manifest ones.
    let url = std::fs::read_to_string(s.data.join("tokens/heartbeat-nightly-etl.url")).unwrap();
    assert!(url.contains(hb["token"].as_str().unwrap()));
    for (body, field) in [
        (json!({}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": 5}), "name"),
        (json!({"name": "backup\nBcc: x@example.com"}), "name"),
        (json!({"name": "x", "interval_secs": 59}), "interval_secs"),
        (
            json!({"name": "x", "interval_secs": 86401}),
            "interval_secs",
        ),
        (json!({"name": "x", "grace_secs": -1}), "grace_secs"),
        (json!({"name": "x", "interval_secs": "60"}), "interval_secs"),
    ] {
        let r = c
            .post(&api)
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{body}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains(field), "{body}: {v}");
    }
    let r = c
        .post(&api)
        .bearer_auth(&key)
        .body("[1]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .get(format!(
            "{api}/{}/pings?limit=0",
            hb["id"].as_str().unwrap()
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = c
        .delete(format!("{api}/{}", hb["id"].as_str().unwrap()))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.bytes().await.unwrap().len(), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_api_is_rate_limited_per_key() {
    let s = InProcess::start_with(&manifests(), |c| {
        c.api_rate_per_sec = 1.0;
        c.api_rate_burst = 5.0;
    })
    .await;
    let (a, b) = (s.app_token("team-a"), s.app_token("team-b"));
    let c = reqwest::Client::new();
    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..8 {
        let r = c
            .get(format!("{}/v1/heartbeats", s.base))
            .bearer_auth(&a)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            refused = Some(r);
        }
    }
    assert_eq!(&statuses[..5], &[200; 5]);
    assert!(statuses[5..].contains(&429), "{statuses:?}");
    // At one request a second, the next is allowed within a second: the answer says so.
    let refused = refused.unwrap();
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "rate limit exceeded; retry in 1s");
    let r = c
        .get(format!("{}/v1/heartbeats", s.base))
        .bearer_auth(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "another key has its own budget");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_heartbeat_with_its_own_token_file_is_listed_with_that_token() {
    // Not URL-safe, as `openssl rand -base64` writes them.
    let token = "own+token/from=a-file-0123456789";
    let mut files = manifests();
    files.push(("own.token", token.to_string()));
    files.push((
        "own.yaml",
        heartbeat_manifest(
            "own-token",
            "1h",
            "5m",
            "  tokenFile: own.token\n  applicationRef:\n    name: team-a\n",
        ),
    ));
    let s = InProcess::start(&files).await;
    let listed: Value = reqwest::Client::new()
        .get(format!("{}/v1/heartbeats", s.base))
        .bearer_auth(s.app_token("team-a"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hb = listed["heartbeats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["resource"] == "own-token")
        .unwrap();
    assert_eq!(hb["token"], token, "{hb}");
    // Its ping URL (escaped) works as written.
    let url = std::fs::read_to_string(s.data.join("tokens/heartbeat-own-token.url")).unwrap();
    let r = reqwest::Client::new()
        .post(url.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{url}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_to_one_monitor_at_the_same_moment_take_effect_one_after_another() {
    let s = InProcess::start_with(&manifests(), |c| {
        c.api_rate_per_sec = 1000.0;
        c.api_rate_burst = 1000.0;
    })
    .await;
    let key = s.app_token("team-b");
    let c = reqwest::Client::new();
    let api = format!("{}/v1/heartbeats", s.base);
    let create = |name: String| {
        let (c, api, key) = (c.clone(), api.clone(), key.clone());
        async move {
            let r = c.post(&api).bearer_auth(&key);
            let r = r.json(&json!({"name": name, "interval_secs": 3600}));
            let created: Value = r.send().await.unwrap().json().await.unwrap();
            format!("{api}/{}", created["id"].as_str().unwrap())
        }
    };
    let patch = |url: &str, body: Value| c.patch(url).bearer_auth(&key).json(&body).send();
    let get = |url: &str| c.get(url).bearer_auth(&key).send();
    for round in 0..12 {
        // Two edits of different fields: both are kept.
        let one = create(format!("edited-{round}")).await;
        let (a, b) = tokio::join!(
            patch(&one, json!({"name": format!("renamed-{round}")})),
            patch(&one, json!({"grace_secs": 120 + round})),
        );
        assert_eq!(
            (a.unwrap().status().as_u16(), b.unwrap().status().as_u16()),
            (200, 200)
        );
        let now: Value = get(&one).await.unwrap().json().await.unwrap();
        assert_eq!(now["name"], format!("renamed-{round}"), "{now}");
        assert_eq!(now["grace_secs"], 120 + round, "{now}");

        // A pause beside an edit: the pause holds.
        let (a, b) = tokio::join!(
            c.post(format!("{one}/pause")).bearer_auth(&key).send(),
            patch(&one, json!({"grace_secs": 300})),
        );
        assert_eq!(
            (a.unwrap().status().as_u16(), b.unwrap().status().as_u16()),
            (200, 200)
        );
        let now: Value = get(&one).await.unwrap().json().await.unwrap();
        assert_eq!(
            (&now["status"], &now["grace_secs"]),
            (&json!("paused"), &json!(300))
        );

        // A delete beside an edit: what was deleted stays deleted.
        let gone = create(format!("deleted-{round}")).await;
        let (deleted, edited) = tokio::join!(
            c.delete(&gone).bearer_auth(&key).send(),
            patch(&gone, json!({"grace_secs": 60})),
        );
        let edited = edited.unwrap().status();
        assert_eq!(deleted.unwrap().status(), 204);
        assert!(edited == 200 || edited == 404, "{edited}");
        assert_eq!(get(&gone).await.unwrap().status(), 404, "round {round}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_longer_than_the_contract_reads_within_it_and_survives_a_write_back() {
    let s = InProcess::start(&manifests()).await;
    let key = s.app_token("team-b");
    let c = reqwest::Client::new();
    let api = format!("{}/v1/heartbeats", s.base);
    let created: Value = c
        .post(&api)
        .bearer_auth(&key)
        .json(&json!({"name": "weekly report"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!("{api}/{}", created["id"].as_str().unwrap());
    // Made weekly with two days of grace where it is defined (in the operator: `kubectl
    // edit` of its Heartbeat, `interval: 7d`, `grace: 2d`), beyond what the API takes.
    let current = |s: &InProcess| {
        s.core
            .engine
            .list()
            .into_iter()
            .find(|m| m.def.id == created["id"].as_str().unwrap())
            .unwrap()
    };
    let (week, two_days) = (7 * 86_400, 2 * 86_400);
    let def = current(&s)
        .def
        .edited(|d| (d.interval_secs, d.grace_secs) = (week, two_days));
    s.core.engine.upsert(def).await.unwrap();
    // Read within the contract's bounds (60–86400 and 0–86400) ...
    let read: Value = c
        .get(&url)
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&read["interval_secs"], &read["grace_secs"]),
        (&json!(86_400), &json!(86_400)),
        "{read}"
    );
    // ... and written back as read, with a new name, as a client that edits one field of
    // what it read does: the name changes, the cadence stays.
    let r = c
        .patch(&url)
        .bearer_auth(&key)
        .json(&json!({
            "name": "weekly report (finance)",
            "interval_secs": read["interval_secs"],
            "grace_secs": read["grace_secs"],
            "status": read["status"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["name"], "weekly report (finance)");
    let stored = current(&s).def;
    assert_eq!((stored.interval_secs, stored.grace_secs), (week, two_days));
    // Any other value is a change.
    let r = c
        .patch(&url)
        .bearer_auth(&key)
        .json(&json!({"interval_secs": 86_000, "grace_secs": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stored = current(&s).def;
    assert_eq!((stored.interval_secs, stored.grace_secs), (86_000, 3600));
    s.stop().await;
}
