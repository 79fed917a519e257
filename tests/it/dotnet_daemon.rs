//! .NET workers through the real daemon: deployed over REST as a .nupkg, run by a .NET
//! host-runner (CoreCLR + bridge), reached by invoke and through the bus.

use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use wm_testkit::daemon::{Daemon, DaemonOptions};
use wm_testkit::dotnet as dn;
use wm_testkit::sse::Sse;

#[test]
fn a_dotnet_worker_deployed_over_rest_answers_invoke_and_bus_events() {
    // The bridge and DevKit next to host-runner, where the daemon's hosts look for them.
    dn::engine_dir();
    let root = dn::dotnet_root();
    let d = Daemon::start(
        DaemonOptions::default().env("DOTNET_ROOT", root.to_str().expect("utf-8 path")),
    );
    let engines = d.get("/v1/engines").json();
    let dotnet = engines["engines"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|e| e["mimeType"] == "application/x-dotnet-dll")
        })
        .cloned()
        .unwrap_or_default();
    assert_eq!(dotnet["available"], true, "{engines:#}");

    let dll = dn::build_library("Echo", &["Echo.cs"], &[]);
    let pkg = dn::worker_nupkg("Echo", &dll, &[]);
    let r = d.send_json(
        "POST",
        "/v1/workers",
        &json!({
            "mimeType": "application/x-dotnet-dll",
            "topic": "dn.in",
            "codeSource": {"content": base64::engine::general_purpose::STANDARD.encode(pkg)},
        }),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_string();
    let r = d.post(&format!("/v1/workers/{id}/start"));
    assert!(r.status < 300, "start: {}", r.text());

    let r = d.send_json(
        "POST",
        &format!("/v1/workers/{id}/invoke"),
        &json!({"specversion": "1.0", "id": "x1", "source": "urn:test", "type": "dn.in",
                "datacontenttype": "text/plain", "data": "managed hello", "correlationid": "k9"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let reply = r.json();
    assert_eq!(reply["type"], "echo.reply");
    assert_eq!(reply["data"], "managed hello");
    assert_eq!(reply["correlationid"], "k9");

    let replies = Sse::subscribe(&d.base_url(), "echo.reply");
    let r = d.send_json(
        "POST",
        "/v1/topics/dn.in/events",
        &json!({"specversion": "1.0", "id": "b1", "source": "urn:test", "type": "dn.in",
                "datacontenttype": "text/plain", "data": "via the bus"}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    replies.wait_for(Duration::from_secs(60), "the .NET worker's reply", |v| {
        v["data"] == "via the bus"
    });
    let hosts = d.get("/v1/hosts").json();
    assert!(
        hosts["hosts"].as_array().is_some_and(|a| a
            .iter()
            .any(|h| h["mimeType"] == "application/x-dotnet-dll")),
        "a .NET host carries the worker: {hosts:#}"
    );
}
