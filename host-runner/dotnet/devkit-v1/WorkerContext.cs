// What a worker can reach while it handles a message: the host's log and the API gateway. Both go
// through native callbacks the host-runner hands to the engine bridge, and travel as the same Log
// and GatewayCall frames native workers use.
using System;
using System.ComponentModel;
using System.Runtime.InteropServices;
using System.Text;
using System.Threading;

namespace Virtufin.Worker.DevKit
{
    /// <summary>Log levels of <see cref="WorkerContext.Log(WorkerLogLevel, string)"/> (the C ABI's 0..4).</summary>
    public enum WorkerLogLevel
    {
        /// <summary>0</summary>
        Trace = 0,
        /// <summary>1</summary>
        Debug = 1,
        /// <summary>2</summary>
        Information = 2,
        /// <summary>3</summary>
        Warning = 3,
        /// <summary>4</summary>
        Error = 4,
    }

    /// <summary>A gateway call the host refused or that failed (status is the non-zero return value).</summary>
    public sealed class GatewayCallException : Exception
    {
        /// <summary>The gateway_call status (non-zero).</summary>
        public int Status { get; private set; }

        /// <summary>Creates the exception.</summary>
        public GatewayCallException(int status, string message) : base(message) { Status = status; }
    }

    /// <summary>
    /// The context of the current call: <see cref="Current"/> is set while the host runs the
    /// worker's ProcessAsync (and its continuations), null outside a call.
    /// </summary>
    public sealed class WorkerContext
    {
        private static readonly AsyncLocal<WorkerContext> s_current = new AsyncLocal<WorkerContext>();

        private readonly IntPtr _native;
        private int _inflight;
        private int _closed;

        internal WorkerContext(string workerId, IntPtr native)
        {
            WorkerId = workerId;
            _native = native;
        }

        /// <summary>The context of the call in progress, or null outside a call.</summary>
        public static WorkerContext Current { get { return s_current.Value; } }

        /// <summary>The worker's id (as deployed).</summary>
        public string WorkerId { get; private set; }

        /// <summary>Sends a log line to the host (level 0 trace .. 4 error). Dropped after the call ended.</summary>
        public void Log(int level, string message)
        {
            if (message == null) message = string.Empty;
            var cb = WorkerHost.LogCallback;
            if (cb == null || !Enter()) return;
            try
            {
                var bytes = Encoding.UTF8.GetBytes(message);
                unsafe
                {
                    fixed (byte* p = bytes)
                    {
                        cb(_native, level, (IntPtr)p, bytes.Length);
                    }
                }
            }
            finally
            {
                Interlocked.Decrement(ref _inflight);
            }
        }

        /// <summary>Sends a log line to the host.</summary>
        public void Log(WorkerLogLevel level, string message) { Log((int)level, message); }

        /// <summary>
        /// Calls a backend through the API gateway: <paramref name="requestJson"/> is the UTF-8 JSON
        /// request, the result the UTF-8 JSON response. Throws <see cref="GatewayCallException"/>
        /// when the call fails or is made after the worker's call ended.
        /// </summary>
        public byte[] InvokeGateway(string service, string method, byte[] requestJson)
        {
            if (service == null) throw new ArgumentNullException("service");
            if (method == null) throw new ArgumentNullException("method");
            if (requestJson == null) requestJson = new byte[0];
            var cb = WorkerHost.GatewayCallback;
            var free = WorkerHost.FreeCallback;
            if (cb == null || free == null) throw new GatewayCallException(-1, "no gateway: the worker runs outside the workmanager host");
            if (!Enter()) throw new GatewayCallException(-1, "gateway calls are only possible while the worker handles a message");
            try
            {
                var s = Encoding.UTF8.GetBytes(service);
                var m = Encoding.UTF8.GetBytes(method);
                IntPtr resp;
                int respLen;
                int status;
                unsafe
                {
                    fixed (byte* ps = s)
                    fixed (byte* pm = m)
                    fixed (byte* pr = requestJson)
                    {
                        status = cb(_native, (IntPtr)ps, s.Length, (IntPtr)pm, m.Length, (IntPtr)pr, requestJson.Length, out resp, out respLen);
                    }
                }
                byte[] body = new byte[0];
                if (resp != IntPtr.Zero)
                {
                    try
                    {
                        body = new byte[Math.Max(respLen, 0)];
                        if (respLen > 0) Marshal.Copy(resp, body, 0, respLen);
                    }
                    finally
                    {
                        free(_native, resp);
                    }
                }
                if (status != 0)
                    throw new GatewayCallException(status, "gateway call " + service + "." + method + " failed (status " + status + "): " + Encoding.UTF8.GetString(body));
                return body;
            }
            finally
            {
                Interlocked.Decrement(ref _inflight);
            }
        }

