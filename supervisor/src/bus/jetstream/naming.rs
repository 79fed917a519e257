//! How topics map to JetStream names.
//!
//! A topic is `[A-Za-z0-9._-]{1,250}`. It becomes one subject token (`.` → `~`, a character
//! topics never contain, so the mapping is reversible and a topic like `a..b` still makes a
//! valid subject) under `<prefix>.t.`, and the durable consumer of its workers is named from
//! the same token.

/// Names of one deployment's JetStream objects.
#[derive(Debug, Clone)]
pub struct Names {
    /// `<P>_EVENTS`: the stream every topic lives in.
    pub stream: String,
    /// `<p>.t`: the subject root of topics.
    pub subject_root: String,
    /// `<P>_ATTEMPTS`: the KV bucket of untried hand-outs (see `attempts.rs`).
    pub attempts_bucket: String,
    /// `<P>_W_`: the prefix of worker consumers' durable names.
    durable_prefix: String,
}

impl Names {
    /// Names for `NATS_STREAM_PREFIX` = `prefix` (`[A-Z0-9_]+`).
    pub fn new(prefix: &str) -> Names {
        Names {
            stream: format!("{prefix}_EVENTS"),
            subject_root: format!("{}.t", prefix.to_ascii_lowercase()),
            attempts_bucket: format!("{prefix}_ATTEMPTS"),
            durable_prefix: format!("{prefix}_W_"),
        }
    }

    /// The subject of `topic`.
    pub fn subject(&self, topic: &str) -> String {
        format!("{}.{}", self.subject_root, token(topic))
    }

    /// The subject filter of every topic.
    pub fn all_topics(&self) -> String {
        format!("{}.>", self.subject_root)
    }

    /// The topic of a subject of this stream, if it is one.
    pub fn topic_of(&self, subject: &str) -> Option<String> {
        let tok = subject
            .strip_prefix(&self.subject_root)?
            .strip_prefix('.')?;
        (!tok.is_empty() && !tok.contains('.')).then(|| tok.replace('~', "."))
    }

    /// The durable consumer shared by every consumer of `topic` on every daemon.
    pub fn durable(&self, topic: &str) -> String {
        format!("{}{}", self.durable_prefix, token(topic))
    }
}

fn token(topic: &str) -> String {
    topic.replace('.', "~")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_through_one_subject_token() {
        let n = Names::new("WM");
        for topic in ["orders", "orders.v1", "a..b", ".x.", "x-dead", "A_b-c.9"] {
            let s = n.subject(topic);
            assert_eq!(s.matches('.').count(), 2, "{s}: one token under wm.t");
            assert_eq!(n.topic_of(&s).as_deref(), Some(topic));
            assert!(!n.durable(topic).contains('.'));
        }
        assert_eq!(n.topic_of("wm.other.x"), None);
        assert_eq!(n.topic_of("wm.t.a.b"), None);
        assert_eq!(n.stream, "WM_EVENTS");
    }
}
