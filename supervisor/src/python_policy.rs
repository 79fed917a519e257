//! The import policy of `text/x-python` workers at create time (`PYTHON_BLOCKED_MODULES`).
//!
//! The source is parsed by Python's own `ast`, in a short-lived `python3 -I -S` child that
//! reads the source on stdin and answers one JSON line: nothing of the worker runs (`ast`
//! only parses), and a source built to exhaust the parser (deep nesting, huge literals) costs a
//! child process, never the daemon. Found: `import m`, `from m import x` (and `m.x`),
//! `__import__("m")` and `importlib.import_module("m")` with a literal name. Names computed at
//! run time are the host's import hook's job (`host-runner/src/engine/python/bootstrap.py`).

use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncWriteExt;

/// How long the parse may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The interpreter used for the check: the system one (the one the host links), else PATH's.
fn interpreter() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

const SCRIPT: &str = r#"
import ast, json, sys
blocked = [b for b in sys.argv[1].split(",") if b]
def hit(name):
    return any(name == b or name.startswith(b + ".") for b in blocked)
src = sys.stdin.buffer.read()
try:
    tree = ast.parse(src, filename="worker.py")
except SyntaxError as e:
    print(json.dumps({"syntax": f"SyntaxError: {e.msg} (line {e.lineno})"}))
    sys.exit(0)
except (RecursionError, MemoryError, ValueError) as e:
    print(json.dumps({"syntax": f"{type(e).__name__}: the source cannot be parsed ({e})"}))
    sys.exit(0)
found = []
for node in ast.walk(tree):
    if isinstance(node, ast.Import):
        for a in node.names:
            if hit(a.name):
                found.append((node.lineno, a.name))
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        if hit(node.module):
            found.append((node.lineno, node.module))
        else:
            for a in node.names:
                if hit(node.module + "." + a.name):
                    found.append((node.lineno, node.module + "." + a.name))
    elif isinstance(node, ast.Call) and node.args:
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        arg = node.args[0]
        if name in ("__import__", "import_module") and isinstance(arg, ast.Constant) \
                and isinstance(arg.value, str) and hit(arg.value):
            found.append((node.lineno, arg.value))
found.sort()
print(json.dumps({"blocked": [[m, l] for l, m in found]}))
"#;

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    syntax: Option<String>,
    #[serde(default)]
    blocked: Vec<(String, u32)>,
}

/// Why the check could not run (the daemon's problem, not the author's).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "the import check could not run {0}: {1}; install python3 (Debian: apt-get install python3)"
    )]
    Spawn(&'static str, std::io::Error),
    #[error("the import check took longer than {0:?} and was stopped")]
    Timeout(Duration),
    #[error("the import check failed: {0}")]
    Failed(String),
}

/// The problems of `source` under `blocked`: one `ImportError: <m> is not allowed (line N)`
/// per import of a blocked module, or the `SyntaxError` that stops the parse. Empty: allowed.
pub async fn check(source: &[u8], blocked: &[String]) -> Result<Vec<String>, PolicyError> {
    let mut child = tokio::process::Command::new(interpreter())
        .args(["-I", "-S", "-c", SCRIPT, &blocked.join(",")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| PolicyError::Spawn(interpreter(), e))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| PolicyError::Failed("no stdin pipe".into()))?;
    let source = source.to_vec();
    let run = async move {
        // Written concurrently with the read: a large source must not fill the pipe while the
        // child waits for us to read its output.
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(&source).await;
            drop(stdin);
        });
        let out = child.wait_with_output().await;
        let _ = writer.await;
        out
    };
    let out = tokio::time::timeout(TIMEOUT, run)
        .await
        .map_err(|_| PolicyError::Timeout(TIMEOUT))?
        .map_err(|e| PolicyError::Failed(e.to_string()))?;
    let line = String::from_utf8_lossy(&out.stdout);
    let answer: Answer = serde_json::from_str(line.trim()).map_err(|e| {
        PolicyError::Failed(format!(
            "unreadable answer ({e}); python said: {}",
            String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(500)
                .collect::<String>()
        ))
    })?;
    if let Some(s) = answer.syntax {
        return Ok(vec![s]);
    }
    Ok(answer
        .blocked
        .into_iter()
        .map(|(m, line)| format!("ImportError: {m} is not allowed (line {line})"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked() -> Vec<String> {
        ["subprocess", "os", "socket"].map(String::from).to_vec()
    }

    #[tokio::test]
    async fn each_blocked_import_is_named_with_its_line() {
        let src = b"import json\n\nimport subprocess\nfrom os import path\nimport os.path as p\n\
                    x = __import__('socket')\nimport importlib\nimportlib.import_module('json')\n\
                    def Process(e):\n    return None\n";
        let problems = check(src, &blocked()).await.expect("check runs");
        assert_eq!(
            problems,
            [
                "ImportError: subprocess is not allowed (line 3)",
                "ImportError: os is not allowed (line 4)",
                "ImportError: os.path is not allowed (line 5)",
                "ImportError: socket is not allowed (line 6)",
            ]
        );
    }

    #[tokio::test]
    async fn allowed_sources_and_syntax_errors() {
        let ok = b"import json, asyncio\nfrom ossify import x\ndef Process(e):\n    return e\n";
        assert!(check(ok, &blocked()).await.expect("runs").is_empty());
        let bad = b"def Process(e)\n    return e\n";
        let p = check(bad, &blocked()).await.expect("runs");
        assert_eq!(p.len(), 1);
        assert!(
            p[0].starts_with("SyntaxError:") && p[0].contains("line 1"),
            "{p:?}"
        );
        // Nothing blocked: nothing refused.
        assert!(check(b"import os\n", &[]).await.expect("runs").is_empty());
    }
}
