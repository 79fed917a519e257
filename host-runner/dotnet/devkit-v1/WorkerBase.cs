// Typed workers on top of IWorker: payload codec, response building, error envelopes and the
// JSON command pattern, as in the original Virtufin.Worker.DevKit.
using System;
using System.Text;
using System.Text.Json;
using System.Threading.Tasks;

namespace Virtufin.Worker.DevKit
{
    /// <summary>Turns event payloads into typed inputs and typed outputs into payloads.</summary>
    public interface ICloudEventCodec<TInput, TOutput>
    {
        /// <summary>Content type of encoded responses.</summary>
        string ContentType { get; }
        /// <summary>Decodes the input event's payload.</summary>
        TInput DecodePayload(CloudEvent input);
        /// <summary>Encodes a response payload and names its content type.</summary>
        void EncodeResponse(TOutput output, out object data, out string contentType);
        /// <summary>Encodes an error envelope for a handler failure.</summary>
        object EncodeError(string message);
    }

    /// <summary>The default codec: JSON via System.Text.Json (property names case-insensitive on input).</summary>
    public sealed class JsonCloudEventCodec<TInput, TOutput> : ICloudEventCodec<TInput, TOutput>
    {
        private static readonly JsonSerializerOptions s_options = new JsonSerializerOptions { PropertyNameCaseInsensitive = true };

        /// <summary>application/json</summary>
        public string ContentType { get { return WorkerConstants.DataContentTypeJson; } }

        /// <summary>Deserializes the payload (string or UTF-8 bytes); default(TInput) for no payload.</summary>
        public TInput DecodePayload(CloudEvent input)
        {
            var bytes = input == null ? null : input.DataAsBytes();
            if (bytes == null || bytes.Length == 0) return default(TInput);
            return JsonSerializer.Deserialize<TInput>(bytes, s_options);
        }

        /// <summary>Serializes the output as a JSON string payload.</summary>
        public void EncodeResponse(TOutput output, out object data, out string contentType)
        {
            data = JsonSerializer.Serialize(output, typeof(TOutput), s_options);
            contentType = ContentType;
        }

        /// <summary><c>{"command":"error","success":false,"message":"..."}</c></summary>
        public object EncodeError(string message)
        {
            return WorkerConstants.ErrorJson(message);
        }
    }

    /// <summary>
    /// JSON for objects of any type without rooting a collectible worker's types: System.Text.Json
    /// caches type metadata in the options object, so a worker's own types get a fresh options
    /// object (garbage with the worker) instead of the process-wide default.
    /// </summary>
    internal static class UnloadableJson
    {
        public static string Serialize(object value)
        {
            var t = value.GetType();
            return t.Assembly.IsCollectible ? JsonSerializer.Serialize(value, t, new JsonSerializerOptions()) : JsonSerializer.Serialize(value, t);
        }

        public static byte[] SerializeToUtf8Bytes(object value)
        {
            var t = value.GetType();
            return t.Assembly.IsCollectible ? JsonSerializer.SerializeToUtf8Bytes(value, t, new JsonSerializerOptions()) : JsonSerializer.SerializeToUtf8Bytes(value, t);
        }
    }

    /// <summary>Attribute names and content types shared by the worker base classes.</summary>
    public static class WorkerConstants
    {
        /// <summary>Extension copied from request to response.</summary>
        public const string CorrelationIdAttribute = "correlationid";
        /// <summary>Extension naming the topic a reply goes to.</summary>
        public const string ReplyTopicAttribute = "replytopic";
        /// <summary>Error field name.</summary>
        public const string FieldError = "error";
        /// <summary>application/json</summary>
        public const string DataContentTypeJson = "application/json";

        internal static string ErrorJson(string message)
        {
            return "{\"command\":\"error\",\"success\":false,\"message\":" + JsonSerializer.Serialize(message ?? string.Empty) + "}";
        }
    }

    /// <summary>
    /// A typed worker: decodes the payload with a codec, calls <see cref="ProcessAsync(CloudEvent, TInput)"/>
    /// and builds the response event; a handler exception becomes an error envelope reply.
    /// </summary>
    public abstract class WorkerBase<TInput, TOutput> : IWorker
    {
        /// <summary>See <see cref="WorkerConstants.CorrelationIdAttribute"/>.</summary>
        public const string CorrelationIdAttribute = WorkerConstants.CorrelationIdAttribute;
        /// <summary>See <see cref="WorkerConstants.ReplyTopicAttribute"/>.</summary>
        public const string ReplyTopicAttribute = WorkerConstants.ReplyTopicAttribute;
        /// <summary>See <see cref="WorkerConstants.FieldError"/>.</summary>
        public const string FieldError = WorkerConstants.FieldError;
        /// <summary>See <see cref="WorkerConstants.DataContentTypeJson"/>.</summary>
        public const string DataContentTypeJson = WorkerConstants.DataContentTypeJson;

        /// <summary>Source of response events.</summary>
        protected Uri Source { get; private set; }
        /// <summary>Type of response events.</summary>
        protected string ResponseEventType { get; private set; }
        /// <summary>The payload codec.</summary>
        protected ICloudEventCodec<TInput, TOutput> Codec { get; private set; }

        /// <summary>Creates the worker; a null codec means JSON.</summary>
        protected WorkerBase(Uri source, string responseEventType, ICloudEventCodec<TInput, TOutput> codec = null)
        {
            if (source == null) throw new ArgumentNullException("source");
            if (responseEventType == null) throw new ArgumentNullException("responseEventType");
            Source = source;
            ResponseEventType = responseEventType;
            Codec = codec ?? new JsonCloudEventCodec<TInput, TOutput>();
        }

