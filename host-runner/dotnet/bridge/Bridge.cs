// The engine bridge: the managed half of the host-runner's .NET engine
// (host-runner/src/engine/dotnet.rs). The host-runner loads this assembly through hostfxr's
// load_assembly_and_get_function_pointer and calls the static ComponentEntryPoint methods below
// with a pointer to a #[repr(C)] argument struct (every field 8 bytes, mirrored in Rust).
// Nothing may throw out of an entry point: an exception crossing a reverse P/Invoke kills the
// process, so each one catches everything and reports it as text through the deliver callback.
using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.IO;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Loader;
using System.Text;
using System.Threading;
using CloudNative.CloudEvents;
using Virtufin.Worker.DevKit;

namespace Virtufin.WorkManager.Engine.DotNetDll
{
    /// <summary>A worker assembly that cannot be loaded; the message lists every loader error.</summary>
    public sealed class InvalidWorkerException : Exception
    {
        /// <summary>Creates the exception.</summary>
        public InvalidWorkerException(string message, Exception inner) : base(message, inner) { }
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct InitArgs
    {
        public IntPtr Log;
        public IntPtr Gateway;
        public IntPtr Free;
        public IntPtr Deliver;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct LoadArgs
    {
        public IntPtr Ctx;
        public IntPtr WorkerId;
        public long WorkerIdLen;
        public IntPtr DllPath;
        public long DllPathLen;
        public IntPtr PackageDir;
        public long PackageDirLen;
        public long Flags;  // LoadFlagValidateOnly: compile/load and find the entry, create nothing
        public long Handle; // out
        public IntPtr Topic;
        public long TopicLen;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct ProcessArgs
    {
        public IntPtr Ctx;
        public long Handle;
        public IntPtr Input;
        public long InputLen;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct HandleArgs
    {
        public long Handle;
        public long Value; // in: max GC rounds (Collect); out: contexts still alive (Collect)
    }

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    internal delegate void DeliverCallback(IntPtr ctx, int kind, IntPtr data, long length);

    /// <summary>Entry points called by the host-runner (ComponentEntryPoint signature).</summary>
    public static class Bridge
    {
        /// <summary>Status codes returned to the host (mirrored in dotnet.rs).</summary>
        internal const int Ok = 0, NoReply = 1, Failed = 2, WorkerException = 4, UnknownWorker = 5, BadArguments = 7;
        /// <summary>What a deliver call carries.</summary>
        private const int KindResponse = 0, KindText = 1;

        private static DeliverCallback s_deliver;
        private static long s_nextHandle;
        private static readonly ConcurrentDictionary<long, WorkerSlot> s_workers = new ConcurrentDictionary<long, WorkerSlot>();
        private static readonly List<WeakReference> s_unloading = new List<WeakReference>();
        [ThreadStatic] private static FbWriter t_writer;

        /// <summary>Load flag: validate only (the supervisor's check before it accepts C# source).</summary>
        private const long LoadFlagValidateOnly = 1;

        private sealed class WorkerSlot
        {
            public string Id;
            public WorkerRunner Runner; // null for a validate-only load
            public WorkerLoadContext Context;
        }

        private static IntPtr s_log, s_gateway, s_free;

        /// <summary>Installs the native callbacks. Must be the first call.</summary>
        public static unsafe int Init(IntPtr arg, int size)
        {
            try
            {
                if (arg == IntPtr.Zero || size != sizeof(InitArgs)) return BadArguments;
                var a = (InitArgs*)arg;
                if (a->Deliver == IntPtr.Zero) return BadArguments;
                s_deliver = Marshal.GetDelegateForFunctionPointer<DeliverCallback>(a->Deliver);
                WorkerHost.SetCallbacks(a->Log, a->Gateway, a->Free);
                s_log = a->Log;
                s_gateway = a->Gateway;
                s_free = a->Free;
                // Make sure the host's DevKit and CloudNative.CloudEvents are loaded before any
                // worker asks for them (the canonical-assembly rule aliases what is loaded).
                GC.KeepAlive(typeof(IWorker));
                GC.KeepAlive(typeof(CloudEvent));
                OpenSslGuard.Install();
                return Ok;
            }
            catch (Exception)
            {
                return Failed;
            }
        }

        /// <summary>
        /// Loads a worker into its own collectible context and creates its instance. A path ending
        /// in ".cs" is C# source, compiled first (or taken from the compile cache).
        /// </summary>
        public static unsafe int Load(IntPtr arg, int size)
        {
            if (arg == IntPtr.Zero || size != sizeof(LoadArgs)) return BadArguments;
            var a = (LoadArgs*)arg;
            WorkerLoadContext alc = null;
            try
            {
                string id = Utf8(a->WorkerId, a->WorkerIdLen);
                string dll = Utf8(a->DllPath, a->DllPathLen);
                string packageDir = Utf8(a->PackageDir, a->PackageDirLen);
                string topic = Utf8(a->Topic, a->TopicLen);
                bool validateOnly = (a->Flags & LoadFlagValidateOnly) != 0;
                if (!Path.IsPathRooted(dll)) dll = Path.Combine(packageDir, dll);
                dll = Path.GetFullPath(dll);
                bool source = dll.EndsWith(".cs", StringComparison.OrdinalIgnoreCase);
                if (source)
                {
                    var logCtx = WorkerHost.Enter(id, a->Ctx);
                    try
                    {
                        dll = CSharpSource.Compiled(dll, packageDir);
                    }
                    finally
                    {
                        WorkerHost.Exit(logCtx);
                    }
                }
                alc = new WorkerLoadContext(id, Path.GetDirectoryName(dll), typeof(Bridge).Assembly);
                Assembly asm;
                try
                {
                    asm = alc.LoadFromAssemblyPath(dll);
                }
                catch (Exception e)
                {
                    throw new InvalidWorkerException("Worker assembly '" + dll + "' could not be loaded: " + e.Message, e);
                }
                alc.Legacy = LegacyDevKit.Wants(asm);
                // VIRTUFIN_WORKER_ID/TOPIC while the worker's constructor runs, as the original
                // sets them (the runtime keeps its own copy of the environment, so the host's
                // setenv would not reach managed code). Loads are serialised by the host
                // (engine/env.rs), so no two loads see each other's values.
                string prevId = Environment.GetEnvironmentVariable("VIRTUFIN_WORKER_ID");
                string prevTopic = Environment.GetEnvironmentVariable("VIRTUFIN_WORKER_TOPIC");
                Environment.SetEnvironmentVariable("VIRTUFIN_WORKER_ID", id);
                Environment.SetEnvironmentVariable("VIRTUFIN_WORKER_TOPIC", topic);
                WorkerRunner runner;
                try
                {
                    runner = Runners.Find(asm, alc, id, a->Ctx, source, validateOnly);
                }
                catch (TypeInitializationException e)
                {
                    throw new InvalidWorkerException("A static constructor of the worker threw: " + (e.InnerException ?? e), e);
                }
                finally
                {
                    Environment.SetEnvironmentVariable("VIRTUFIN_WORKER_ID", prevId);
                    Environment.SetEnvironmentVariable("VIRTUFIN_WORKER_TOPIC", prevTopic);
                }
                if (validateOnly)
                {
                    Unloading(alc);
                    alc = null;
                }
                long handle = Interlocked.Increment(ref s_nextHandle);
                s_workers[handle] = new WorkerSlot { Id = id, Runner = runner, Context = alc };
                a->Handle = handle;
                return Ok;
            }
            catch (Exception e)
            {
                if (alc != null) Unloading(alc);
                DeliverText(a->Ctx, e is InvalidWorkerException || e is InvalidOperationException ? e.Message : e.ToString());
                return Failed;
            }
        }

        /// <summary>The native callbacks, for the 1.x DevKit's WorkerContext.</summary>
        internal static void Callbacks(out IntPtr log, out IntPtr gateway, out IntPtr free)
        {
            log = s_log;
            gateway = s_gateway;
            free = s_free;
        }

        /// <summary>Every distinct loader error of a worker assembly, as InvalidWorkerException.</summary>
        internal static Type[] TypesOf(Assembly asm)
        {
            try
            {
                return asm.GetTypes();
            }
            catch (ReflectionTypeLoadException e)
            {
                var sb = new StringBuilder();
                sb.Append("Worker assembly '").Append(asm.GetName().Name).Append("' could not be loaded; loader errors:");
                var seen = new HashSet<string>();
                foreach (var le in e.LoaderExceptions)
                {
                    if (le == null) continue;
                    if (seen.Add(le.Message)) sb.Append("\n  - ").Append(le.Message);
                }
                if (seen.Count == 0) sb.Append("\n  - ").Append(e.Message);
                throw new InvalidWorkerException(sb.ToString(), e);
            }
        }

        /// <summary>Runs one message: FlatBuffer CloudEvent in, WorkerResponse out through deliver.</summary>
        public static unsafe int Process(IntPtr arg, int size)
        {
            if (arg == IntPtr.Zero || size != sizeof(ProcessArgs)) return BadArguments;
            var a = (ProcessArgs*)arg;
            try
            {
                WorkerSlot slot;
                if (!s_workers.TryGetValue(a->Handle, out slot)) return UnknownWorker;
                if (a->InputLen < 0 || a->InputLen > int.MaxValue) return BadArguments;
                if (slot.Runner == null)
                {
                    DeliverText(a->Ctx, "worker " + slot.Id + " was loaded for validation only");
                    return Failed;
                }
                var w = t_writer ?? (t_writer = new FbWriter());
                w.Reset();
                string error;
                byte[] bytes;
                int status = slot.Runner.Run(a->Ctx, a->Input, (int)a->InputLen, w, out bytes, out error);
                if (status != Ok)
                {
                    if (error != null) DeliverText(a->Ctx, error);
                    return status;
                }
                if (bytes != null)
                {
                    fixed (byte* p = bytes)
                    {
                        s_deliver(a->Ctx, KindResponse, (IntPtr)p, bytes.Length);
                    }
                }
                else
                {
                    fixed (byte* p = w.Buffer)
                    {
                        s_deliver(a->Ctx, KindResponse, (IntPtr)p, w.Length);
                    }
                }
                return Ok;
            }
            catch (Exception e)
            {
                DeliverText(a->Ctx, e.ToString());
                return Failed;
            }
        }

        /// <summary>Drops a worker and unloads its context (collected by a later GC).</summary>
        public static unsafe int Unload(IntPtr arg, int size)
        {
            if (arg == IntPtr.Zero || size != sizeof(HandleArgs)) return BadArguments;
            var a = (HandleArgs*)arg;
            try
            {
                WorkerSlot slot;
                if (!s_workers.TryRemove(a->Handle, out slot)) return UnknownWorker;
                var alc = slot.Context;
                slot.Runner = null;
                slot.Context = null;
                if (alc != null) Unloading(alc);
                return Ok;
            }
            catch (Exception)
            {
                return Failed;
            }
        }

        /// <summary>Runs up to Value GC rounds until every unloaded context is collected; Value out = still alive.</summary>
        public static unsafe int Collect(IntPtr arg, int size)
        {
            if (arg == IntPtr.Zero || size != sizeof(HandleArgs)) return BadArguments;
            var a = (HandleArgs*)arg;
            try
            {
                long rounds = a->Value;
                int alive = Alive();
                for (long i = 0; i < rounds && alive > 0; i++)
                {
                    GC.Collect();
                    GC.WaitForPendingFinalizers();
                    alive = Alive();
                }
                a->Value = alive;
                return Ok;
            }
            catch (Exception)
            {
                return Failed;
            }
        }

        private static int Alive()
        {
            lock (s_unloading)
            {
                s_unloading.RemoveAll(w => !w.IsAlive);
                return s_unloading.Count;
            }
        }

        private static void Unloading(WorkerLoadContext alc)
        {
            var weak = new WeakReference(alc, trackResurrection: false);
            alc.Unload();
            lock (s_unloading) s_unloading.Add(weak);
        }

        private static unsafe string Utf8(IntPtr p, long len)
        {
            if (len == 0) return string.Empty;
            if (p == IntPtr.Zero || len < 0 || len > int.MaxValue) throw new ArgumentException("bad string argument from the host");
            return Encoding.UTF8.GetString((byte*)p, (int)len);
        }

        private static unsafe void DeliverText(IntPtr ctx, string text)
        {
            var d = s_deliver;
            if (d == null) return;
            var bytes = Encoding.UTF8.GetBytes(text ?? string.Empty);
            fixed (byte* p = bytes)
            {
                d(ctx, KindText, (IntPtr)p, bytes.Length);
            }
        }
    }

    /// <summary>
    /// One worker's collectible load context. Keeps the canonical-assembly invariant: a simple
    /// name the host already loaded (notably Virtufin.Worker.DevKit) resolves to the host's copy,
    /// framework assemblies come from the shared framework, anything else from the package's
    /// sibling DLLs. Assemblies are loaded by path (mapped read-only), not from a stream: under
    /// the host-runner's Landlock rules (no file writes anywhere) CoreCLR 3.1 fails to load an
    /// image from a stream with ERROR_INTERNAL_ERROR (0x8007054F), while a path works.
    /// </summary>
    internal sealed class WorkerLoadContext : AssemblyLoadContext
    {
        private static HashSet<string> s_platform;
        private readonly string _dir;
        private readonly AssemblyLoadContext _host;

        public WorkerLoadContext(string workerId, string dir, Assembly hostAssembly)
            : base("worker:" + workerId, isCollectible: true)
        {
            _dir = dir;
            _host = GetLoadContext(hostAssembly) ?? Default;
        }

        /// <summary>A worker built against the 1.x DevKit: its DevKit reference goes to the 1.x copy.</summary>
        public bool Legacy { get; set; }

        protected override Assembly Load(AssemblyName name)
        {
            var simple = name.Name;
            if (string.IsNullOrEmpty(simple)) return null;
            if (Legacy && string.Equals(simple, LegacyDevKit.Name, StringComparison.OrdinalIgnoreCase)) return LegacyDevKit.Assembly;
            foreach (var a in _host.Assemblies)
            {
                if (string.Equals(a.GetName().Name, simple, StringComparison.OrdinalIgnoreCase)) return a;
            }
            if (_host != Default)
            {
                foreach (var a in Default.Assemblies)
                {
                    if (string.Equals(a.GetName().Name, simple, StringComparison.OrdinalIgnoreCase)) return a;
                }
            }
            if (Platform().Contains(simple)) return null;
            var candidate = Path.Combine(_dir, simple + ".dll");
            if (File.Exists(candidate)) return LoadFromAssemblyPath(candidate);
            return null;
        }

        private static HashSet<string> Platform()
        {
            var p = s_platform;
            if (p != null) return p;
            p = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
            var tpa = AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES") as string;
            if (tpa != null)
            {
                foreach (var path in tpa.Split(Path.PathSeparator))
                {
                    if (path.Length > 0) p.Add(Path.GetFileNameWithoutExtension(path));
                }
            }
            s_platform = p;
            return p;
        }
    }
}
