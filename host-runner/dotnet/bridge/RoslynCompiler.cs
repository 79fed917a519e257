// Roslyn for the C# source engine (CSharpSource.cs). Kept apart so that nothing else in the
// bridge loads Roslyn: a host maps Microsoft.CodeAnalysis*.dll only when it compiles. Built
// with NO_ROSLYN (build.sh, when the SDK's Roslyn is missing) the engine refuses source with
// a message that says so, and DLL workers are unaffected.
#if !NO_ROSLYN
using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;
using System.Security.Cryptography;
using System.Text;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.Emit;
using Virtufin.Worker.DevKit;

namespace Virtufin.WorkManager.Engine.DotNetDll
{
    internal static class RoslynCompiler
    {
        private static readonly object s_lock = new object();
        private static List<MetadataReference> s_references;

        /// <summary>Compiles UTF-8 C# source to an assembly image; every error becomes one line of the exception.</summary>
        internal static byte[] Compile(byte[] utf8, string assemblyName)
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
                var dir = Path.Combine(Path.GetDirectoryName(typeof(RoslynCompiler).Assembly.Location), "ref");
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

    }
}
#else
namespace Virtufin.WorkManager.Engine.DotNetDll
{
    internal static class RoslynCompiler
    {
        internal static byte[] Compile(byte[] utf8, string assemblyName)
        {
            throw new InvalidWorkerException("this host-runner's bridge was built without Roslyn, so it cannot compile C# source: "
                + "run scripts/install-deps.sh, then host-runner/dotnet/build.sh", null);
        }
    }
}
#endif
