// The C# source engine (text/x-csharp, the original's CSharpSourceEngine): Roslyn compiles the
// worker's source inside this sandboxed host, never in the supervisor.
//
// Compile cache, keyed by <sha256 of the source>-<compiler key> (the compiler key changes with
// Roslyn, the DevKit or CloudNative.CloudEvents, so a new build never loads a stale image):
//  - <package dir>/<key>.dll: filled by the supervisor, read-only here. The host's file system
//    is read-only except its private TMPDIR, so the host cannot fill it itself; after a load
//    succeeds the supervisor copies the host's output from TMPDIR into the package dir
//    (supervisor/src/csharp_source.rs), and every later load (respawn, reload, another host)
//    maps that image instead of compiling;
//  - $TMPDIR/csharp/<key>.dll: this host's own output, reused by later loads in this process.
using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Security.Cryptography;
using System.Text;
using System.Diagnostics;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Virtufin.Worker.DevKit;

namespace Virtufin.WorkManager.Engine.DotNetDll
{
    internal static class CSharpSource
    {
        private static readonly object s_lock = new object();
        private static List<MetadataReference> s_references;
        private static string s_compilerKey;

        /// <summary>The path of the compiled image of <paramref name="sourcePath"/>, compiling it if no cache has it.</summary>
        public static string Compiled(string sourcePath, string packageDir)
        {
            byte[] bytes;
            try
            {
                bytes = File.ReadAllBytes(sourcePath);
            }
            catch (Exception e)
            {
                throw new InvalidWorkerException("the C# source cannot be read at " + sourcePath + ": " + e.Message, e);
            }
            string key = Hex(Sha256(bytes)) + "-" + CompilerKey();
            var cached = Path.Combine(packageDir, key + ".dll");
            if (File.Exists(cached))
            {
                Log("C# source " + key.Substring(0, 12) + ": compiled image from the cache " + cached);
                return cached;
            }
            var tmpRoot = Environment.GetEnvironmentVariable("TMPDIR");
            if (string.IsNullOrEmpty(tmpRoot)) tmpRoot = Path.GetTempPath();
            var dir = Path.Combine(tmpRoot, "csharp");
            var output = Path.Combine(dir, key + ".dll");
            lock (s_lock)
            {
                if (File.Exists(output))
                {
                    Log("C# source " + key.Substring(0, 12) + ": compiled image from this host's earlier compile");
                    return output;
                }
                var sw = Stopwatch.StartNew();
                byte[] image = Compile(bytes, "csharp_" + key.Substring(0, 16));
                Directory.CreateDirectory(dir);
                var partial = output + ".partial";
                File.WriteAllBytes(partial, image);
                File.Move(partial, output);
                Log("C# source " + key.Substring(0, 12) + ": compiled in " + sw.ElapsedMilliseconds + " ms (" + image.Length + " bytes)");
                return output;
            }
        }

        /// <summary>Compiles UTF-8 C# source to an assembly image; every error becomes one line of the exception.</summary>
        private static byte[] Compile(byte[] utf8, string assemblyName)
        {
            string text;
            try
            {
                text = new UTF8Encoding(false, true).GetString(utf8);
            }
            catch (DecoderFallbackException e)
            {
                throw new InvalidWorkerException("the C# source is not valid UTF-8: " + e.Message, e);
            }
            var tree = CSharpSyntaxTree.ParseText(text, new CSharpParseOptions(LanguageVersion.Latest), "worker.cs");
            var options = new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary)
                .WithOptimizationLevel(OptimizationLevel.Release)
                .WithDeterministic(true)
                .WithConcurrentBuild(false);
            var compilation = CSharpCompilation.Create(assemblyName, new[] { tree }, References(), options);
            using (var ms = new MemoryStream())
            {
                var result = compilation.Emit(ms);
                if (!result.Success)
                {
                    var errors = result.Diagnostics.Where(d => d.Severity == DiagnosticSeverity.Error).ToList();
                    if (errors.Count == 0) errors = result.Diagnostics.ToList();
                    var sb = new StringBuilder();
                    sb.Append("the C# source does not compile (").Append(errors.Count).Append(errors.Count == 1 ? " error" : " errors").Append("):");
                    foreach (var d in errors.OrderBy(d => d.Location.SourceSpan.Start)) sb.Append('\n').Append(Format(d));
                    throw new InvalidWorkerException(sb.ToString(), null);
                }
                return ms.ToArray();
            }
        }

