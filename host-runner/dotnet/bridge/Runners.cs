// How a loaded worker assembly is called. Three shapes, found in this order:
//  1. a public, non-abstract class implementing the host's IWorker (2.x DevKit, CloudNative
//     CloudEvent), one instance kept across calls;
//  2. a public static ProcessAsync or Process method taking one CloudEvent and returning a
//     CloudEvent or a Task of one (the original accepts a static method too); C# source also
//     allows the instance form on a class with a parameterless constructor;
//  3. a worker built against the 1.x DevKit (its own CloudEvent type), run through that
//     DevKit's LegacyBridge in a shared, non-collectible context.
using System;
using System.IO;
using System.Reflection;
using System.Runtime.Loader;
using System.Threading.Tasks;
using CloudNative.CloudEvents;
using Virtufin.Worker.DevKit;

namespace Virtufin.WorkManager.Engine.DotNetDll
{
    /// <summary>One loaded worker's way of handling a message.</summary>
    internal abstract class WorkerRunner
    {
        protected WorkerRunner(string id) { Id = id; }

        public string Id { get; private set; }

        /// <summary>
        /// Runs one message. On Ok the WorkerResponse is in <paramref name="bytes"/> or, when that
        /// is null, in <paramref name="w"/>; any other status comes with an error text.
        /// </summary>
        public abstract int Run(IntPtr native, IntPtr input, int length, FbWriter w, out byte[] bytes, out string error);
    }

    /// <summary>A 2.x worker: an IWorker instance or a Process/ProcessAsync method.</summary>
    internal sealed class ModernRunner : WorkerRunner
    {
        private readonly Func<CloudEvent, Task<CloudEvent>> _call;

        public ModernRunner(string id, Func<CloudEvent, Task<CloudEvent>> call) : base(id) { _call = call; }

        public override unsafe int Run(IntPtr native, IntPtr input, int length, FbWriter w, out byte[] bytes, out string error)
        {
            bytes = null;
            error = null;
            CloudEvent ev;
            try
            {
                ev = CloudEventCodec.DecodeCloudEvent((byte*)input, length);
            }
            catch (Exception e)
            {
                error = "the input is not a valid CloudEvent FlatBuffer: " + e.Message;
                return Bridge.Failed;
            }
            CloudEvent reply;
            var ctx = WorkerHost.Enter(Id, native);
            try
            {
                var task = _call(ev);
                reply = task == null ? null : task.GetAwaiter().GetResult();
            }
            catch (Exception e)
            {
                error = e.ToString();
                return Bridge.WorkerException;
            }
            finally
            {
                WorkerHost.Exit(ctx);
            }
            if (reply == null) return Bridge.NoReply;
            try
            {
                CloudEventCodec.EncodeWorkerResponse(w, reply, null);
            }
            catch (Exception e)
            {
                error = "the worker's reply cannot be encoded: " + e;
                return Bridge.WorkerException;
            }
            return Bridge.Ok;
        }
    }

    /// <summary>A 1.x worker, called through the 1.x DevKit's LegacyBridge.</summary>
    internal sealed class LegacyRunner : WorkerRunner
    {
        private readonly object _worker;

        public LegacyRunner(string id, object worker) : base(id) { _worker = worker; }

        public override int Run(IntPtr native, IntPtr input, int length, FbWriter w, out byte[] bytes, out string error)
        {
            return LegacyDevKit.Process(_worker, Id, native, input, length, out bytes, out error);
        }
    }

    internal static class Runners
    {
        private const string NoWorker = "No IWorker implementation found in the worker assembly. Implement Virtufin.Worker.DevKit.IWorker on a public, non-abstract class.";

