//! The pure rules of message handling: what a host's answer means, where a reply goes, how
//! long to wait before a retry. No I/O here, so every rule has a plain unit test.

use std::time::Duration;

use wm_shared::cloudevent::{CORRELATION_ID, REPLY_TOPIC};
use wm_shared::protocol::{ProcessResult, ResultStatus};
use wm_shared::{CloudEvent, WorkerResponse};

use crate::events::ErrorType;

/// What one call came to, from the message's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // short-lived, one per call; boxing buys nothing
pub enum Classified {
    /// Publish `reply` (if any) and settle. `surfaced` is an error the plugin reported along
    /// with a result: published as a `failed` event, not retried (the seed: "if both are set,
    /// the engine publishes the result and surfaces the error").
    Success {
        reply: Option<CloudEvent>,
        surfaced: Option<String>,
    },
    /// A failed attempt: retried, then dead-lettered.
    Failure {
        error_type: ErrorType,
        message: String,
    },
}

/// Interprets a host's `ProcessResult`. The response bytes were copied out of shared memory
/// by the link; they are verified here, in the supervisor, before anything is decoded.
pub fn classify(result: &ProcessResult) -> Classified {
    match result.status {
        ResultStatus::Ok => match WorkerResponse::from_flatbuffer(&result.response) {
            Err(e) => Classified::Failure {
                error_type: ErrorType::InvalidResponse,
                message: e.to_string(),
            },
            Ok(WorkerResponse {
                result_event: None,
                error_message: Some(err),
            }) => Classified::Failure {
                error_type: ErrorType::WorkerError,
                message: err,
            },
            Ok(WorkerResponse {
                result_event,
                error_message,
            }) => Classified::Success {
                reply: result_event,
                surfaced: error_message,
            },
        },
        ResultStatus::NoReply => Classified::Success {
            reply: None,
            surfaced: None,
        },
        ResultStatus::ProcessFailed => Classified::Failure {
            error_type: ErrorType::ProcessFailed,
            message: format!("the plugin's Process returned {}", result.code),
        },
        ResultStatus::InvalidResponse => Classified::Failure {
            error_type: ErrorType::InvalidResponse,
            message: if result.error.is_empty() {
                "the plugin returned an invalid WorkerResponse".to_string()
            } else {
                result.error.clone()
            },
        },
        ResultStatus::WorkerException => Classified::Failure {
            error_type: ErrorType::WorkerError,
            message: result.error.clone(),
        },
        ResultStatus::UnknownWorker => Classified::Failure {
            error_type: ErrorType::LoadFailed,
            message: "the host has no such worker loaded".to_string(),
        },
        #[allow(unreachable_patterns)]
        _ => Classified::Failure {
            error_type: ErrorType::InvalidResponse,
            message: format!("unknown result status {:?}", result.status),
        },
    }
}

/// Fills what a plugin may leave out of a reply and picks its topic: the input's `replytopic`
/// extension if present, else the reply's `type`. `correlationid` is carried over from the
/// input. Returns the topic, or why the reply cannot be published.
pub fn route_reply(
    input: &CloudEvent,
    reply: &mut CloudEvent,
    worker_id: &str,
    new_id: impl FnOnce() -> String,
) -> Result<String, String> {
    if reply.id.is_empty() {
        reply.id = new_id();
    }
    if reply.specversion.is_empty() {
        reply.specversion = wm_shared::cloudevent::SPEC_VERSION.to_string();
    }
    if reply.source.is_empty() {
        reply.source = format!("urn:com.virtufin.workmanager:worker/{worker_id}");
    }
    if let Some(c) = input.extension(CORRELATION_ID)
        && reply.extension(CORRELATION_ID).is_none()
    {
        reply
            .set_extension(CORRELATION_ID, c)
            .map_err(|e| e.to_string())?;
    }
    let topic = match input.extension(REPLY_TOPIC) {
        Some(t) if !t.is_empty() => t.to_string(),
        _ if !reply.ty.is_empty() => reply.ty.clone(),
        _ => {
            return Err(
                "the reply has no type and the input no replytopic extension: nowhere to publish it"
                    .to_string(),
            );
        }
    };
    if reply.ty.is_empty() {
        return Err("the reply has no type".to_string());
    }
    reply
        .validate()
        .map_err(|e| format!("the reply is not a valid CloudEvent: {e}"))?;
    if !valid_topic(&topic) {
        return Err(format!("reply topic '{topic}' is not a valid topic name"));
    }
    Ok(topic)
}

/// Topic names: 1-200 of `[A-Za-z0-9._-]`.
pub fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 200
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The delay before retry number `n` (1-based): `base * 2^(n-1)`, as the original's
/// `WORKER_RETRY_BASE_DELAY_MS * 2^attempt`, capped at a minute.
pub fn retry_delay(base: Duration, n: u32) -> Duration {
    crate::pool::backoff(base, Duration::from_secs(60), n)
}