        /// <summary><c>error CS0103: The name 'x' does not exist in the current context (line 12, col 5)</c></summary>
        internal static string Format(Diagnostic d)
        {
            var sb = new StringBuilder();
            sb.Append(d.Severity == DiagnosticSeverity.Error ? "error" : d.Severity == DiagnosticSeverity.Warning ? "warning" : "info")
              .Append(' ').Append(d.Id).Append(": ").Append(d.GetMessage(CultureInfo.InvariantCulture));
            if (d.Location.IsInSource)
            {
                var pos = d.Location.GetLineSpan().StartLinePosition;
                sb.Append(" (line ").Append(pos.Line + 1).Append(", col ").Append(pos.Character + 1).Append(')');
            }
            return sb.ToString();
        }

        /// <summary>The BCL (the running framework's assemblies), CloudNative.CloudEvents and the DevKit.</summary>
        private static List<MetadataReference> References()
        {
            lock (s_lock)
            {
                if (s_references != null) return s_references;
                var refs = new List<MetadataReference>();
                var seen = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
                var tpa = AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES") as string ?? string.Empty;
                foreach (var path in tpa.Split(Path.PathSeparator))
                {
                    if (path.Length == 0 || !path.EndsWith(".dll", StringComparison.OrdinalIgnoreCase)) continue;
                    var name = Path.GetFileNameWithoutExtension(path);
                    // Only the framework: names the workers see anyway. Roslyn's own and the
                    // host's assemblies are not in the TPA list.
                    if (!(name.StartsWith("System", StringComparison.Ordinal) || name.StartsWith("Microsoft.", StringComparison.Ordinal)
                        || name == "netstandard" || name == "mscorlib")) continue;
                    if (name.StartsWith("Microsoft.CodeAnalysis", StringComparison.Ordinal)) continue;
                    if (seen.Add(name)) refs.Add(MetadataReference.CreateFromFile(path));
                }
                refs.Add(MetadataReference.CreateFromFile(typeof(CloudNative.CloudEvents.CloudEvent).Assembly.Location));
                refs.Add(MetadataReference.CreateFromFile(typeof(IWorker).Assembly.Location));
                s_references = refs;
                return refs;
            }
        }

        /// <summary>Roslyn's, the DevKit's and CloudNative.CloudEvents' module versions, hashed.</summary>
        private static string CompilerKey()
        {
            var k = s_compilerKey;
            if (k != null) return k;
            var parts = typeof(CSharpCompilation).Assembly.ManifestModule.ModuleVersionId + "/"
                + typeof(IWorker).Assembly.ManifestModule.ModuleVersionId + "/"
                + typeof(CloudNative.CloudEvents.CloudEvent).Assembly.ManifestModule.ModuleVersionId;
            k = Hex(Sha256(Encoding.UTF8.GetBytes(parts))).Substring(0, 16);
            s_compilerKey = k;
            return k;
        }

        private static byte[] Sha256(byte[] b)
        {
            using (var h = SHA256.Create()) return h.ComputeHash(b);
        }

        private static string Hex(byte[] b)
        {
            var sb = new StringBuilder(b.Length * 2);
            foreach (var x in b) sb.Append(x.ToString("x2", CultureInfo.InvariantCulture));
            return sb.ToString();
        }

        private static void Log(string message)
        {
            var ctx = WorkerContext.Current;
            if (ctx != null) ctx.Log(WorkerLogLevel.Information, message);
        }
    }
}