        /// <summary>The runner for a loaded assembly (null when <paramref name="validateOnly"/>: nothing is created).</summary>
        public static WorkerRunner Find(Assembly asm, WorkerLoadContext alc, string id, IntPtr native, bool source, bool validateOnly)
        {
            Type[] types = Bridge.TypesOf(asm);
            if (alc.Legacy) return FindLegacy(types, id, native, validateOnly);
            Type workerType = null;
            foreach (var t in types)
            {
                if (t.IsClass && !t.IsAbstract && t.IsVisible && typeof(IWorker).IsAssignableFrom(t)
                    && t.GetConstructor(Type.EmptyTypes) != null)
                {
                    if (workerType == null || string.CompareOrdinal(t.FullName, workerType.FullName) < 0) workerType = t;
                }
            }
            if (workerType != null)
            {
                if (validateOnly) return null;
                var instance = (IWorker)Create(workerType, id, native);
                return new ModernRunner(id, instance.ProcessAsync);
            }
            MethodInfo method = FindMethod(types, source);
            if (method == null)
            {
                if (source)
                    throw new InvalidOperationException("No Process or ProcessAsync method found in the C# source. Declare a public method "
                        + "taking one CloudNative.CloudEvents.CloudEvent and returning a CloudEvent or Task<CloudEvent> (static, or on a public "
                        + "class with a parameterless constructor), or implement Virtufin.Worker.DevKit.IWorker.");
                throw new InvalidOperationException(NoWorker);
            }
            if (validateOnly) return null;
            object target = method.IsStatic ? null : Create(method.DeclaringType, id, native);
            return new ModernRunner(id, Bind(method, target));
        }

        /// <summary>
        /// A public Process or ProcessAsync taking one CloudEvent and returning CloudEvent or
        /// Task&lt;CloudEvent&gt;: static ones first, then (source only) instance ones; ProcessAsync
        /// before Process; the first type by full name.
        /// </summary>
        private static MethodInfo FindMethod(Type[] types, bool allowInstance)
        {
            MethodInfo best = null;
            int bestRank = int.MaxValue;
            foreach (var t in types)
            {
                if (!t.IsClass || !t.IsVisible || t.ContainsGenericParameters) continue;
                foreach (var m in t.GetMethods(BindingFlags.Public | BindingFlags.Static | BindingFlags.Instance | BindingFlags.DeclaredOnly))
                {
                    if (m.Name != "ProcessAsync" && m.Name != "Process") continue;
                    if (m.ContainsGenericParameters) continue;
                    var ps = m.GetParameters();
                    if (ps.Length != 1 || ps[0].ParameterType != typeof(CloudEvent)) continue;
                    if (m.ReturnType != typeof(CloudEvent) && m.ReturnType != typeof(Task<CloudEvent>)) continue;
                    if (!m.IsStatic && (!allowInstance || t.IsAbstract || t.GetConstructor(Type.EmptyTypes) == null)) continue;
                    int rank = (m.IsStatic ? 0 : 2) + (m.Name == "ProcessAsync" ? 0 : 1);
                    if (best == null || rank < bestRank
                        || (rank == bestRank && string.CompareOrdinal(t.FullName, best.DeclaringType.FullName) < 0))
                    {
                        best = m;
                        bestRank = rank;
                    }
                }
            }
            return best;
        }

        private static Func<CloudEvent, Task<CloudEvent>> Bind(MethodInfo m, object target)
        {
            if (m.ReturnType == typeof(Task<CloudEvent>))
                return (Func<CloudEvent, Task<CloudEvent>>)m.CreateDelegate(typeof(Func<CloudEvent, Task<CloudEvent>>), target);
            var sync = (Func<CloudEvent, CloudEvent>)m.CreateDelegate(typeof(Func<CloudEvent, CloudEvent>), target);
            return ev => Task.FromResult(sync(ev));
        }

        private static object Create(Type t, string id, IntPtr native)
        {
            var ctx = WorkerHost.Enter(id, native);
            try
            {
                return Activator.CreateInstance(t);
            }
            catch (TargetInvocationException e)
            {
                throw new InvalidWorkerException("The constructor of " + t.FullName + " threw: " + (e.InnerException ?? e), e);
            }
            finally
            {
                WorkerHost.Exit(ctx);
            }
        }

