//! Per-worker resource limits: a worker's `limits` (create and reload bodies, REST and gRPC)
//! override the engine's settings for that worker's host.
//!
//! A limit is a property of a process, so a worker with limits always gets a host of its own
//! (`pool` places it like `isolation: dedicated`), spawned with them, and every respawn of
//! that host gets them again. `memoryBytes` is one number mapped per engine, the same way the
//! engine-wide settings are: `RLIMIT_AS` for native and Python hosts
//! (`HOST_RLIMIT_AS_BYTES`), the GC heap hard limit for .NET hosts
//! (`HOST_DOTNET_GC_HEAP_HARD_LIMIT_BYTES`; CoreCLR reserves gigabytes of address space it
//! never touches, so `RLIMIT_AS` would stop it, docs/chaos.md).

use serde::{Deserialize, Serialize};
use wm_shared::package::EngineKind;

/// The largest memory limit accepted (1 TiB), as for the engine settings.
pub const MAX_MEMORY_BYTES: u64 = 1 << 40;

/// A worker's own resource limits; `None` fields fall back to the engine's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerLimits {
    /// Memory bound of the worker's host, bytes: `RLIMIT_AS` (native, Python) or the GC heap
    /// hard limit (.NET), see [`MemoryMechanism`].
    #[serde(default, alias = "memory_bytes")]
    pub memory_bytes: Option<u64>,
}

impl WorkerLimits {
    /// Whether no limit is set (the engine's settings apply; the host may be shared).
    pub fn is_empty(&self) -> bool {
        self.memory_bytes.is_none()
    }
}

/// How an engine enforces `memoryBytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryMechanism {
    /// `RLIMIT_AS` on the host process: past it, `malloc` fails (a plugin that does not check
    /// crashes its host; Python raises `MemoryError`).
    AddressSpace,
    /// CoreCLR's `GCHeapHardLimit`: past it, an allocation throws `OutOfMemoryException`.
    GcHeapHardLimit,
}

impl MemoryMechanism {
    /// The mechanism `engine` uses.
    pub fn of(engine: EngineKind) -> MemoryMechanism {
        match engine {
            EngineKind::DotNet | EngineKind::CSharpSource => MemoryMechanism::GcHeapHardLimit,
            EngineKind::Native | EngineKind::Python | EngineKind::PythonWheel => {
                MemoryMechanism::AddressSpace
            }
        }
    }

    /// The smallest limit that leaves the engine room to start (as for the engine settings:
    /// 64 MiB of address space, 16 MiB of GC heap).
    pub fn min_bytes(self) -> u64 {
        match self {
            MemoryMechanism::AddressSpace => 64 << 20,
            MemoryMechanism::GcHeapHardLimit => 16 << 20,
        }
    }

    /// The engine setting this overrides, for messages.
    pub fn setting(self) -> &'static str {
        match self {
            MemoryMechanism::AddressSpace => "HOST_RLIMIT_AS_BYTES",
            MemoryMechanism::GcHeapHardLimit => "HOST_DOTNET_GC_HEAP_HARD_LIMIT_BYTES",
        }
    }

    fn name(self) -> &'static str {
        match self {
            MemoryMechanism::AddressSpace => "an address-space limit (RLIMIT_AS)",
            MemoryMechanism::GcHeapHardLimit => "a GC heap hard limit (GCHeapHardLimit)",
        }
    }
}

/// Checks `limits` for a worker of `engine`; the error says the accepted range and why.
pub fn check(limits: &WorkerLimits, engine: EngineKind) -> Result<(), String> {
    let Some(bytes) = limits.memory_bytes else {
        return Ok(());
    };
    let m = MemoryMechanism::of(engine);
    let min = m.min_bytes();
    if bytes == 0 {
        return Err(format!(
            "limits.memoryBytes 0 is not a limit: leave it out (or send \"limits\": {{}}) to use the engine's {}",
            m.setting()
        ));
    }
    if !(min..=MAX_MEMORY_BYTES).contains(&bytes) {
        return Err(format!(
            "limits.memoryBytes {bytes} is out of range {min}-{MAX_MEMORY_BYTES} ({} MiB-1 TiB): for a {} worker it is {}",
            min >> 20,
            engine.mime(),
            m.name()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(n: u64) -> WorkerLimits {
        WorkerLimits {
            memory_bytes: Some(n),
        }
    }

    #[test]
    fn memory_maps_to_rlimit_as_for_native_and_python_and_to_the_gc_heap_for_dotnet() {
        assert_eq!(
            MemoryMechanism::of(EngineKind::Native),
            MemoryMechanism::AddressSpace
        );
        assert_eq!(
            MemoryMechanism::of(EngineKind::PythonWheel),
            MemoryMechanism::AddressSpace
        );
        assert_eq!(
            MemoryMechanism::of(EngineKind::DotNet),
            MemoryMechanism::GcHeapHardLimit
        );
        assert_eq!(
            MemoryMechanism::of(EngineKind::CSharpSource),
            MemoryMechanism::GcHeapHardLimit
        );
    }

    #[test]
    fn ranges_are_per_engine_and_errors_name_the_range() {
        assert!(check(&WorkerLimits::default(), EngineKind::Native).is_ok());
        assert!(check(&mem(64 << 20), EngineKind::Native).is_ok());
        assert!(check(&mem(32 << 20), EngineKind::DotNet).is_ok());
        let e = check(&mem(32 << 20), EngineKind::Native).unwrap_err();
        assert!(e.contains("67108864-1099511627776"), "{e}");
        assert!(e.contains("RLIMIT_AS"), "{e}");
        let e = check(&mem(1 << 20), EngineKind::DotNet).unwrap_err();
        assert!(e.contains("16777216-"), "{e}");
        assert!(e.contains("GCHeapHardLimit"), "{e}");
        assert!(check(&mem((1 << 40) + 1), EngineKind::DotNet).is_err());
        let e = check(&mem(0), EngineKind::Native).unwrap_err();
        assert!(e.contains("HOST_RLIMIT_AS_BYTES"), "{e}");
    }

    #[test]
    fn json_is_camel_case_and_refuses_unknown_fields() {
        let l: WorkerLimits = serde_json::from_str(r#"{"memoryBytes": 1048576}"#).unwrap();
        assert_eq!(l, mem(1 << 20));
        let l: WorkerLimits = serde_json::from_str(r#"{"memory_bytes": 5}"#).unwrap();
        assert_eq!(l, mem(5));
        assert!(serde_json::from_str::<WorkerLimits>(r#"{"memory": 5}"#).is_err());
        assert_eq!(
            serde_json::to_value(mem(7)).unwrap(),
            serde_json::json!({"memoryBytes": 7})
        );
    }
}
