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
using System.Text;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;
using System.Diagnostics;
using System.Security.Cryptography;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.Emit;
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
                // overwrite: true is rename(2). Without it .NET moves with link(2)+unlink(2),
                // and the host's seccomp filter has no link(2): the host would die of SIGSYS.
                File.Move(partial, output, true);
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
                // Not deterministic: that hashes the output with SHA-256, which in .NET Core 3.1
                // on Linux means OpenSSL 1.1, which Debian 12 lacks (CoreCLR aborts).
                .WithDeterministic(false)
                .WithConcurrentBuild(false);
            var compilation = CSharpCompilation.Create(assemblyName, new[] { tree }, References(), options);
            using (var ms = new MemoryStream())
            {
                // No PDB, so no PDB checksum: validating the default (SHA-256) would touch OpenSSL.
                var emit = new EmitOptions().WithPdbChecksumAlgorithm(default(HashAlgorithmName));
                var result = compilation.Emit(ms, options: emit);
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

        /// <summary>
        /// The reference assemblies of netcoreapp3.1 (copied next to the bridge into ref/ by
        /// build.sh), CloudNative.CloudEvents and the DevKit, all without public keys: Roslyn
        /// computes a strong-named reference's public key token with SHA-1, which in .NET Core 3.1
        /// on Linux is OpenSSL 1.1, absent on Debian 12 (CoreCLR aborts the process). Without keys
        /// the compiled worker refers to the framework by name and version, which is how its
        /// load context binds it anyway.
        /// </summary>
        private static List<MetadataReference> References()
        {
            lock (s_lock)
            {
                if (s_references != null) return s_references;
                var dir = Path.Combine(Path.GetDirectoryName(typeof(CSharpSource).Assembly.Location), "ref");
                if (!Directory.Exists(dir))
                    throw new InvalidWorkerException("the C# source engine's reference assemblies are missing at " + dir + " (run host-runner/dotnet/build.sh)", null);
                var refs = new List<MetadataReference>();
                foreach (var path in Directory.GetFiles(dir, "*.dll").OrderBy(p => p, StringComparer.Ordinal))
                    refs.Add(MetadataReference.CreateFromImage(WithoutPublicKeys(File.ReadAllBytes(path))));
                refs.Add(MetadataReference.CreateFromImage(WithoutPublicKeys(File.ReadAllBytes(typeof(CloudNative.CloudEvents.CloudEvent).Assembly.Location))));
                refs.Add(MetadataReference.CreateFromImage(WithoutPublicKeys(File.ReadAllBytes(typeof(IWorker).Assembly.Location))));
                s_references = refs;
                return refs;
            }
        }

        /// <summary>
        /// The image with the public key of its Assembly row and the keys/tokens of its
        /// AssemblyRef rows removed (blob index 0, PublicKey flag cleared), in place.
        /// </summary>
        internal static byte[] WithoutPublicKeys(byte[] image)
        {
            const int PublicKeyFlag = 0x0001;
            using (var pe = new PEReader(new MemoryStream(image, false)))
            {
                var md = pe.GetMetadataReader();
                int start = pe.PEHeaders.MetadataStartOffset;
                int blobSize = md.GetHeapSize(HeapIndex.Blob) < 0x10000 ? 2 : 4;
                if (md.GetTableRowCount(TableIndex.Assembly) == 1)
                {
                    // HashAlgId(4) Major Minor Build Revision(2 each) Flags(4) PublicKey(blob) Name Culture
                    int row = start + md.GetTableMetadataOffset(TableIndex.Assembly);
                    ClearKey(image, row + 12, row + 16, blobSize, PublicKeyFlag);
                }
                int refs = md.GetTableRowCount(TableIndex.AssemblyRef);
                int refSize = md.GetTableRowSize(TableIndex.AssemblyRef);
                int refStart = start + md.GetTableMetadataOffset(TableIndex.AssemblyRef);
                for (int i = 0; i < refs; i++)
                {
                    // Major Minor Build Revision(2 each) Flags(4) PublicKeyOrToken(blob) Name Culture HashValue
                    int row = refStart + i * refSize;
                    ClearKey(image, row + 8, row + 12, blobSize, PublicKeyFlag);
                }
            }
            return image;
        }

        private static void ClearKey(byte[] image, int flagsAt, int keyAt, int keySize, int flag)
        {
            if (flagsAt < 0 || keyAt + keySize > image.Length) throw new BadImageFormatException("metadata row outside the image");
            image[flagsAt] = (byte)(image[flagsAt] & ~flag);
            for (int i = 0; i < keySize; i++) image[keyAt + i] = 0;
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
