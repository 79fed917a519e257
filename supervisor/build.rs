//! Generates the gRPC service from `schemas/workmanager.proto` (tonic + prost) with the
//! vendored `protoc` (the `protoc-bin-vendored` crate), so a clean machine builds without a
//! system protobuf compiler. The messages also derive serde for `POST /v1/gateway/invoke-json`
//! (proto-JSON field names, base64 bytes, `"RUNNING"` for the status; see `grpc/json.rs`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../schemas/workmanager.proto";
    println!("cargo:rerun-if-changed={proto}");
    let mut config = tonic_prost_build::Config::new();
    // PROTOC, when set, wins (a system protoc); otherwise the vendored one.
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    let pkg = ".virtufin.workmanager";
    let mut b = tonic_prost_build::configure()
        .build_client(false)
        .file_descriptor_set_path(
            std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("workmanager_descriptor.bin"),
        )
        .btree_map(".")
        .enum_attribute(
            format!("{pkg}.WorkerStatus"),
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        .field_attribute(
            format!("{pkg}.WorkerInfo.status"),
            "#[serde(with = \"crate::grpc::json::status_name\")]",
        );
    // Every message but CodeSource (its oneof has a hand-written JSON form in grpc/json.rs).
    for m in [
        "WorkerInfo",
        "HistoryEntry",
        "CreateWorkerRequest",
        "CreateWorkerResponse",
        "StartWorkerRequest",
        "StartWorkerResponse",
        "StopWorkerRequest",
        "StopWorkerResponse",
        "LoadCodeRequest",
        "LoadCodeResponse",
        "DeleteWorkerRequest",
        "DeleteWorkerResponse",
        "ListWorkersRequest",
        "ListWorkersResponse",
        "GetWorkerHistoryRequest",
        "GetWorkerHistoryResponse",
        "RecoverWorkersRequest",
        "RecoverWorkersResponse",
        "SetTagRequest",
        "SetTagResponse",
        "SetTagsRequest",
        "SetTagsResponse",
        "GetTagRequest",
        "GetTagResponse",
        "GetTagsRequest",
        "GetTagsResponse",
        "WorkerLimits",
    ] {
        b = b.message_attribute(
            format!("{pkg}.{m}"),
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        );
    }
    // proto-JSON parsers accept lowerCamelCase as well as the proto names.
    for (path, camel) in [
        ("CreateWorkerRequest.code_source", "codeSource"),
        ("CreateWorkerRequest.mime_type", "mimeType"),
        (
            "CreateWorkerRequest.message_timeout_seconds",
            "messageTimeoutSeconds",
        ),
        ("CreateWorkerRequest.max_concurrency", "maxConcurrency"),
        ("LoadCodeRequest.code_source", "codeSource"),
        ("WorkerLimits.memory_bytes", "memoryBytes"),
    ] {
        b = b.field_attribute(
            format!("{pkg}.{path}"),
            format!("#[serde(alias = \"{camel}\")]"),
        );
    }
    b.compile_with_config(config, &[proto], &["../schemas"])?;
    Ok(())
}