        private static WorkerRunner FindLegacy(Type[] types, string id, IntPtr native, bool validateOnly)
        {
            Type workerType = null;
            foreach (var t in types)
            {
                if (t.IsClass && !t.IsAbstract && t.IsVisible && LegacyDevKit.IsWorkerType(t) && t.GetConstructor(Type.EmptyTypes) != null)
                {
                    if (workerType == null || string.CompareOrdinal(t.FullName, workerType.FullName) < 0) workerType = t;
                }
            }
            if (workerType == null) throw new InvalidOperationException(NoWorker);
            if (validateOnly) return null;
            return new LegacyRunner(id, LegacyDevKit.Create(workerType, id, native));
        }
    }

    /// <summary>
    /// The 1.x DevKit (<c>dotnet/devkit-v1/Virtufin.Worker.DevKit.dll</c>), loaded once into a
    /// non-collectible context of its own when the first 1.x worker arrives. A worker is 1.x when
    /// it references Virtufin.Worker.DevKit below 2.0 and not CloudNative.CloudEvents: a worker of
    /// the 2.x DevKit or the original one cannot implement IWorker without referencing
    /// CloudNative.CloudEvents.
    /// </summary>
    internal static class LegacyDevKit
    {
        public const string Name = "Virtufin.Worker.DevKit";

        private delegate int ProcessFn(object worker, string id, IntPtr native, IntPtr input, int length, out byte[] reply, out string error);

        private static readonly object s_lock = new object();
        private static Assembly s_assembly;
        private static ProcessFn s_process;
        private static Func<Type, bool> s_isWorker;
        private static Func<Type, string, IntPtr, object> s_create;

        public static bool Wants(Assembly worker)
        {
            bool devkit1 = false;
            foreach (var r in worker.GetReferencedAssemblies())
            {
                if (string.Equals(r.Name, "CloudNative.CloudEvents", StringComparison.OrdinalIgnoreCase)) return false;
                if (string.Equals(r.Name, Name, StringComparison.OrdinalIgnoreCase) && r.Version != null && r.Version.Major < 2) devkit1 = true;
            }
            return devkit1;
        }

        public static Assembly Assembly
        {
            get
            {
                lock (s_lock)
                {
                    if (s_assembly != null) return s_assembly;
                    var dir = Path.GetDirectoryName(typeof(LegacyDevKit).Assembly.Location);
                    var path = Path.Combine(dir, "devkit-v1", Name + ".dll");
                    if (!File.Exists(path))
                        throw new InvalidOperationException("this worker was built against Virtufin.Worker.DevKit 1.x, whose compatibility copy is missing at "
                            + path + " (run host-runner/dotnet/build.sh)");
                    var asm = new AssemblyLoadContext("devkit-v1", isCollectible: false).LoadFromAssemblyPath(path);
                    var bridge = asm.GetType("Virtufin.Worker.DevKit.LegacyBridge", true);
                    IntPtr log, gateway, free;
                    Bridge.Callbacks(out log, out gateway, out free);
                    bridge.GetMethod("SetCallbacks").Invoke(null, new object[] { log, gateway, free });
                    s_process = (ProcessFn)bridge.GetMethod("Process").CreateDelegate(typeof(ProcessFn));
                    s_isWorker = (Func<Type, bool>)bridge.GetMethod("IsWorkerType").CreateDelegate(typeof(Func<Type, bool>));
                    s_create = (Func<Type, string, IntPtr, object>)bridge.GetMethod("Create").CreateDelegate(typeof(Func<Type, string, IntPtr, object>));
                    s_assembly = asm;
                    return asm;
                }
            }
        }

        public static bool IsWorkerType(Type t)
        {
            GC.KeepAlive(Assembly);
            return s_isWorker(t);
        }

        public static object Create(Type t, string id, IntPtr native)
        {
            try
            {
                return s_create(t, id, native);
            }
            catch (InvalidOperationException e)
            {
                throw new InvalidWorkerException(e.Message, e);
            }
        }

        public static int Process(object worker, string id, IntPtr native, IntPtr input, int length, out byte[] reply, out string error)
        {
            return s_process(worker, id, native, input, length, out reply, out error);
        }
    }
}