        /// <summary>Gateway call with a string request and response.</summary>
        public string InvokeGateway(string service, string method, string requestJson)
        {
            return Encoding.UTF8.GetString(InvokeGateway(service, method, Encoding.UTF8.GetBytes(requestJson ?? "{}")));
        }

        private bool Enter()
        {
            Interlocked.Increment(ref _inflight);
            if (Volatile.Read(ref _closed) != 0)
            {
                Interlocked.Decrement(ref _inflight);
                return false;
            }
            return true;
        }

        // The native context is only valid during the host's call: close it, then wait for
        // callbacks already inside the host to return.
        internal void Close()
        {
            Interlocked.Exchange(ref _closed, 1);
            var spin = new SpinWait();
            while (Volatile.Read(ref _inflight) != 0) spin.SpinOnce();
        }

        internal static void SetCurrent(WorkerContext ctx) { s_current.Value = ctx; }
    }

    /// <summary>Native callback signatures (see host-runner/src/engine/dotnet.rs).</summary>
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    public delegate void NativeLogCallback(IntPtr ctx, int level, IntPtr message, int length);

    /// <summary>Native gateway callback: 0 = success; the response (or error text) is freed with the free callback.</summary>
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    public delegate int NativeGatewayCallback(IntPtr ctx, IntPtr service, int serviceLength, IntPtr method, int methodLength,
        IntPtr request, int requestLength, out IntPtr response, out int responseLength);

    /// <summary>Native free callback for gateway responses.</summary>
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    public delegate void NativeFreeCallback(IntPtr ctx, IntPtr response);

    /// <summary>For the workmanager engine bridge only: installs callbacks and enters call contexts.</summary>
    [EditorBrowsable(EditorBrowsableState.Never)]
    public static class WorkerHost
    {
        internal static NativeLogCallback LogCallback;
        internal static NativeGatewayCallback GatewayCallback;
        internal static NativeFreeCallback FreeCallback;

        /// <summary>Installs the host's native callbacks (once, at engine start).</summary>
        public static void SetCallbacks(IntPtr log, IntPtr gateway, IntPtr free)
        {
            LogCallback = log == IntPtr.Zero ? null : Marshal.GetDelegateForFunctionPointer<NativeLogCallback>(log);
            GatewayCallback = gateway == IntPtr.Zero ? null : Marshal.GetDelegateForFunctionPointer<NativeGatewayCallback>(gateway);
            FreeCallback = free == IntPtr.Zero ? null : Marshal.GetDelegateForFunctionPointer<NativeFreeCallback>(free);
        }

        /// <summary>Makes a context current for the calling flow; <paramref name="native"/> must stay valid until <see cref="Exit"/>.</summary>
        public static WorkerContext Enter(string workerId, IntPtr native)
        {
            var ctx = new WorkerContext(workerId, native);
            WorkerContext.SetCurrent(ctx);
            return ctx;
        }

        /// <summary>Ends a context: later log calls are dropped, gateway calls fail; waits for callbacks in flight.</summary>
        public static void Exit(WorkerContext ctx)
        {
            WorkerContext.SetCurrent(null);
            if (ctx != null) ctx.Close();
        }
    }
}
