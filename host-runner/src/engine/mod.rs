//! Engines run plugin code: [`dotnet`] hosts CoreCLR for `IWorker` assemblies.

pub mod dotnet;