        /// <summary>Handles one typed input; default(TOutput) (null) means no reply.</summary>
        protected abstract Task<TOutput> ProcessAsync(CloudEvent input, TInput payload);

        /// <summary>IWorker entry: decode, handle, encode; handler failures become an error envelope.</summary>
        public async Task<CloudEvent> ProcessAsync(CloudEvent input)
        {
            TOutput output;
            try
            {
                TInput payload = Codec.DecodePayload(input);
                output = await ProcessAsync(input, payload).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                return BuildResponse(input, Codec.EncodeError(e.Message), Codec.ContentType);
            }
            if (output == null) return null;
            object data;
            string contentType;
            Codec.EncodeResponse(output, out data, out contentType);
            return BuildResponse(input, data, contentType);
        }

        /// <summary>
        /// A response to <paramref name="input"/>: new id, this worker's source and response type,
        /// the current time, and the input's correlationid copied over.
        /// </summary>
        protected CloudEvent BuildResponse(CloudEvent input, object data, string contentType)
        {
            var ev = new CloudEvent
            {
                Id = Guid.NewGuid().ToString(),
                Source = Source,
                Type = ResponseEventType,
                Time = DateTimeOffset.UtcNow,
                DataContentType = contentType,
                Data = data,
            };
            var correlation = input == null ? null : input[CorrelationIdAttribute];
            if (correlation != null) ev[CorrelationIdAttribute] = correlation;
            return ev;
        }
    }

    /// <summary>
    /// The JSON command pattern: payload <c>{"command":"&lt;name&gt;", ...}</c> with the command
    /// parsed case-insensitively into <typeparamref name="TCommand"/>; a null handler result means no reply.
    /// </summary>
    public abstract class CommandWorker<TCommand> : IWorker where TCommand : struct
    {
        /// <summary>Source of response events.</summary>
        protected Uri Source { get; private set; }
        /// <summary>Type of response events.</summary>
        protected string ResponseEventType { get; private set; }

        /// <summary>Creates the worker.</summary>
        protected CommandWorker(Uri source, string responseEventType)
        {
            if (source == null) throw new ArgumentNullException("source");
            if (responseEventType == null) throw new ArgumentNullException("responseEventType");
            Source = source;
            ResponseEventType = responseEventType;
        }

        /// <summary>Handles one command; returns the response payload (serialized as JSON) or null for no reply.</summary>
        protected abstract Task<object> HandleCommandAsync(CloudEvent input, TCommand command, JsonElement root);

        /// <summary>IWorker entry.</summary>
        public async Task<CloudEvent> ProcessAsync(CloudEvent input)
        {
            JsonDocument doc;
            try
            {
                var bytes = input.DataAsBytes() ?? new byte[0];
                doc = JsonDocument.Parse(bytes);
            }
            catch (Exception)
            {
                return Reply(input, ErrorPayload("Failed to parse command JSON"));
            }
            using (doc)
            {
                JsonElement commandElement;
                if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("command", out commandElement)
                    || commandElement.ValueKind != JsonValueKind.String)
                    return Reply(input, ErrorPayload("Missing 'command' field"));
                string name = commandElement.GetString();
                TCommand command;
                if (!Enum.TryParse<TCommand>(name, true, out command) || !Enum.IsDefined(typeof(TCommand), command))
                    return Reply(input, ErrorPayload("Unknown command: " + name));
                object payload;
                try
                {
                    payload = await HandleCommandAsync(input, command, doc.RootElement.Clone()).ConfigureAwait(false);
                }
                catch (Exception e)
                {
                    return Reply(input, ErrorPayload("Internal error: " + e.Message));
                }
                return payload == null ? null : Reply(input, payload);
            }
        }

        /// <summary><c>{command, success, id?, message?}</c></summary>
        protected static object Response(CloudEvent input, string command, bool success, string id = null, string message = null)
        {
            var sb = new StringBuilder();
            sb.Append("{\"command\":").Append(JsonSerializer.Serialize(command)).Append(",\"success\":").Append(success ? "true" : "false");
            if (id != null) sb.Append(",\"id\":").Append(JsonSerializer.Serialize(id));
            if (message != null) sb.Append(",\"message\":").Append(JsonSerializer.Serialize(message));
            sb.Append('}');
            return new RawJson(sb.ToString());
        }

        /// <summary>The error envelope <c>{"command":"error","success":false,"message":...}</c>.</summary>
        protected static object ErrorPayload(string message)
        {
            return new RawJson(WorkerConstants.ErrorJson(message));
        }

        private CloudEvent Reply(CloudEvent input, object payload)
        {
            var raw = payload as RawJson;
            var ev = new CloudEvent
            {
                Id = Guid.NewGuid().ToString(),
                Source = Source,
                Type = ResponseEventType,
                Time = DateTimeOffset.UtcNow,
                DataContentType = WorkerConstants.DataContentTypeJson,
                Data = raw != null ? raw.Json : (payload as string ?? UnloadableJson.Serialize(payload)),
            };
            var correlation = input[WorkerConstants.CorrelationIdAttribute];
            if (correlation != null) ev[WorkerConstants.CorrelationIdAttribute] = correlation;
            return ev;
        }

        private sealed class RawJson
        {
            public readonly string Json;
            public RawJson(string json) { Json = json; }
        }
    }
}
