// The C# source engine (text/x-csharp, the original's CSharpSourceEngine): Roslyn compiles the
// worker's source inside this sandboxed host, never in the supervisor.
//
// Compile cache, keyed by <sha256 of the source>-<compiler key> (the compiler key changes with
// Roslyn, the DevKit or CloudNative.CloudEvents, so a new build never loads a stale image).
// Roslyn itself is only touched by RoslynCompiler, when a compile is needed:
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
using System.Text;
using System.Diagnostics;
using Virtufin.Worker.DevKit;

namespace Virtufin.WorkManager.Engine.DotNetDll
{
    internal static class CSharpSource
    {
        private static readonly object s_lock = new object();
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
                byte[] image = RoslynCompiler.Compile(bytes, "csharp_" + key.Substring(0, 16));
                try
                {
                    Directory.CreateDirectory(dir);
                    var partial = output + ".partial";
                    File.WriteAllBytes(partial, image);
                    // overwrite: true is rename(2). Without it .NET moves with link(2)+unlink(2),
                    // and the host's seccomp filter has no link(2): the host would die of SIGSYS.
                    File.Move(partial, output, true);
                }
                catch (Exception e) when (e is IOException || e is UnauthorizedAccessException)
                {
                    throw new InvalidWorkerException("the compiled C# source cannot be written to " + output + " (" + e.Message
                        + "); the host needs a writable TMPDIR (its private temp folder)", e);
                }
                Log("C# source " + key.Substring(0, 12) + ": compiled in " + sw.ElapsedMilliseconds + " ms (" + image.Length + " bytes)");
                return output;
            }
        }

        /// <summary>
        /// The compiler key: the sizes of Roslyn's two files and the module version ids of the
        /// DevKit and CloudNative.CloudEvents, hashed. Roslyn is not loaded for it (nor is a
        /// metadata reader): a load from the cache must not pay for Roslyn, it never compiles.
        /// </summary>
        private static string CompilerKey()
        {
            var k = s_compilerKey;
            if (k != null) return k;
            var dir = Path.GetDirectoryName(typeof(CSharpSource).Assembly.Location);
            var parts = new StringBuilder();
            foreach (var name in new[] { "Microsoft.CodeAnalysis.dll", "Microsoft.CodeAnalysis.CSharp.dll" })
            {
                var f = new FileInfo(Path.Combine(dir, name));
                parts.Append(name).Append(':').Append(f.Exists ? f.Length : -1).Append('/');
            }
            parts.Append(typeof(IWorker).Assembly.ManifestModule.ModuleVersionId).Append('/')
                .Append(typeof(CloudNative.CloudEvents.CloudEvent).Assembly.ManifestModule.ModuleVersionId);
            k = Hex(Sha256(Encoding.UTF8.GetBytes(parts.ToString()))).Substring(0, 16);
            s_compilerKey = k;
            return k;
        }

        /// <summary>SHA-256 in managed code: System.Security.Cryptography needs OpenSSL 1.1 here.</summary>
        private static byte[] Sha256(byte[] b)
        {
            return ManagedSha256.Hash(b);
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
