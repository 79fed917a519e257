// Virtufin.Worker.DevKit: the contract every managed worker implements, over
// CloudNative.CloudEvents.CloudEvent as in the original DevKit.
using System.Threading.Tasks;
using CloudNative.CloudEvents;

namespace Virtufin.Worker.DevKit
{
    /// <summary>
    /// A worker: one instance is created (parameterless constructor) when the worker is loaded and
    /// kept across calls, so fields hold state between messages. A class without IWorker may
    /// instead declare <c>public static Task&lt;CloudEvent&gt; ProcessAsync(CloudEvent)</c>.
    /// </summary>
    public interface IWorker
    {
        /// <summary>Handles one event. A null result (or a task of null) means "no reply".</summary>
        Task<CloudEvent> ProcessAsync(CloudEvent input);
    }

    /// <summary>Payload helpers on CloudNative's CloudEvent.</summary>
    public static class CloudEventDataExtensions
    {
        /// <summary>The payload as bytes (UTF-8 for a string, JSON for an object), or null.</summary>
        public static byte[] DataAsBytes(this CloudEvent ev)
        {
            return ev == null ? null : CloudEventCodec.DataToBytes(ev.Data);
        }

        /// <summary>The payload as text (UTF-8 decoded if it is bytes), or null.</summary>
        public static string DataAsString(this CloudEvent ev)
        {
            if (ev == null || ev.Data == null) return null;
            var s = ev.Data as string;
            if (s != null) return s;
            return System.Text.Encoding.UTF8.GetString(CloudEventCodec.DataToBytes(ev.Data));
        }
    }
}