/// Stamps the worker's config onto the event as extensions; values already on the event win.
/// Keys that are not valid CloudEvents attribute names are skipped (and reported).
pub fn stamp_config(event: &mut CloudEvent, config: &[(String, String)]) -> Vec<String> {
    let mut skipped = Vec::new();
    for (k, v) in config {
        if event.set_extension_if_absent(k, v).is_err() {
            skipped.push(k.clone());
        }
    }
    skipped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: ResultStatus, response: Vec<u8>) -> ProcessResult {
        ProcessResult {
            msg_id: 1,
            worker_id: "w".into(),
            status,
            code: 7,
            response,
            error: String::new(),
            elapsed_ns: 0,
        }
    }

    #[test]
    fn classification_follows_the_failure_table() {
        let reply = CloudEvent::new("r", "t.reply", "s");
        let ok = WorkerResponse {
            result_event: Some(reply.clone()),
            error_message: None,
        };
        assert_eq!(
            classify(&result(ResultStatus::Ok, ok.to_flatbuffer())),
            Classified::Success {
                reply: Some(reply.clone()),
                surfaced: None
            }
        );
        let both = WorkerResponse {
            result_event: Some(reply.clone()),
            error_message: Some("partial".into()),
        };
        assert_eq!(
            classify(&result(ResultStatus::Ok, both.to_flatbuffer())),
            Classified::Success {
                reply: Some(reply),
                surfaced: Some("partial".into())
            }
        );
        let err = WorkerResponse {
            result_event: None,
            error_message: Some("boom".into()),
        };
        assert_eq!(
            classify(&result(ResultStatus::Ok, err.to_flatbuffer())),
            Classified::Failure {
                error_type: ErrorType::WorkerError,
                message: "boom".into()
            }
        );
        assert!(matches!(
            classify(&result(ResultStatus::Ok, b"garbage".to_vec())),
            Classified::Failure {
                error_type: ErrorType::InvalidResponse,
                ..
            }
        ));
        assert_eq!(
            classify(&result(ResultStatus::ProcessFailed, vec![])),
            Classified::Failure {
                error_type: ErrorType::ProcessFailed,
                message: "the plugin's Process returned 7".into()
            }
        );
        assert_eq!(
            classify(&result(ResultStatus::NoReply, vec![])),
            Classified::Success {
                reply: None,
                surfaced: None
            }
        );
    }

    #[test]
    fn replies_go_to_replytopic_else_to_their_type() {
        let mut input = CloudEvent::new("1", "cmd", "s");
        input.set_extension(CORRELATION_ID, "c1").unwrap();
        let mut reply = CloudEvent::new("", "answer.type", "");
        reply.specversion.clear();
        let topic = route_reply(&input, &mut reply, "w1", || "gen".into()).unwrap();
        assert_eq!(topic, "answer.type");
        assert_eq!(reply.id, "gen");
        assert_eq!(reply.specversion, "1.0");
        assert_eq!(reply.source, "urn:com.virtufin.workmanager:worker/w1");
        assert_eq!(reply.extension(CORRELATION_ID), Some("c1"));

        input.set_extension(REPLY_TOPIC, "replies.here").unwrap();
        let mut reply = CloudEvent::new("x", "answer.type", "s");
        assert_eq!(
            route_reply(&input, &mut reply, "w1", || unreachable!()).unwrap(),
            "replies.here"
        );

        let mut untyped = CloudEvent::new("x", "", "s");
        let plain = CloudEvent::new("1", "cmd", "s");
        assert!(route_reply(&plain, &mut untyped, "w", || "g".into()).is_err());
    }

    #[test]
    fn a_plugins_own_correlationid_is_kept() {
        let mut input = CloudEvent::new("1", "cmd", "s");
        input.set_extension(CORRELATION_ID, "from-input").unwrap();
        let mut reply = CloudEvent::new("r", "t", "s");
        reply.set_extension(CORRELATION_ID, "from-plugin").unwrap();
        route_reply(&input, &mut reply, "w", || "g".into()).unwrap();
        assert_eq!(reply.extension(CORRELATION_ID), Some("from-plugin"));
    }

    #[test]
    fn config_is_stamped_without_overriding_the_event() {
        let mut e = CloudEvent::new("1", "t", "s");
        e.set_extension("tenant", "from-event").unwrap();
        let skipped = stamp_config(
            &mut e,
            &[
                ("tenant".into(), "from-config".into()),
                ("region".into(), "eu".into()),
                ("Bad Key".into(), "x".into()),
            ],
        );
        assert_eq!(e.extension("tenant"), Some("from-event"));
        assert_eq!(e.extension("region"), Some("eu"));
        assert_eq!(skipped, vec!["Bad Key".to_string()]);
    }

    #[test]
    fn retry_delays_double_from_the_base() {
        let base = Duration::from_millis(200);
        assert_eq!(retry_delay(base, 1), Duration::from_millis(200));
        assert_eq!(retry_delay(base, 2), Duration::from_millis(400));
        assert_eq!(retry_delay(base, 3), Duration::from_millis(800));
    }
}
