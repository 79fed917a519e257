using System.Reflection;
// 2.x: the CloudNative.CloudEvents surface. 1.x (host-runner/dotnet/devkit-v1) is the earlier
// DevKit with its own CloudEvent type; the bridge keeps both working (docs/dotnet.md).
[assembly: AssemblyVersion("2.0.0.0")]
[assembly: AssemblyTitle("Virtufin.Worker.DevKit")]
