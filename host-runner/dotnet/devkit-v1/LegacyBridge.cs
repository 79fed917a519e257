// Only in the 1.x DevKit (host-runner/dotnet/devkit-v1): what the engine bridge, which is
// compiled against the 2.x DevKit, needs to run a worker built against 1.x. Every signature uses
// BCL types only, so the bridge binds to these methods by reflection without referencing this
// assembly (two assemblies named Virtufin.Worker.DevKit cannot both be referenced).
using System;
using System.ComponentModel;
using System.Reflection;

namespace Virtufin.Worker.DevKit
{
    /// <summary>For the workmanager engine bridge only.</summary>
    [EditorBrowsable(EditorBrowsableState.Never)]
    public static class LegacyBridge
    {
        /// <summary>Installs the host's native callbacks into this DevKit's WorkerContext.</summary>
        public static void SetCallbacks(IntPtr log, IntPtr gateway, IntPtr free)
        {
            WorkerHost.SetCallbacks(log, gateway, free);
        }

        /// <summary>True for a type implementing this DevKit's IWorker.</summary>
        public static bool IsWorkerType(Type t)
        {
            return typeof(IWorker).IsAssignableFrom(t);
        }

        /// <summary>Creates the worker instance inside a call context (its constructor may log).</summary>
        public static object Create(Type t, string workerId, IntPtr native)
        {
            var ctx = WorkerHost.Enter(workerId, native);
            try
            {
                return Activator.CreateInstance(t);
            }
            catch (TargetInvocationException e)
            {
                throw new InvalidOperationException("The constructor of " + t.FullName + " threw: " + (e.InnerException ?? e), e);
            }
            finally
            {
                WorkerHost.Exit(ctx);
            }
        }

        /// <summary>
        /// Runs one message. Returns 0 with <paramref name="reply"/> = a WorkerResponse FlatBuffer,
        /// 1 for no reply, 2 when the input is not a CloudEvent FlatBuffer, 4 when the worker threw
        /// or its reply cannot be encoded (<paramref name="error"/> says what).
        /// </summary>
        public static unsafe int Process(object worker, string workerId, IntPtr native, IntPtr input, int length,
            out byte[] reply, out string error)
        {
            reply = null;
            error = null;
            CloudEvent ev;
            try
            {
                ev = CloudEventCodec.DecodeCloudEvent((byte*)input, length);
            }
            catch (Exception e)
            {
                error = "the input is not a valid CloudEvent FlatBuffer: " + e.Message;
                return 2;
            }
            CloudEvent result;
            var ctx = WorkerHost.Enter(workerId, native);
            try
            {
                var task = ((IWorker)worker).ProcessAsync(ev);
                result = task == null ? null : task.GetAwaiter().GetResult();
            }
            catch (Exception e)
            {
                error = e.ToString();
                return 4;
            }
            finally
            {
                WorkerHost.Exit(ctx);
            }
            if (result == null) return 1;
            try
            {
                reply = CloudEventCodec.EncodeWorkerResponse(result, null);
            }
            catch (Exception e)
            {
                error = "the worker's reply cannot be encoded: " + e;
                return 4;
            }
            return 0;
        }
    }
}
